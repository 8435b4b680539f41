"""Whisper (from a CTranslate2 checkpoint) -> a ``whisper-asr`` bundle.

    encoder.onnx  input_features (1, n_mels, F), any even F <= 3000
                  -> cross.{i}.key|value (1, heads, F/2, head_dim): cross-attention K/V, once per window
    decoder.onnx  input_ids (1, T), past_key_values.{i}.key|value (1, heads, P, head_dim), cross.{i}.*
                  -> logits (1, 1, vocab) for the last position, present.{i}.key|value

The tied token embedding is stored once: in fp32 the output projection is ``MatMul(x, Transpose(E))``
on the same initializer the lookup gathers from; in int8 the lookup gathers rows of the output
projection's MatMulNBits weights (8-bit, blocks of 32, zero point 128) and dequantises them.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edge_models.whisper import WhisperASR, load_hf, provenance
from edge_runtime.bundle import SCHEMA, sha256_file

from .quantize import quantize

log = logging.getLogger(__name__)
OPSET = 17
MAX_NEW_TOKENS = 96


class _Enc(torch.nn.Module):
    def __init__(self, m: WhisperASR):
        super().__init__()
        self.m = m

    def forward(self, input_features):
        return tuple(self.m.encode(input_features))


class _Dec(torch.nn.Module):
    def __init__(self, m: WhisperASR):
        super().__init__()
        self.m = m

    def forward(self, input_ids, *flat):
        n = len(self.m.layers) * 2
        logits, presents = self.m.decode(input_ids, list(flat[:n]), list(flat[n:]))
        return (logits, *presents)


def _names(n_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


@torch.no_grad()
def export_graphs(m: WhisperASR, out: Path) -> None:
    L, H = len(m.layers), m.n_heads
    hs = m.config.d_model // H
    cross = _names(L, "cross")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Enc(m), (torch.zeros(1, m.config.num_mel_bins, 200),), str(out / "encoder.onnx"),
                          input_names=["input_features"], output_names=cross, opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_features": {2: "frames"}, **{c: {2: "encoder_positions"} for c in cross}})
        past, present = _names(L, "past_key_values"), _names(L, "present")
        args = (torch.tensor([[50257, 50362]]), *[torch.zeros(1, H, 3, hs)] * (2 * L), *[torch.zeros(1, H, 100, hs)] * (2 * L))
        torch.onnx.export(_Dec(m), args, str(out / "decoder.raw.onnx"), input_names=["input_ids", *past, *cross],
                          output_names=["logits", *present], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input_ids": {1: "sequence_length"},
                                        **{p: {2: "past_sequence_length"} for p in past},
                                        **{p: {2: "total_sequence_length"} for p in present},
                                        **{c: {2: "encoder_positions"} for c in cross}})


def _embedding_nodes(model: onnx.ModelProto, E: np.ndarray):
    """The token lookup (Gather on E) and the output projection (MatMul on E^T) in the raw graph."""
    inits = {i.name: i for i in model.graph.initializer}
    gather = proj = None
    for n in model.graph.node:
        if n.op_type == "Gather" and n.input[0] in inits and tuple(inits[n.input[0]].dims) == E.shape:
            gather = n
        if n.op_type == "MatMul" and n.input[1] in inits and tuple(inits[n.input[1]].dims) == E.shape[::-1]:
            proj = n
    if gather is None or proj is None:
        raise RuntimeError("decoder graph: token lookup or output projection not found")
    return gather, proj, inits


def tie_fp32(src: Path, dst: Path, E: np.ndarray) -> None:
    """Replace the exporter's folded copy of E^T by Transpose(E): one stored matrix."""
    model = onnx.load(str(src))
    gather, proj, inits = _embedding_nodes(model, E)
    folded = proj.input[1]
    model.graph.node.insert(0, helper.make_node("Transpose", [gather.input[0]], ["embed_tokens_T"], perm=[1, 0], name="tie_T"))
    proj.input[1] = "embed_tokens_T"
    model.graph.initializer.remove(inits[folded])
    _save_sorted(model, dst)


def tie_int8(src: Path, dst: Path, E: np.ndarray) -> None:
    """After MatMulNBits quantization: the lookup gathers rows of the projection's int8 weights."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    lm = [n for n in model.graph.node if n.op_type == "MatMulNBits"
          and helper.get_attribute_value(next(a for a in n.attribute if a.name == "N")) == E.shape[0]]
    gather = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in inits
              and tuple(inits[n.input[0]].dims) == E.shape]
    if len(lm) != 1 or len(gather) != 1:
        raise RuntimeError("decoder graph: expected one quantized output projection and one token lookup")
    lm, gather = lm[0], gather[0]
    B, S = lm.input[1], lm.input[2]
    if any(a.name == "bits" and helper.get_attribute_value(a) != 8 for a in lm.attribute) or len(lm.input) > 3:
        raise RuntimeError("tie_int8 needs 8-bit symmetric MatMulNBits (no zero points)")
    nb = inits[B].dims[1]
    ids, out = gather.input[1], gather.output[0]
    new = [
        helper.make_node("Gather", [B, ids], ["tie_rows"], axis=0, name="tie_gather_q"),  # (1, T, nb, 32) uint8
        helper.make_node("Cast", ["tie_rows"], ["tie_rows_f"], to=TensorProto.FLOAT, name="tie_cast"),
        helper.make_node("Sub", ["tie_rows_f", "tie_zp"], ["tie_centered"], name="tie_sub"),
        helper.make_node("Reshape", [S, "tie_scale_shape"], ["tie_scales3"], name="tie_scale_reshape"),
        helper.make_node("Gather", ["tie_scales3", ids], ["tie_row_scales"], axis=0, name="tie_gather_s"),
        helper.make_node("Mul", ["tie_centered", "tie_row_scales"], ["tie_deq"], name="tie_mul"),
        helper.make_node("Shape", [ids], ["tie_ids_shape"], name="tie_shape"),
        helper.make_node("Concat", ["tie_ids_shape", "tie_d"], ["tie_out_shape"], axis=0, name="tie_concat"),
        helper.make_node("Reshape", ["tie_deq", "tie_out_shape"], [out], name="tie_reshape"),
    ]
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(128.0, np.float32), "tie_zp"),
        numpy_helper.from_array(np.array([E.shape[0], nb, 1], np.int64), "tie_scale_shape"),
        numpy_helper.from_array(np.array([E.shape[1]], np.int64), "tie_d"),
    ])
    idx = list(model.graph.node).index(gather)
    model.graph.node.remove(gather)
    for k, n in enumerate(new):
        model.graph.node.insert(idx + k, n)
    model.graph.initializer.remove(inits[gather.input[0]])
    _save_sorted(model, dst)


def _save_sorted(model: onnx.ModelProto, dst: Path) -> None:
    onnx.checker.check_model(model)
    onnx.save_model(model, str(dst))


def export_whisper(name: str, out: str | Path, precision: str = "int8", verify_audio: list[np.ndarray] | None = None,
                   lora: str | Path | None = None) -> dict:
    """``lora``: a delta from ``edge-train-hearing`` merged into the weights before export."""
    from edge_runtime.whisper_asr import WhisperBundle, whisper_log_mel

    out = Path(out)
    t_start = time.perf_counter()
    log.info("[1/4] loading Whisper %s from its CTranslate2 checkpoint", name)
    hf, tok, info = load_hf(name)
    m = WhisperASR(hf)
    if lora:
        info = info | {"adapter": adapter(m, lora)}
    E = m.embed_tokens.detach().numpy()
    report: dict = {"model": name, "times_s": {}} | ({"adapter": info["adapter"]} if lora else {})
    with tempfile.TemporaryDirectory(prefix="edge-whisper-") as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        log.info("[2/4] exporting encoder and decoder")
        export_graphs(m, tmp)
        if precision == "fp32":
            tie_fp32(tmp / "decoder.raw.onnx", tmp / "decoder.onnx", E)
        else:
            quantize(tmp / "decoder.raw.onnx", tmp / "decoder.q.onnx", "weight-only")
            tie_int8(tmp / "decoder.q.onnx", tmp / "decoder.onnx", E)
            quantize(tmp / "encoder.onnx", tmp / "encoder.q.onnx", "weight-only")
            shutil.move(tmp / "encoder.q.onnx", tmp / "encoder.onnx")
        report["times_s"]["export"] = round(time.perf_counter() - t0, 2)
        out.mkdir(parents=True, exist_ok=True)
        for f in ("encoder.onnx", "decoder.onnx"):
            shutil.copyfile(tmp / f, out / f)
    (out / "tokenizer.json").write_text(tok.to_str())
    _write_manifest(out, name, hf, info, precision, report)

    log.info("[3/4] verifying greedy transcripts, ONNX vs PyTorch")
    t0 = time.perf_counter()
    bundle = WhisperBundle(out, verify_hashes=False)
    audios = verify_audio if verify_audio else [_verification_speech()]
    checks = []
    for audio in audios:
        feats = whisper_log_mel(audio, bundle.max_frames)  # Whisper's own 30 s window: plain greedy on both sides
        ref = _torch_greedy(m, feats, bundle.prompt_ids, bundle.eot)
        got = bundle.greedy(feats, MAX_NEW_TOKENS, stop_on_loop=False)[0]
        checks.append({"seconds": round(len(audio) / 16000, 2), "torch": tok.decode(ref), "onnx": tok.decode(got),
                       "identical": ref == got, "tokens": len(ref)})
    report["greedy"] = checks
    report["greedy_identical"] = sum(c["identical"] for c in checks)
    if precision == "fp32" and not all(c["identical"] for c in checks):
        raise RuntimeError(f"fp32 ONNX transcripts differ from PyTorch: {checks}")
    report["times_s"]["verify"] = round(time.perf_counter() - t0, 2)
    report["times_s"]["total"] = round(time.perf_counter() - t_start, 2)
    (out / "verify.json").write_text(json.dumps(report, indent=2))
    _write_manifest(out, name, hf, info, precision, report)  # again: verify.json is hashed too
    log.info("[4/4] bundle written: %s (%.1f MB)", out, sum(f.stat().st_size for f in out.iterdir()) / 1e6)
    return report


@torch.no_grad()
def _torch_greedy(m: WhisperASR, feats: np.ndarray, prompt: list[int], eot: int) -> list[int]:
    cross = m.encode(torch.from_numpy(feats)[None])
    L, H, hs = len(m.layers), m.n_heads, m.config.d_model // m.n_heads
    past = [torch.zeros(1, H, 0, hs) for _ in range(2 * L)]
    logits, past = m.decode(torch.tensor([prompt]), past, cross)
    out: list[int] = []
    from edge_runtime.whisper_asr import SUPPRESS_BEGIN_DEFAULT

    suppress = np.array(m.config.suppress_tokens or [], dtype=np.int64)
    while len(out) < MAX_NEW_TOKENS:
        lg = logits[0, -1].numpy().copy()
        lg[suppress] = -np.inf
        if not out:
            lg[list(m.config.begin_suppress_tokens or SUPPRESS_BEGIN_DEFAULT)] = -np.inf
        nxt = int(lg.argmax())
        if nxt == eot:
            break
        out.append(nxt)
        logits, past = m.decode(torch.tensor([[nxt]]), past, cross)
    return out


def _verification_speech() -> np.ndarray:
    """Speech from espeak-ng when it is installed (it is in CI), else a synthetic voiced signal."""
    import subprocess

    from edge_runtime.audio import Resampler

    try:
        wav = subprocess.run(["espeak-ng", "--stdout", "Turn on the kitchen lights and set a timer for five minutes."],
                             capture_output=True, check=True, timeout=30).stdout
        import io

        import soundfile as sf

        x, sr = sf.read(io.BytesIO(wav), dtype="float32")
        r = Resampler(sr, 16000)
        return np.concatenate([r.process(x), r.flush()])
    except (OSError, subprocess.SubprocessError):
        t = np.arange(48000) / 16000
        return (0.2 * np.sin(2 * np.pi * 150 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)


def delta_file(path: str | Path, recipe: str) -> Path:
    """``path``, or a one-line error naming the recipe that writes such a LoRA delta."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such LoRA delta ({recipe} writes one)")
    return path


def adapter(m: WhisperASR, lora: str | Path) -> dict:
    """Merge a LoRA delta into ``m``; what the manifest records of it."""
    import hashlib

    from edge_models.responder import merge_lora

    lora = delta_file(lora, "edge-train-hearing")
    meta = merge_lora(m, lora)
    log.info("merged %s (rank %s, %s steps)", lora.name, meta.get("rank"), meta.get("steps"))
    return {"file": lora.name, "sha256": hashlib.sha256(lora.read_bytes()).hexdigest(), "license": "Apache-2.0 (trained here)",
            "trained": {k: meta.get(k) for k in ("rank", "frozen_layers", "utterances", "steps", "voices", "conditions")}}


def _write_manifest(out: Path, name: str, hf, info: dict, precision: str, report: dict) -> None:
    c = hf.config
    ct2 = info["ct2_config"]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    tid = tok.token_to_id
    multilingual = c.vocab_size >= 51865
    tokens = {"sot": tid("<|startoftranscript|>"), "eot": tid("<|endoftext|>"),
              "no_timestamps": tid("<|notimestamps|>"),
              "no_speech": tid("<|nospeech|>") if tid("<|nospeech|>") is not None else tid("<|nocaptions|>"),
              "transcribe": tid("<|transcribe|>"), "en": tid("<|en|>")}
    files = sorted(p.name for p in out.iterdir() if p.name != "manifest.json")
    manifest = {
        "schema": SCHEMA, "kind": "whisper-asr", "name": f"whisper-{name}", "version": "0.1.0",
        "license": provenance(name)["license"] + ("; LoRA delta trained here: Apache-2.0" if "adapter" in info else ""),
        "provenance": provenance(name) | ({"adapter": info["adapter"]} if "adapter" in info else {}),
        "sample_rate": 16000,
        "features": {"type": "whisper", "sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": c.num_mel_bins,
                     "mel_scale": "slaney", "framing": "centered-reflect", "dynamic_range": 8.0, "offset": 4.0, "scale": 4.0},
        "encoder": {"file": "encoder.onnx", "input": "input_features", "max_frames": 2 * c.max_source_positions,
                    "outputs": "cross.{i}.key|value"},
        "decoder": {"file": "decoder.onnx", "n_layers": c.decoder_layers, "n_heads": c.decoder_attention_heads,
                    "head_dim": c.d_model // c.decoder_attention_heads, "hidden_size": c.d_model,
                    "vocab_size": c.vocab_size, "max_context": c.max_target_positions, "kv_layout": "concat"},
        "multilingual": multilingual,
        "tokens": tokens,
        "suppress_tokens": list(c.suppress_tokens or []),
        "begin_suppress_tokens": list(ct2.get("suppress_ids_begin", [220, tokens["eot"]])),
        "tokenizer": "tokenizer.json",
        "quantization": {"encoder.onnx": "fp32" if precision == "fp32" else "int8 (weight-only MatMulNBits)",
                         "decoder.onnx": "fp32" if precision == "fp32" else "int8 (weight-only MatMulNBits, tied lookup)"},
        "files": {n: {"sha256": sha256_file(out / n), "bytes": (out / n).stat().st_size} for n in files},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))

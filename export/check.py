"""``edge-export info`` and ``edge-export verify``: what a bundle holds, and whether it is intact.

Works without torch (hashes, graph/manifest consistency, a smoke run); with torch installed,
``verify`` also rebuilds the PyTorch reference recorded in the manifest and re-runs parity.
"""

from __future__ import annotations

import json
from pathlib import Path
import logging

import numpy as np

from edge_runtime.bundle import load_common, load_manifest
from edge_runtime.model import Bundle
from edge_runtime.sessions import SessionConfig

log = logging.getLogger(__name__)


def info(path: str) -> dict:
    mpath = Path(path) / "manifest.json"
    peek = json.loads(mpath.read_text()) if mpath.is_file() else {}
    if isinstance(peek, dict) and peek.get("kind") == "responder":  # two bundles and a policy
        from edge_runtime.responder import Responder

        parts = {k: info(str(Path(path) / peek[k])) for k in ("lm", "asr", "asr_second") if peek.get(k)}
        return {"bundle": str(path), "name": peek.get("name"), "version": peek.get("version"), "kind": "responder",
                "license": peek.get("license"), "provenance": peek.get("provenance"),
                "policy": {k: peek.get(k) for k in Responder.POLICY_KEYS}, "parts": parts,
                "total_mb": round(sum(p["total_mb"] for p in parts.values()), 2)}
    root, raw = load_common(path, verify_hashes=False)
    if raw["kind"] == "whisper-asr":
        return {"bundle": str(root), "name": raw.get("name"), "version": raw.get("version"), "kind": raw["kind"],
                "license": raw.get("license"), "provenance": raw.get("provenance"), "decoder": raw["decoder"],
                "quantization": raw.get("quantization"), "multilingual": raw.get("multilingual"),
                "files": {k: v["bytes"] for k, v in raw["files"].items()},
                "total_mb": round(sum(v["bytes"] for v in raw["files"].values()) / 1e6, 2)}
    m = load_manifest(path, verify_hashes=False)
    raw = m.raw
    return {
        "bundle": str(m.root), "name": m.name, "version": m.version, "kind": m.kind,
        "license": raw.get("license"), "provenance": raw.get("provenance"),
        "sample_rate": m.sample_rate, "chunk_ms": m.chunk_ms, "tokens_per_chunk": m.encoder.tokens_per_chunk,
        "left_context_ms": 1000 * m.encoder.left_context_frames * m.features.hop_length / m.sample_rate,
        "decoder": raw["decoder"], "decoders": raw["decoders"], "quantization": raw.get("quantization"),
        "control_tokens": m.control_tokens, "default_instruction": m.default_instruction,
        "files": {k: v["bytes"] for k, v in raw["files"].items()},
        "total_mb": round(sum(v["bytes"] for v in raw["files"].values()) / 1e6, 2),
    }


def format_info(d: dict) -> str:
    if d["kind"] == "responder":
        pol = d["policy"]
        heard = f", when {' or '.join(map(repr, pol['name_words']))} is heard" if pol["name_words"] else ""
        wait = 0.5 if pol["rescue_wait"] is None else pol["rescue_wait"]  # the Responder's default
        late = "" if pol.get("rescue_late") is None else f", given up {pol['rescue_late']} s after arming"
        chance = f"second chance from p {pol['rescue_above']} ({wait} s after the speech{heard}{late})" \
            if pol["rescue_above"] else "no second chances"
        overrule = "sure replies said at once" if pol["overrule_logprob"] is None else \
            f"sure replies overruled by the LM's at Whisper log-prob >= {pol['overrule_logprob']} and LM confidence >= {pol['overrule_confidence'] or 0.0}"
        second = "no second recogniser" if not pol["asr_second"] else \
            f"a second recogniser under Whisper log-prob {pol['asr_second_below'] or 0.0}"
        return "\n".join([f"{d['name']} {d['version']} (responder) at {d['bundle']}, {d['total_mb']} MB", f"  license: {d['license']}",
                          f"  policy: ask below confidence {pol['ask_below']} (transcription: {pol['ask_below'] if pol['repeat_below'] is None else pol['repeat_below']}), "
                          f"on the LM's silence: {pol['on_silence']}, {overrule}, {chance}, {second}, "
                          f"{len(pol['confirm_replies'] or [])} replies said only when the name is heard, "
                          f"{len(pol['reply_forms'] or []) or 'any'} reply forms, "
                          f"{len(pol['repeat_instructions'] or [])} repeat instructions, {len(pol['pass_through'] or [])} replies passed through"]
                         + [f"  {k}: " + format_info(v).replace("\n", "\n    ") for k, v in d["parts"].items()])
    if d["kind"] == "whisper-asr":
        return "\n".join([f"{d['name']} {d['version']} (whisper-asr) at {d['bundle']}", f"  license: {d['license']}",
                          "  decoder: {n_layers} layers, hidden {hidden_size}, {n_heads} heads, vocab {vocab_size}".format(**d["decoder"]),
                          f"  quantization: {d['quantization']}",
                          f"  files ({d['total_mb']} MB): " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in d["files"].items())])
    lines = [f"{d['name']} {d['version']} ({d['kind']}) at {d['bundle']}",
             f"  license: {d['license']}",
             f"  audio: {d['sample_rate']} Hz, {d['chunk_ms']:.0f} ms chunks -> {d['tokens_per_chunk']} tokens, "
             f"{d['left_context_ms']:.0f} ms left context",
             "  decoder: {n_layers} layers, hidden {hidden_size}, {n_heads} heads / {n_kv_heads} kv, head_dim {head_dim}, "
             "vocab {vocab_size}, max context {max_context}".format(**d["decoder"])]
    for dec in d["decoders"]:
        lines.append(f"  {dec['file']}: kv {dec['kv_layout']}, {dec['precision']}")
    lines.append(f"  control tokens: {d['control_tokens']}")
    lines.append(f"  files ({d['total_mb']} MB): " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in d["files"].items()))
    return "\n".join(lines)


def verify(path: str, parity: bool | None = None) -> dict:
    """Hashes, sessions for every graph, a smoke run; then parity against PyTorch when available."""
    root, raw = load_common(path, verify_hashes=True)
    if raw["kind"] == "whisper-asr":
        from edge_runtime.whisper_asr import WhisperBundle, whisper_log_mel

        b = WhisperBundle(path, verify_hashes=False)
        ids, _ = b.greedy(whisper_log_mel(np.zeros(16000, np.float32), 200), max_tokens=4)
        return {"bundle": str(root), "hashes": "ok", "sessions": "ok", "smoke": "ok"}
    m = load_manifest(path, verify_hashes=True)
    result = {"bundle": str(m.root), "hashes": "ok", "decoders": {}}
    for d in m.decoders:
        b = Bundle(path, SessionConfig(), layout=d.kv_layout, verify_hashes=False)
        window = np.full((1, m.features.n_mels, m.encoder.window_frames), m.features.silence_value, np.float32)
        audio = b.encode_windows(window)[0]
        cache = b.decoder.new_cache()
        logits = b.decoder.forward(cache, np.concatenate([b.embed(b.token_ids(m.default_instruction) or [0]), audio]))
        if not np.isfinite(logits).all():
            raise ValueError(f"{m.path(d.file)}: non-finite logits on a smoke run")
        result["decoders"][d.file] = {"kv_layout": d.kv_layout, "loads": "ok", "smoke": "ok"}
    if parity is None:
        parity = _torch_importable()
    if parity:
        result["parity"] = _parity(m)
    return result


def _torch_importable() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _parity(m) -> dict:
    import torch  # noqa: F401  (only here: verify runs without torch otherwise)

    from edge_models.zoo import from_reference

    from . import verify as V

    ref = m.raw["reference"]
    if ref.get("source") == "checkpoint" and not Path(ref["path"]).is_file():
        return {"skipped": f"the reference checkpoint {ref['path']} is not on this machine (edge-train writes it)"}
    model, tok, _ = from_reference(ref)
    control = m.control_tokens
    chunks, windows = V.audio_chunk_embeds(model, V.synthetic_audio())
    blocks = V.decoder_script(model.lm, tok.encode(m.default_instruction).ids, control, chunks,
                              tok.encode("The doorbell is ringing.").ids[:4] or [0])
    ref = V.torch_steps(model.lm, blocks)
    tol = json.loads(m.path("verify.json").read_text())["tolerance"]["fp32_logits_max_abs"] if m.path("verify.json").exists() else 1e-3
    out = {"encoder": V.encoder_parity(m.path(m.encoder.file), windows, chunks)}
    for d in m.decoders:
        got, _ = V.onnx_steps(V.open_decoder(m.path(d.file), d.kv_layout, m.decoder), blocks)
        cmp = V.compare(ref, got, control)
        if d.precision == "fp32" and cmp["logits_max_abs"] > tol:
            raise ValueError(f"{m.path(d.file)}: fp32 logits differ from PyTorch by {cmp['logits_max_abs']:.3g} > {tol}")
        if d.precision != "fp32" and cmp["decision_agree"] < 0.9:
            raise ValueError(f"{m.path(d.file)}: int8 decisions agree with PyTorch on only {cmp['decision_agree']:.0%} of calls")
        out[d.file] = cmp
    return out

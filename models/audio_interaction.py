"""The reference audio-interaction model in PyTorch, top to bottom.

    audio -> causal log-mel (features.py)
          -> ChunkEncoder: Whisper-architecture encoder over [left context | chunk] frames,
             keeping the chunk's positions only (and, with ``revisit_chunks``, the chunks before it)
          -> Projector: stack ``pool`` neighbouring positions, 2-layer MLP -> tokens_per_chunk vectors
          -> LlamaLM: decoder-only LM on interleaved [instruction][chunk][<silent>][chunk]... embeddings

Parameter names follow Hugging Face (WhisperEncoder, LlamaForCausalLM) so real checkpoints load
with ``load_state_dict(strict=True)``: every key and shape is checked.
The KV cache is explicit: ``LlamaLM.forward`` takes ``past`` and returns ``present`` tensors, which
is what the ONNX export needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import EncoderConfig, LMConfig, ModelConfig, StreamConfig

KV = tuple[torch.Tensor, torch.Tensor]  # (B, n_kv_heads, S, head_dim) each


# ----------------------------------------------------------------------------- audio encoder


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's fixed position table, (length, channels)."""
    inc = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2, dtype=torch.float32))
    t = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1)


class EncoderAttention(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)  # Whisper has no key bias
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_heads
        q = self.q_proj(x).view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_heads, hs).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_heads, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (hs**-0.5)  # (B, nh, T, T): full attention inside the window
        y = att.softmax(dim=-1) @ v  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.self_attn = EncoderAttention(cfg.d_model, cfg.n_heads)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class AudioEncoder(nn.Module):
    """Whisper's encoder, for any (even) number of frames up to 2 * max_positions."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.embed_positions.weight.data.copy_(sinusoids(cfg.max_positions, cfg.d_model))
        self.embed_positions.requires_grad_(False)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, n_mels, F) -> (B, F // 2, d_model)"""
        return self.finish(self.begin(features, len(self.layers)), len(self.layers))

    def begin(self, features: torch.Tensor, k: int) -> torch.Tensor:
        """The convolutions, positions and the first ``k`` layers: (B, n_mels, F) -> (B, F // 2, d_model)."""
        x = F.gelu(self.conv1(features))  # (B, d, F)
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (B, F/2, d)
        x = x + self.embed_positions.weight[: x.shape[1]]
        for layer in self.layers[:k]:
            x = layer(x)
        return x

    def finish(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The layers after the first ``k`` and the final norm, on ``begin(features, k)``."""
        for layer in self.layers[k:]:
            x = layer(x)
        return self.layer_norm(x)


class Projector(nn.Module):
    """Chunk positions -> tokens_per_chunk LM embeddings: stack ``pool`` neighbours, then an MLP."""

    def __init__(self, d_audio: int, hidden: int, stream: StreamConfig):
        super().__init__()
        self.positions = stream.projector_positions
        self.tokens = stream.tokens_per_chunk
        self.pool = self.positions // self.tokens
        self.fc1 = nn.Linear(d_audio * self.pool, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d_audio): the last ``positions`` steps are this chunk's (and the revisited
        chunks') -> (B, tokens, hidden), oldest positions first"""
        B = x.shape[0]
        x = x[:, -self.positions :, :].reshape(B, self.tokens, -1)  # (B, tokens, pool * d_audio)
        return self.fc2(F.gelu(self.fc1(x)))


class ChunkEncoder(nn.Module):
    """One chunk's window of features -> its audio embeddings. This is what encoder.onnx holds."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.encoder = AudioEncoder(cfg.encoder)
        self.projector = Projector(cfg.encoder.d_model, cfg.lm.hidden_size, cfg.stream)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, n_mels, left_context + chunk frames) -> (B, tokens_per_chunk, hidden)"""
        return self.projector(self.encoder(features))


# ----------------------------------------------------------------------------- language model


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids (B, T) -> cos, sin (B, 1, T, head_dim), half-split (rotate_half) layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device) / head_dim))
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq  # (B, T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class LMAttention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_bias)

    def forward(self, x, cos, sin, mask, past: KV | None) -> tuple[torch.Tensor, KV]:
        c = self.cfg
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, c.n_heads, c.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(B, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)  # (B, nkv, S, hd)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        rep = c.n_heads // c.n_kv_heads
        S = k.shape[2]
        k = k[:, :, None].expand(B, c.n_kv_heads, rep, S, c.head_dim).reshape(B, c.n_heads, S, c.head_dim)
        v = v[:, :, None].expand(B, c.n_kv_heads, rep, S, c.head_dim).reshape(B, c.n_heads, S, c.head_dim)
        att = (q @ k.transpose(-2, -1)) * (c.head_dim**-0.5)  # (B, nh, T, S)
        att = att.masked_fill(~mask, torch.finfo(att.dtype).min)
        y = att.softmax(dim=-1) @ v  # (B, nh, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, c.n_heads * c.head_dim)), present


class LMMLP(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LMLayer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LMAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LMMLP(cfg)
        self.dropout = 0.0  # residual dropout in training mode only (a training setting: not saved, not exported)

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        return F.dropout(y, self.dropout, True) if self.training and self.dropout > 0 else y

    def forward(self, x, cos, sin, mask, past):
        a, present = self.self_attn(self.input_layernorm(x), cos, sin, mask, past)
        x = x + self._drop(a)
        return x + self._drop(self.mlp(self.post_attention_layernorm(x))), present


class LMBody(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LMLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaLM(nn.Module):
    """Llama-family decoder with an explicit KV cache. ``model.*``/``lm_head`` names match HF."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.model = LMBody(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(ids)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past: list[KV] | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """inputs_embeds (B, T, C), attention_mask (B, past + T), position_ids (B, T)
        -> final hidden states (B, T, C) (after the last norm) and the present KV per layer."""
        T, S = inputs_embeds.shape[1], attention_mask.shape[1]
        q_pos = torch.arange(T, device=inputs_embeds.device) + (S - T)
        k_pos = torch.arange(S, device=inputs_embeds.device)
        causal = k_pos[None, :] <= q_pos[:, None]  # (T, S)
        mask = causal[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, T, S)
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        x, presents = inputs_embeds, []
        for i, layer in enumerate(self.model.layers):
            x, present = layer(x, cos, sin, mask, None if past is None else past[i])
            presents.append(present)
        return self.model.norm(x), presents

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    @torch.no_grad()
    def load_hf(self, hf_model: nn.Module) -> None:
        """Copy a transformers Llama/Qwen2 *ForCausalLM: every key and shape must match."""
        sd = {k: v for k, v in hf_model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
        if "lm_head.weight" not in sd:  # tied checkpoints may omit it
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        self.load_state_dict(sd, strict=True)


class AudioInteractionModel(nn.Module):
    """The whole model: chunk encoder + LM. Training and the export both start here."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.chunk_encoder = ChunkEncoder(cfg)
        self.lm = LlamaLM(cfg.lm)

    def count_parameters(self) -> dict[str, int]:
        n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"encoder": n(self.chunk_encoder.encoder), "projector": n(self.chunk_encoder.projector), "lm": n(self.lm)}


def build_model(cfg: ModelConfig, seed: int = 0) -> AudioInteractionModel:
    """A randomly initialised model (tests, and the start of training)."""
    torch.manual_seed(seed)
    model = AudioInteractionModel(cfg)
    for name, p in model.named_parameters():
        if p.requires_grad and p.dim() >= 2:
            nn.init.normal_(p, std=0.02 if "lm." in name else 0.05)
    return model.eval()

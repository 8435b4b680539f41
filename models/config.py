"""What a model is, in numbers: frozen configs and the named presets.

The LM half is described by :class:`LMConfig`, which is read from a Hugging Face Llama-family
config (Llama, Qwen2, SmolLM2 share it), so one definition and one export path serve real
checkpoints and the tiny random models the tests build.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from edge_runtime.features import FeatureRecipe

CONTROL_TOKENS = {"silent": "<|silent|>", "respond": "<|respond|>", "end": "<|end|>"}


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Whisper-architecture audio encoder (conv stem + pre-LN transformer), applied per window.

    n_mels: input bands. d_model, n_layers, n_heads, ffn_dim: transformer sizes.
    max_positions: sinusoidal position table length (encoder frames after the stride-2 conv).
    """

    n_mels: int = 80
    d_model: int = 384
    n_layers: int = 4
    n_heads: int = 6
    ffn_dim: int = 1536
    max_positions: int = 1500

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"encoder: d_model {self.d_model} not divisible by n_heads {self.n_heads}")


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    """How audio becomes tokens.

    chunk_frames: feature frames (10 ms each) per chunk; 40 = 400 ms.
    left_context_frames: earlier frames the encoder sees with each chunk (not re-emitted).
    tokens_per_chunk: embeddings the projector emits per chunk (all of them, revisited ones included).
    revisit_chunks: earlier chunks whose encoder positions are emitted again with each chunk, now
        that the window holds audio after them (0: only the new chunk's positions). The encoder is
        bidirectional, so a chunk's positions at the right edge of its own window have no right
        context; seen again one chunk later they carry its words better (a probe in session 12:
        character error 0.42 -> 0.33 on held-out voices, whole-utterance encoding 0.33). The
        decision still comes at the new chunk, so latency does not change.
    """

    chunk_frames: int = 40
    left_context_frames: int = 160
    tokens_per_chunk: int = 5
    revisit_chunks: int = 0

    def __post_init__(self) -> None:
        if self.chunk_frames % 2 or self.projector_positions % self.tokens_per_chunk:
            raise ValueError(
                f"stream: the projector's positions ({self.projector_positions}: chunk_frames/2 x "
                f"(1 + revisit_chunks)) must be a multiple of tokens_per_chunk ({self.tokens_per_chunk})"
            )
        if self.left_context_frames % 2:
            raise ValueError(f"stream: left_context_frames must be even, got {self.left_context_frames}")
        if not 0 <= self.revisit_chunks * self.chunk_frames <= self.left_context_frames:
            raise ValueError(f"stream: revisit_chunks ({self.revisit_chunks}) must be >= 0 and its chunks must "
                             f"fit in the left context ({self.left_context_frames} frames)")

    @property
    def projector_positions(self) -> int:
        """Encoder positions the projector reads per chunk: the last (1 + revisit_chunks) chunks'."""
        return (1 + self.revisit_chunks) * self.chunk_frames // 2

    @property
    def window_frames(self) -> int:
        return self.left_context_frames + self.chunk_frames


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Decoder-only Llama-family LM (RMSNorm, RoPE, grouped-query attention, SwiGLU)."""

    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_positions: int = 2048
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = True
    architecture: str = "llama"

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"lm: n_heads {self.n_heads} not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"lm: head_dim must be even for RoPE, got {self.head_dim}")

    @classmethod
    def from_hf(cls, hf: Any) -> "LMConfig":
        """From a transformers LlamaConfig / Qwen2Config (or anything with the same fields)."""
        mtype = getattr(hf, "model_type", "llama")
        if mtype not in ("llama", "qwen2", "mistral"):
            raise ValueError(f"lm: unsupported model_type {mtype!r} (llama, qwen2, mistral)")
        rope_scaling = getattr(hf, "rope_scaling", None)
        if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) not in (None, "default"):
            raise ValueError(f"lm: rope_scaling {rope_scaling} is not supported")
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        bias = bool(getattr(hf, "attention_bias", False))
        return cls(
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            n_layers=hf.num_hidden_layers,
            n_heads=hf.num_attention_heads,
            n_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
            head_dim=head_dim,
            intermediate_size=hf.intermediate_size,
            rms_norm_eps=hf.rms_norm_eps,
            rope_theta=float(getattr(hf, "rope_theta", 10000.0)),
            max_positions=hf.max_position_embeddings,
            qkv_bias=bias or mtype == "qwen2",
            o_bias=bias and mtype == "llama",
            mlp_bias=bool(getattr(hf, "mlp_bias", False)),
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            architecture=mtype,
        )

    def to_hf(self):
        """A transformers LlamaConfig with these numbers (used to cross-check against HF)."""
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            max_position_embeddings=self.max_positions,
            attention_bias=self.qkv_bias,
            mlp_bias=self.mlp_bias,
            tie_word_embeddings=self.tie_word_embeddings,
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A whole audio-interaction model: features -> encoder -> projector -> LM."""

    name: str
    features: FeatureRecipe
    encoder: EncoderConfig
    stream: StreamConfig
    lm: LMConfig
    default_instruction: str = "Answer when someone talks to you."

    def __post_init__(self) -> None:
        if self.encoder.n_mels != self.features.n_mels:
            raise ValueError(f"config: encoder n_mels {self.encoder.n_mels} != features n_mels {self.features.n_mels}")
        if self.stream.window_frames // 2 > self.encoder.max_positions:
            raise ValueError("config: encoder window longer than its position table")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        return cls(
            name=d["name"],
            features=FeatureRecipe.from_dict(d["features"]),
            encoder=EncoderConfig(**d["encoder"]),
            stream=StreamConfig(**d["stream"]),
            lm=LMConfig(**d["lm"]),
            default_instruction=d.get("default_instruction", cls.default_instruction),
        )


def preset(name: str, vocab_size: int) -> ModelConfig:
    """Named sizes. ``vocab_size`` comes from the tokenizer the model is paired with."""
    feats = FeatureRecipe()
    if name == "test-tiny":  # a few hundred kB: for tests
        return ModelConfig(
            name=name,
            features=feats,
            encoder=EncoderConfig(d_model=32, n_layers=1, n_heads=2, ffn_dim=64, max_positions=64),
            stream=StreamConfig(chunk_frames=40, left_context_frames=40, tokens_per_chunk=5),
            lm=LMConfig(vocab_size=vocab_size, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=16, intermediate_size=64, max_positions=4096),
        )
    if name == "small":  # Whisper tiny.en encoder dims + a ~3M-parameter decoder
        return ModelConfig(
            name=name,
            features=feats,
            encoder=EncoderConfig(),
            stream=StreamConfig(chunk_frames=40, left_context_frames=160, tokens_per_chunk=5),
            lm=LMConfig(vocab_size=vocab_size, hidden_size=256, n_layers=4, n_heads=8, n_kv_heads=2,
                        head_dim=32, intermediate_size=768, max_positions=4096),
        )
    raise ValueError(f"unknown preset {name!r} (test-tiny, small)")

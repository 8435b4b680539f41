"""PyTorch -> ONNX for the encoder and the portable ("concat" KV layout) decoder.

Export-only wrapper modules turn the model's Python-level cache into named graph inputs and
outputs: ``past_key_values.{i}.key|value`` in, ``present.{i}.key|value`` out.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

from edge_models.audio_interaction import ChunkEncoder, LlamaLM

OPSET = 17


class DecoderForExport(nn.Module):
    """(inputs_embeds, attention_mask, position_ids, *past) -> (logits of the last position, *present)."""

    def __init__(self, lm: LlamaLM):
        super().__init__()
        self.lm = lm

    def forward(self, inputs_embeds, attention_mask, position_ids, *past_flat):
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(len(past_flat) // 2)]
        hidden, presents = self.lm(inputs_embeds, attention_mask, position_ids, past)
        logits = self.lm.logits(hidden[:, -1:, :])  # (B, 1, vocab): only what the loop reads
        return (logits, *[t for kv in presents for t in kv])


def _export(module: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path),
            input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


@torch.no_grad()
def export_encoder(enc: ChunkEncoder, n_mels: int, window_frames: int, path: Path) -> None:
    """encoder.onnx: features (B, n_mels, window_frames) -> audio_embeds (B, tokens_per_chunk, hidden)."""
    x = torch.zeros(1, n_mels, window_frames)
    _export(enc.eval(), (x,), path, ["features"], ["audio_embeds"],
            {"features": {0: "batch"}, "audio_embeds": {0: "batch"}})


@torch.no_grad()
def export_concat_decoder(lm: LlamaLM, path: Path) -> None:
    c = lm.cfg
    T, P = 3, 2  # example lengths; all sequence axes are dynamic
    embeds = torch.zeros(1, T, c.hidden_size)
    mask = torch.ones(1, P + T, dtype=torch.int64)
    pos = torch.arange(P, P + T)[None]
    past = [torch.zeros(1, c.n_kv_heads, P, c.head_dim) for _ in range(2 * c.n_layers)]
    kv_names = [f"{i}.{kv}" for i in range(c.n_layers) for kv in ("key", "value")]
    ins = ["inputs_embeds", "attention_mask", "position_ids"] + [f"past_key_values.{n}" for n in kv_names]
    outs = ["logits"] + [f"present.{n}" for n in kv_names]
    dyn = {
        "inputs_embeds": {0: "batch", 1: "sequence_length"},
        "attention_mask": {0: "batch", 1: "total_sequence_length"},
        "position_ids": {0: "batch", 1: "sequence_length"},
        "logits": {0: "batch"},
    }
    dyn.update({f"past_key_values.{n}": {0: "batch", 2: "past_sequence_length"} for n in kv_names})
    dyn.update({f"present.{n}": {0: "batch", 2: "total_sequence_length"} for n in kv_names})
    _export(DecoderForExport(lm).eval(), (embeds, mask, pos, *past), path, ins, outs, dyn)

"""Running a decoder graph with an explicit KV cache, for both layouts of the bundle contract.

- ``concat``: the graph returns present = concat(past, new). We keep the presents as OrtValues and
  bind them as the next call's past, so Python adds no copy (the graph's own concat remains).
- ``shared``: one fixed (1, kv_heads, max_len, head_dim) buffer per layer and K/V; past and present
  are bound to the *same* memory and the graph (GroupQueryAttention) writes the new rows in place.

:class:`Decoder` is shared (one session); :class:`KVCache` is per stream.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from .bundle import BundleError, DecoderDims
from .sessions import Runner, ortvalue

log = logging.getLogger(__name__)

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


class KVCache:
    """All mutable decoder state of one stream. ``length``: tokens held."""

    def __init__(self, decoder: "Decoder"):
        self.decoder = decoder
        self.reset()

    def reset(self) -> None:
        d = self.decoder
        self.length = 0
        if d.layout == "shared":
            shape = (1, d.dims.n_kv_heads, d.max_len, d.dims.head_dim)
            # np.empty + fill touches every page now: the cache's memory is taken up front (RSS flat
            # from the first chunk), not page by page as the context fills (np.zeros is lazy).
            self._arrays = [np.empty(shape, np.float32) for _ in range(2 * d.dims.n_layers)]
            for a in self._arrays:
                a.fill(0.0)
            self.values = [ortvalue(a) for a in self._arrays]
            # One binding for the life of the stream: the KV buffers and the logits row stay bound;
            # each step rebinds only the new embeddings and the mask.
            self.logits = np.zeros((1, 1, d.dims.vocab_size), np.float32)
            self.io = d.runner.binding()
            for name, value in zip(d._past_names, self.values):
                self.io.bind_ortvalue_input(name, value)
            for name, value in zip(d._present_names, self.values):
                self.io.bind_ortvalue_output(name, value)  # written in place
            self.io.bind_ortvalue_output("logits", ortvalue(self.logits))
        else:
            empty = np.zeros((1, d.dims.n_kv_heads, 0, d.dims.head_dim), np.float32)
            self.values = [ortvalue(empty) for _ in range(2 * d.dims.n_layers)]

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` tokens (the instruction sink, say)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        if length == self.length:
            return
        if self.decoder.layout == "concat":  # O(length) copy, once per eviction
            self.values = [ortvalue(np.ascontiguousarray(v.numpy()[:, :, :length])) for v in self.values]
        self.length = length

    def numpy(self) -> list[np.ndarray]:
        """Per layer K and V of the held tokens, (1, kv_heads, length, head_dim); for tests and tools."""
        return [v.numpy()[:, :, : self.length] for v in self.values]


class Decoder:
    """One decoder session and the bookkeeping to call it step after step."""

    def __init__(self, runner: Runner, dims: DecoderDims, layout: str, where: str = "decoder.onnx"):
        self.runner, self.dims, self.layout = runner, dims, layout
        self._check_graph(where)
        self.max_len = dims.max_context
        if layout == "shared":
            s = runner.inputs["past_key_values.0.key"].shape[2]
            if isinstance(s, int):
                self.max_len = s
        mask_t = runner.inputs["attention_mask"].type
        self._idx_dtype = np.int32 if "int32" in mask_t else np.int64
        self._ones = np.ones((1, self.max_len + 1024), dtype=self._idx_dtype)
        self._has_pos = "position_ids" in runner.inputs
        self._past_names = [f"past_key_values.{i}.{kv}" for i in range(dims.n_layers) for kv in ("key", "value")]
        self._present_names = [f"present.{i}.{kv}" for i in range(dims.n_layers) for kv in ("key", "value")]

    def _check_graph(self, where: str) -> None:
        d, ins, outs = self.dims, self.runner.inputs, self.runner.outputs
        for name in ("inputs_embeds", "attention_mask"):
            if name not in ins:
                raise BundleError(f"{where}: input {name!r} missing (Optimum/onnxruntime-genai convention)")
        if "logits" not in outs:
            raise BundleError(f"{where}: output 'logits' missing")
        layers = {int(m.group(1)) for n in ins if (m := _PAST.match(n))}
        if len(layers) != d.n_layers:
            raise BundleError(f"manifest.json: decoder.n_layers: {d.n_layers} contradicts {where} ({len(layers)} layers of past_key_values)")
        checks = [
            ("decoder.hidden_size", d.hidden_size, ins["inputs_embeds"].shape[-1], "inputs_embeds dim 2"),
            ("decoder.n_kv_heads", d.n_kv_heads, ins["past_key_values.0.key"].shape[1], "past_key_values.0.key dim 1"),
            ("decoder.head_dim", d.head_dim, ins["past_key_values.0.key"].shape[3], "past_key_values.0.key dim 3"),
            ("decoder.vocab_size", d.vocab_size, outs["logits"].shape[-1], "logits last dim"),
        ]
        for field, want, got, what in checks:
            if isinstance(got, int) and got != want:
                raise BundleError(f"manifest.json: {field}: {want} contradicts {where} {what} = {got}")

    def new_cache(self) -> KVCache:
        return KVCache(self)

    def forward(self, cache: KVCache, embeds: np.ndarray) -> np.ndarray:
        """Append ``embeds`` (T, hidden) to the cache; return the logits (vocab,) of the last position.

        The returned array may be a view that the next call overwrites: copy it to keep it."""
        past, total = cache.length, cache.length + embeds.shape[0]
        if total > self.max_len:
            raise RuntimeError(f"KV cache overflow: {total} tokens > max context {self.max_len} (evict first)")
        shared = self.layout == "shared"
        io = cache.io if shared else self.runner.binding()
        io.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds[None], dtype=np.float32))
        io.bind_cpu_input("attention_mask", self._ones[:, :total])
        if self._has_pos:
            io.bind_cpu_input("position_ids", np.arange(past, total, dtype=self._idx_dtype)[None])
        if not shared:
            for name, value in zip(self._past_names, cache.values):
                io.bind_ortvalue_input(name, value)
            io.bind_output("logits", "cpu")
            for name in self._present_names:
                io.bind_output(name, "cpu")
        self.runner.run_binding(io)
        cache.length = total
        if shared:
            return cache.logits[0, -1]
        outs = io.get_outputs()
        cache.values = list(outs[1:])  # the graph's presents become the next past: no numpy copy
        logits = outs[0].numpy()
        return logits.reshape(-1, logits.shape[-1])[-1]

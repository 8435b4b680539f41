"""Build the in-place ("shared" KV layout) decoder graph directly from the LM's weights.

One fixed (B, kv_heads, max_len, head_dim) buffer per layer for K and for V; ONNX Runtime's
com.microsoft GroupQueryAttention writes the new rows into it when past and present are bound to
the same memory, and applies RoPE itself from the position implied by the mask. So a step costs
O(new tokens), shapes are static, and cache memory is known up front.

I/O follows the Optimum / onnxruntime-genai convention: ``inputs_embeds``, ``attention_mask``
(B, total_len) -> ``logits`` (B, 1, vocab) for the last position, ``present.{i}.key|value``.
Positions are derived from the mask (as onnxruntime-genai's graphs do), so there is no
``position_ids`` input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_models.audio_interaction import LlamaLM

OPSET = 17


class _Graph:
    def __init__(self):
        self.nodes, self.inits = [], []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        base = self.name(op_type)
        outs = [f"{base}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=base, domain=domain, **attrs))
        return outs

    def linear(self, x: str, lin, name: str) -> str:
        w = lin.weight.detach().float().numpy().T  # (in, out): MatMul(x, W^T)
        y = self.op("MatMul", [x, self.const(f"{name}.weight_t", w)])[0]
        if lin.bias is not None:
            y = self.op("Add", [y, self.const(f"{name}.bias", lin.bias.detach().float().numpy())])[0]
        return y

    def fused_linear(self, x: str, lins: list, name: str) -> str:
        """One MatMul for several linears of the same input (outputs concatenated): fewer
        single-row MatMulNBits calls per token, which is where a decode step spends its overhead."""
        w = np.concatenate([lin.weight.detach().float().numpy().T for lin in lins], axis=1)
        y = self.op("MatMul", [x, self.const(f"{name}.weight_t", w)])[0]
        if any(lin.bias is not None for lin in lins):
            b = np.concatenate([lin.bias.detach().float().numpy() if lin.bias is not None
                                else np.zeros(lin.weight.shape[0], np.float32) for lin in lins])
            y = self.op("Add", [y, self.const(f"{name}.bias", b)])[0]
        return y

    def rmsnorm(self, x: str, norm, name: str) -> str:
        w = self.const(f"{name}.weight", norm.weight.detach().float().numpy())
        return self.op("SimplifiedLayerNormalization", [x, w], axis=-1, epsilon=float(norm.eps), stash_type=1)[0]


def build_shared_decoder(lm: LlamaLM, max_len: int) -> onnx.ModelProto:
    """The LM (without its embedding table) as a GroupQueryAttention graph over a max_len buffer."""
    c = lm.cfg
    g = _Graph()
    B, T, TOT = "batch", "sequence_length", "total_sequence_length"
    kv_shape = [B, c.n_kv_heads, max_len, c.head_dim]
    inputs = [
        helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, [B, T, c.hidden_size]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [B, TOT]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [B, 1, c.vocab_size])]
    for i in range(c.n_layers):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", TensorProto.FLOAT, kv_shape))

    # GroupQueryAttention wants seqlens_k = tokens held after this call - 1, and the total length.
    lens = g.op("ReduceSum", ["attention_mask", g.const("axis1", np.array([1], np.int64))], keepdims=0)[0]
    lens = g.op("Sub", [lens, g.const("one_i64", np.array(1, np.int64))])[0]
    seqlens_k = g.op("Cast", [lens], to=TensorProto.INT32)[0]
    shape = g.op("Shape", ["attention_mask"])[0]
    tot = g.op("Gather", [shape, g.const("idx1", np.array(1, np.int64))], axis=0)[0]
    total_len = g.op("Cast", [tot], to=TensorProto.INT32)[0]

    inv_freq = 1.0 / (c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float64) / c.head_dim))
    freqs = np.arange(max_len, dtype=np.float64)[:, None] * inv_freq[None, :]  # (max_len, hd/2)
    cos = g.const("cos_cache", np.cos(freqs).astype(np.float32))
    sin = g.const("sin_cache", np.sin(freqs).astype(np.float32))

    x = "inputs_embeds"
    for i, layer in enumerate(lm.model.layers):
        p = f"model.layers.{i}"
        h = g.rmsnorm(x, layer.input_layernorm, f"{p}.input_layernorm")
        a = layer.self_attn
        qkv = g.fused_linear(h, [a.q_proj, a.k_proj, a.v_proj], f"{p}.self_attn.qkv_proj")  # packed Q|K|V
        base = g.name("GroupQueryAttention")
        attn = f"{base}_out"
        g.nodes.append(helper.make_node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens_k, total_len, cos, sin],
            [attn, f"present.{i}.key", f"present.{i}.value"],
            name=base, domain="com.microsoft",
            num_heads=c.n_heads, kv_num_heads=c.n_kv_heads, do_rotary=1, rotary_interleaved=0,
            scale=float(c.head_dim**-0.5),
        ))
        x = g.op("Add", [x, g.linear(attn, a.o_proj, f"{p}.self_attn.o_proj")])[0]
        h = g.rmsnorm(x, layer.post_attention_layernorm, f"{p}.post_attention_layernorm")
        m = layer.mlp
        gate_up = g.fused_linear(h, [m.gate_proj, m.up_proj], f"{p}.mlp.gate_up_proj")
        n = c.intermediate_size
        gate, up = g.op("Split", [gate_up, g.const(f"{p}.mlp.split", np.array([n, n], np.int64))], n_out=2, axis=-1)
        silu = g.op("Mul", [gate, g.op("Sigmoid", [gate])[0]])[0]
        act = g.op("Mul", [silu, up])[0]
        x = g.op("Add", [x, g.linear(act, m.down_proj, f"{p}.mlp.down_proj")])[0]

    # Only the last position's logits: no vocab x hidden work for the audio tokens.
    last = g.op("Slice", [x, g.const("m1", np.array([-1], np.int64)), g.const("big", np.array([2**62], np.int64)),
                          g.const("ax1", np.array([1], np.int64))])[0]
    h = g.rmsnorm(last, lm.model.norm, "model.norm")
    w = lm.lm_head.weight.detach().float().numpy().T.copy()  # untied in the graph, so it quantizes
    g.nodes.append(helper.make_node("MatMul", [h, g.const("lm_head.weight_t", w)], ["logits"], name="lm_head"))

    graph = helper.make_graph(g.nodes, "decoder_shared_kv", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model

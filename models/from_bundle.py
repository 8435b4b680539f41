"""A PyTorch model rebuilt from an exported audio-interaction bundle, so a shipped bundle can be
fine-tuned (``train.init``) or re-exported without the checkpoint it was exported from.

Every trainable tensor is in the bundle's graphs: the encoder and projector in ``encoder.onnx``
(fp32 or fp16 storage: exact; int8 in some bundles), the decoder in ``decoder.onnx`` (fp32, or
int8 ``MatMulNBits`` blocks of 32, or the dynamic scheme's per-channel ``MatMulInteger`` weights; both dequantize
to within one step of their scale).
Initializers that the exporter left anonymous (``onnx::MatMul_932``) are named by the node that consumes them
(``/lm/layers.0/self_attn/q_proj/MatMul_Q8``), which carries the module path.
Every key and shape of the model's state dict must be filled (``strict=True``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from tokenizers import Tokenizer

from .audio_interaction import AudioInteractionModel
from .config import ModelConfig

# graph name prefix -> state-dict prefix, first match wins: initializers carry the module's own names
# ("lm.model.norm.weight"); the decoder graph's node paths name LlamaLM.model "lm" and its head "lm_head"
_PREFIXES = {"encoder.": "chunk_encoder.encoder.", "projector.": "chunk_encoder.projector.",
             "lm.model.": "lm.model.", "lm.": "lm.model.", "lm_head.": "lm.lm_head."}
_NODE = re.compile(r"^/(?P<path>.+)/MatMul(?:_Q\d+|_quant)?$")  # /lm/layers.0/mlp/up_proj/MatMul_Q8, .../MatMul_quant


def dequantize_nbits(node: onnx.NodeProto, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """A ``MatMulNBits`` weight back to a float (N, K) matrix: (q - zero_point) * scale per block."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    bits, block, K, N = attrs["bits"], attrs["block_size"], attrs["K"], attrs["N"]
    if bits != 8:
        raise ValueError(f"{node.name}: {bits}-bit weights are not supported (8-bit only)")
    q = tensors[node.input[1]].reshape(N, -1, block).astype(np.float32)  # (N, n_blocks, block)
    scales = tensors[node.input[2]].reshape(N, -1, 1).astype(np.float32)
    zp = 128.0  # the default for 8 bits when the graph stores none
    if len(node.input) > 3 and node.input[3]:
        zp = tensors[node.input[3]].reshape(N, -1, 1).astype(np.float32)
    return ((q - zp) * scales).reshape(N, -1)[:, :K]


def dequantize_integer(node: onnx.NodeProto, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """A ``MatMulInteger`` weight (K, N), int8 with a scale and zero point per output column, back to a
    float Linear weight (N, K)."""
    w = node.input[1]
    scale_name = w.removesuffix("_quantized") + "_scale"  # onnxruntime's quantizer names them in pairs
    if scale_name not in tensors:
        raise ValueError(f"{node.name}: no {scale_name} beside the int8 weight {w}")
    q, scale = tensors[w].astype(np.float32), tensors[scale_name].astype(np.float32)
    zp = tensors[node.input[3]].astype(np.float32) if len(node.input) > 3 and node.input[3] else 0.0
    return ((q - zp) * scale).T


def graph_weights(path: Path) -> dict[str, np.ndarray]:
    """Graph names (``encoder.conv1.weight``, ``lm.layers.0.mlp.up_proj.weight``) -> float32 arrays
    for every weight in one graph."""
    g = onnx.load(str(path)).graph
    tensors = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for n in g.node:  # fp16 storage (``x.fp16`` -> Cast -> ``x``); equal tensors stored once (``a`` -> Identity -> ``b``)
        if n.op_type in ("Cast", "Identity") and n.input[0] in tensors:
            tensors[n.output[0]] = tensors[n.input[0]]
    out: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        base = name[: -len(".fp16")] if name.endswith(".fp16") else name
        if not base.startswith("onnx::") and arr.dtype.kind == "f":
            out[base] = arr.astype(np.float32)
    for n in g.node:
        m = _NODE.match(n.name)
        if not m or n.op_type not in ("MatMul", "MatMulNBits", "MatMulInteger"):
            continue
        module = m.group("path").replace("/", ".")
        if n.op_type == "MatMulNBits":
            out[module + ".weight"] = dequantize_nbits(n, tensors)
        elif n.op_type == "MatMulInteger":
            out[module + ".weight"] = dequantize_integer(n, tensors)
        elif n.input[1] in tensors:  # x @ W: W is the transposed Linear weight
            out[module + ".weight"] = tensors[n.input[1]].astype(np.float32).T
    return out


def load_bundle_model(bundle: str | Path) -> tuple[AudioInteractionModel, Tokenizer, dict]:
    """(model, tokenizer, reference) rebuilt from an audio-interaction bundle folder."""
    from edge_runtime.bundle import load_manifest
    from edge_runtime.embeddings import TokenEmbeddings

    m = load_manifest(bundle)
    if "model_config" not in m.raw:
        raise ValueError(f"{m.root}: the manifest records no model_config to rebuild the model from")
    model = AudioInteractionModel(ModelConfig.from_dict(m.raw["model_config"]))
    concat = next(d for d in m.decoders if d.kv_layout == "concat")
    found: dict[str, np.ndarray] = {}
    for file in (m.encoder.file, concat.file):
        for name, arr in graph_weights(m.path(file)).items():
            key = next((new + name[len(old):] for old, new in _PREFIXES.items() if name.startswith(old)), None)
            if key is not None:
                found[key] = arr
    if model.cfg.lm.tie_word_embeddings and "lm.lm_head.weight" in found:
        found["lm.model.embed_tokens.weight"] = found["lm.lm_head.weight"]  # 32-wide blocks: finer than per row
    else:
        vocab = np.arange(model.cfg.lm.vocab_size)
        found["lm.model.embed_tokens.weight"] = TokenEmbeddings(m)(vocab)
    sd = model.state_dict()
    missing = sorted(set(sd) - set(found))
    if missing:
        raise ValueError(f"{m.root}: the graphs hold no weights for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for k, v in sd.items():
        if tuple(found[k].shape) != tuple(v.shape):
            raise ValueError(f"{m.root}: {k} is {tuple(found[k].shape)} in the bundle, {tuple(v.shape)} in the model")
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(found[k])) for k in sd}, strict=True)
    tok = Tokenizer.from_file(str(m.path(m.raw["tokenizer"])))
    return model.eval(), tok, {"source": "bundle", "path": str(Path(m.root).resolve()), "version": m.raw.get("version")}

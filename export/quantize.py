"""int8 schemes for the bundle's graphs. Which one a model gets is decided by measurement
(export/pipeline.py): accuracy against fp32 first, then speed.

- ``weight-only``: MatMulNBits, 8-bit symmetric weights in blocks, accuracy level 4 (int8 compute
  of activations on CPU with per-block scales). Keeps greedy decoding close to fp32.
- ``dynamic``: QDQ-free dynamic quantization (DynamicQuantizeLinear + MatMulInteger), per-tensor
  activation scales computed at run time. Often faster, less accurate.

Only MatMul weights are quantized; convolutions, norms and attention stay fp32.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

log = logging.getLogger(__name__)

SCHEMES = {
    "weight-only": "MatMulNBits bits=8 block=32 symmetric accuracy_level=4",
    "dynamic": "DynamicQuantizeLinear + MatMulInteger, int8 weights per channel",
}


def quantize(src: Path, dst: Path, scheme: str) -> None:
    for name in ("onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        logging.getLogger(name).setLevel(logging.WARNING)  # one line per node otherwise
    if scheme == "weight-only":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4)
        q.process()
        onnx.save_model(q.model.model, str(dst))
    elif scheme == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=True,
                         # contrib ops (GroupQueryAttention) defeat shape inference; our graphs are fp32
                         extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
    else:
        raise ValueError(f"unknown int8 scheme {scheme!r} ({', '.join(SCHEMES)})")
    log.info("quantized %s -> %s (%s)", src.name, dst.name, scheme)


def fp16_storage(src: Path, dst: Path, min_elems: int = 4096) -> int:
    """Store the large float32 weights as float16, each followed by a Cast back to float32.

    The file halves; the arithmetic stays fp32: onnxruntime folds ``Cast(initializer)`` into a
    float32 initializer when the session is created, so run time equals the fp32 graph's (the only
    change is rounding the weights to fp16 once). Returns how many weights were converted."""
    import numpy as np
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    casts, kept, n = [], [], 0
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and int(np.prod(init.dims)) >= min_elems:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + ".fp16")
            kept.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT, name=init.name + ".cast"))
            n += 1
        else:
            kept.append(init)
    g.ClearField("initializer")
    g.initializer.extend(kept)
    nodes = casts + list(g.node)  # the casts first: the graph stays topologically sorted
    g.ClearField("node")
    g.node.extend(nodes)
    onnx.save_model(m, str(dst))
    log.info("fp16 storage: %d weights in %s -> %s", n, src.name, dst.name)
    return n

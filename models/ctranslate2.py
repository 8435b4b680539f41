"""A reader for CTranslate2's ``model.bin`` (binary version 6), without CTranslate2.

Layout, little-endian:
    u32 version | str spec_name | u32 spec_revision | u32 n_variables
    n_variables x (str name | u8 rank | u32 dims[rank] | u8 dtype | u32 n_bytes | bytes)
    u32 n_aliases x (str alias | str target)
where ``str`` is a u16 length (including a trailing NUL) and the bytes.
int8 weights come with a ``<name>_scale`` variable (per output row); they are dequantised here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_BF16 = 5


class CT2FormatError(ValueError):
    pass


class _Cursor:
    def __init__(self, data: memoryview, path: Path):
        self.d, self.i, self.path = data, 0, path

    def take(self, n: int) -> memoryview:
        if self.i + n > len(self.d):
            raise CT2FormatError(f"{self.path}: truncated at byte {self.i} (wanted {n} more)")
        out = self.d[self.i : self.i + n]
        self.i += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def string(self) -> str:
        return bytes(self.take(self.u16())).rstrip(b"\0").decode("utf-8")


def read_ct2(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """-> (spec name, {variable name: array}), aliases resolved, int8 weights dequantised to fp32."""
    path = Path(path)
    raw = memoryview(path.read_bytes())
    c = _Cursor(raw, path)
    version = c.u32()
    if version != 6:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version}; this reader knows version 6")
    spec = c.string()
    c.u32()  # spec revision
    out: dict[str, np.ndarray] = {}
    for _ in range(c.u32()):
        name = c.string()
        shape = tuple(c.u32() for _ in range(c.u8()))
        dtype, n_bytes = c.u8(), c.u32()
        buf = c.take(n_bytes)
        if dtype == _BF16:
            arr = (np.frombuffer(buf, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dtype in _DTYPES:
            arr = np.frombuffer(buf, _DTYPES[dtype])
        else:
            raise CT2FormatError(f"{path}: variable {name}: unknown dtype code {dtype}")
        if arr.size != int(np.prod(shape, dtype=np.int64)):
            raise CT2FormatError(f"{path}: variable {name}: {arr.size} values for shape {shape}")
        out[name] = arr.reshape(shape)
    for _ in range(c.u32() if c.i < len(raw) else 0):
        alias, target = c.string(), c.string()
        out[alias] = out[target]
    for name in [n for n in out if n.endswith("_scale")]:
        w = name[: -len("_scale")]
        if w in out and out[w].dtype == np.int8:
            scale = out.pop(name).astype(np.float32)
            out[w] = out[w].astype(np.float32) / scale.reshape(-1, *([1] * (out[w].ndim - 1)))
    return spec, out

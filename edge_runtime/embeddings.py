"""Token embeddings for the runtime, outside the decoder graph.

The decoder takes ``inputs_embeds``, so the runtime embeds control and response tokens itself.
The table is memory-mapped from the bundle (only the rows it touches are paged in), int8 with a
per-row scale in int8 bundles, so no second full-precision copy of a tied matrix sits in memory.
"""

from __future__ import annotations

import numpy as np

from .bundle import BundleError, Manifest


class TokenEmbeddings:
    def __init__(self, manifest: Manifest):
        spec = manifest.embeddings
        where = f"{manifest.root / 'manifest.json'}: embeddings"
        try:
            self.table = np.load(manifest.path(spec["file"]), mmap_mode="r")
            self.scales = np.load(manifest.path(spec["scales"]), mmap_mode="r") if spec.get("scales") else None
        except KeyError as e:
            raise BundleError(f"{where}.{e.args[0]}: missing") from None
        except (OSError, ValueError) as e:
            raise BundleError(f"{manifest.path(spec.get('file', '?'))}: unreadable embedding table ({e})") from None
        want = (manifest.decoder.vocab_size, manifest.decoder.hidden_size)
        if self.table.shape != want:
            raise BundleError(f"{where}.file: shape {self.table.shape} contradicts decoder vocab_size x hidden_size {want}")
        if self.table.dtype == np.int8 and (self.scales is None or self.scales.shape != (want[0],)):
            raise BundleError(f"{where}.scales: an int8 table needs one scale per row ({want[0]})")

    def __call__(self, ids) -> np.ndarray:
        """ids (n,) -> (n, hidden) float32"""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = np.asarray(self.table[ids], dtype=np.float32)
        if self.scales is not None:
            rows *= np.asarray(self.scales[ids], dtype=np.float32)[:, None]
        return rows


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: table ~= q * scale[:, None]."""
    scale = np.abs(table).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(table / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)

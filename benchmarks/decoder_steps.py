"""Per-step decoder time at a given context length, for each KV layout of a bundle.

The cache is filled to the context with random embeddings (prefill in blocks), then single-token
steps are timed; medians and p90 are reported (shared machines are noisy)."""

from __future__ import annotations

import time

import numpy as np

from edge_runtime.model import Bundle
from edge_runtime.sessions import SessionConfig


def step_times(bundle_path: str, layout: str, contexts: list[int], threads: int = 1, steps: int = 20,
               seed: int = 0) -> list[dict]:
    b = Bundle(bundle_path, SessionConfig(threads=threads), layout=layout, verify_hashes=False)
    rng = np.random.default_rng(seed)
    hidden = b.manifest.decoder.hidden_size
    rows = []
    for ctx in contexts:
        if ctx + steps > b.decoder.max_len:
            rows.append({"layout": layout, "threads": threads, "context": ctx, "skipped": f"max context {b.decoder.max_len}"})
            continue
        cache = b.decoder.new_cache()
        while cache.length < ctx:
            n = min(256, ctx - cache.length)
            b.decoder.forward(cache, 0.02 * rng.standard_normal((n, hidden)).astype(np.float32))
        one = b.embed([5])
        b.decoder.forward(cache, one)  # warm-up at this context
        ms = []
        for _ in range(steps):
            t0 = time.perf_counter()
            b.decoder.forward(cache, one)
            ms.append(1000 * (time.perf_counter() - t0))
        rows.append({"layout": layout, "threads": threads, "context": ctx, "ms_p50": float(np.median(ms)),
                     "ms_p90": float(np.percentile(ms, 90)), "steps": steps})
    return rows

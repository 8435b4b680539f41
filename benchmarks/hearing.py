"""Where Whisper loses the held-out voices: the same utterances heard clean and under each of the
streams' conditions alone.

Held-out-wording requests (``scenarios.command(..., "heldout")``, seeds of their own) are spoken
in held-out voices (flite, festival kal), set to a stream's speech level (-32 to -18 dBFS), and
heard by a whisper-asr bundle with the responder's prompt and padding, as the responder hears an
utterance (0.2 s before it, 0.3 s after). Each condition is one of the stream builder's
(``edge_models.streams``: a room's echo on 40% of the speech, steady background noise always, a
TV or radio music bed on a quarter of the streams) applied to *every* utterance, so each row says
what that condition costs on its own:

    clean   the voice alone
    room    synth.room: direct sound plus a diffuse tail, RT60 0.15-0.7 s
    noise   synth.background: white to brown noise at -70 to -42 dBFS
    music   a music bed at -42 to -30 dBFS

    python -m edge_bench.hearing WHISPER_BUNDLE [--n 80] [--dereverb-taps 20] [--out REPORT]

WER counts words with numbers written as digits on both sides (Whisper writes digits). Speech to
ignore (``scenarios.not_addressed``, half in the training wording and half in the held-out one, as
the two assistant sets have it: conversation, requests to someone else, near misses; held-out
voices) is heard under the same conditions, and ``name_heard`` is the share of it in which Whisper
heard the assistant's name as a name (``heard_as_name``, as the responder checks it): a recogniser
that writes "Edge" for "Kate" or "hedge" makes the responder answer speech that was not for it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np

CONDITIONS = ("clean", "room", "noise", "music")


def condition(name: str, rng: random.Random, voice: np.ndarray) -> np.ndarray:
    """``voice`` at a stream's speech level, 0.2 s before and 0.3 s after it, under ``name``."""
    from edge_models import synth

    return synth.heard_as_in_a_stream(rng, voice, room_echo=name == "room", noise=name == "noise", music=name == "music")


def run(bundle: str, n: int, seed: int = 21, pad_seconds: float | None = None, ignored: int = 80,
        dereverb_taps: int = 0) -> dict:
    from edge_models import scenarios as sc
    from edge_models import synth
    from edge_models.evaluate import wer_counts
    from edge_models.responder import ASR_PROMPT
    from edge_runtime.responder import heard_as_name, in_digits, normalize
    from edge_runtime.whisper_asr import AsrOptions, WhisperBundle

    asr = WhisperBundle(bundle)
    opts = AsrOptions(prompt=ASR_PROMPT, dereverb_taps=dereverb_taps, **({} if pad_seconds is None else {"pad_seconds": pad_seconds}))
    rng = random.Random(f"hearing:{seed}")
    said = [sc.command(rng, "heldout").text for _ in range(n)]
    voices = [synth.random_voice(rng, "heldout") for _ in range(n)]
    audio = [synth.speak(t, v) for t, v in zip(said, voices)]
    irng = random.Random(f"hearing-ignored:{seed}")
    other = [sc.not_addressed(irng, ("train", "heldout")[i % 2]).text for i in range(ignored)]
    other_audio = [synth.speak(t, synth.random_voice(irng, "heldout")) for t in other]
    words = lambda text: in_digits(normalize(text)).split()  # noqa: E731
    out = {"bundle": bundle, "utterances": n, "pad_seconds": opts.pad_seconds, "dereverb_taps": dereverb_taps, "conditions": {}}
    for name in CONDITIONS:
        crng, errors, examples, t0 = random.Random(f"{name}:{seed}"), 0, [], time.monotonic()
        for text, voice in zip(said, audio):
            heard, _ = asr.transcribe(condition(name, crng, voice), opts)
            e = wer_counts(words(text), words(heard))
            errors += e
            if e and len(examples) < 4:
                examples.append({"said": text, "heard": heard})
        named = []
        for text, voice in zip(other, other_audio):
            heard, _ = asr.transcribe(condition(name, crng, voice), opts)
            if heard_as_name([sc.NAME.lower()], heard):
                named.append({"said": text, "heard": heard})
        out["conditions"][name] = {"wer": round(errors / sum(len(words(t)) for t in said), 4), "examples": examples,
                                   "name_heard": round(len(named) / max(1, ignored), 4), "name_heard_examples": named[:6]}
        print(f"{name}: WER {out['conditions'][name]['wer']:.3f}, name heard in {len(named)}/{ignored} to ignore "
              f"({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", help="a whisper-asr bundle (edge-export whisper, or a responder's asr folder)")
    ap.add_argument("--n", type=int, default=80, help="utterances per condition")
    ap.add_argument("--ignored", type=int, default=80, help="utterances to ignore per condition (name_heard)")
    ap.add_argument("--pad-seconds", type=float, default=None, help="Whisper's padding (default AsrOptions')")
    ap.add_argument("--dereverb-taps", type=int, default=0, help="Whisper hears each utterance dereverberated (AsrOptions.dereverb_taps)")
    ap.add_argument("--out", help="write the report (JSON) here")
    a = ap.parse_args(argv)
    report = run(a.bundle, a.n, pad_seconds=a.pad_seconds, ignored=a.ignored, dereverb_taps=a.dereverb_taps)
    text = json.dumps(report, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(json.dumps({k: {"wer": v["wer"], "name_heard": v["name_heard"]} for k, v in report["conditions"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Acceptance evaluation of a trained bundle, through the runtime itself (``Listener``, the same
threads, queues and decide-respond loop as ``edge-listen --fast``), on held-out streams.

    edge-train-eval BUNDLE [--streams N] [--out report.json]

Sets (all with held-out voices: flite and festival kal, never heard in training; sounds from
seeds no training stream used):

- ``voices``: training wording, one set per ability (assistant, alerts, transcribe);
- ``wording``: held-out templates, slot values, wake phrasings, near misses and unknown requests;
- ``wording2``: the second held-out wording (session 35: other request templates and unknown
  requests, the same held-out values, wake phrasings, near misses and other speech);
- ``real-assistant``, ``real-alerts``, ``real-transcribe``: the reserved real recordings (a real
  speaker, real sounds: ``real_audio.py``), asked for by name with ``--sets``; evaluation only;
- ``alerts-real-negatives``: alert streams whose unwatched sounds are mostly recordings of real
  sounds from unreserved packages (the fifth of them no training stream uses), for choosing
  between models where the reserved set may not be used; asked for by name.

``--training-voices`` builds the same sets in training voices instead (a diagnostic: how much of
an error rate is the unseen voices and how much the model itself).

Scoring, per stream, from the events the runtime emits:

- a response is *matched* to the first unanswered event that asked for one if it starts inside
  that event's window (speech: from its start to 2 s after it ends; a sound: from its onset to
  2.5 s after); anything else is a *false response*, counted by what was heard then
  (``false_by_cause``: a repeat, an unwatched sound, a distractor, other speech, background);
- recall = matched / events that asked for a response; correctness = matched with the expected
  intent and slots: the reply fits the same reply template as the expected one with the same
  slot values, read as a recogniser would write them (case, spaces and hyphens aside, numbers
  as digits, "a" as one: "backyard" = "back yard", "one minute and a half" = "a minute and a
  half"); replies of no template (alerts, the honest answer, transcripts) must match exactly.
  ``exact`` counts the replies whose text is exactly the expected one;
- false responses per hour are counted over the audio that asked for no response;
- response latency = (decision chunk end - utterance end or sound onset) + the chunk's measured
  compute + first token time: the wait for the chunk to fill is included;
- transcription WER over matched utterances (normalised: lower case, no punctuation).
- ``confidence``: for correct, wrong and false responses, the spread of each response's lowest
  chosen-token probability (``confidence`` in ``response.end``): whether a threshold could tell
  a wrong answer from a right one.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from edge_runtime.responder import in_digits

from . import real_audio
from . import streams as st
from .scenarios import SOUND_CLASSES

SETS = {  # name: (wording split, mode, kinds override)
    "assistant": ("train", "assistant", None),
    "alerts": ("train", "alerts", None),
    "transcribe": ("train", "transcribe", None),
    "assistant-wording": ("heldout", "assistant", None),
    "assistant-wording2": ("heldout2", "assistant", None),  # the second held-out wording (scenarios.INTENTS_FRESH)
    # alert streams whose negatives are recordings of real sounds from unreserved packages, the fifth
    # held out from training (real_audio.training_sounds("heldout")): for choosing, never the reserved ones
    "alerts-real-negatives": ("heldout", "alerts", {"watched": 0.35, "real_sound": 0.35, "alert_sound": 0.1,
                                                    "command": 0.08, "other_speech": 0.12}),
    # the reserved real recordings (real_audio.py; evaluation only)
    **{name: ("real", mode, None) for name, mode in real_audio.SETS.items()},
}
# the sets a plain run scores; the others need Debian packages of recordings and are asked for by name
DEFAULT_SETS = [name for name, (split, _, kinds) in SETS.items() if split != "real" and "real_sound" not in (kinds or {})]
SEED_BASE = 500000  # acceptance streams
TUNING_SEED_BASE = 700000  # streams for choosing runtime settings (the same sets, other seeds)


def other_seeds(seed_base: int) -> int:
    """``seed_base`` for streams to check a choice on, or ValueError when its streams would be the
    acceptance streams (``build_set`` draws seed_base + 1000 * set + stream)."""
    if abs(seed_base - SEED_BASE) < 10000:
        raise ValueError(f"--seed-base {seed_base}: the acceptance streams' seeds are {SEED_BASE}+; choose on other seeds")
    return seed_base


def norm(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def meaning(text: str) -> tuple | str:
    """A reply as (its template, its slot values as read), or its text when it fits no template."""
    text = text.strip()
    for i, form in enumerate(_reply_patterns()):
        m = form.fullmatch(text)
        if m:
            return (i, *("".join("1" if w in ("a", "one") else w for w in in_digits(" ".join(norm(v))).split())
                         for v in m.groups()))
    return text


@functools.lru_cache(maxsize=1)
def _reply_patterns() -> list:
    from edge_runtime.responder import reply_form

    from .scenarios import reply_forms
    return [reply_form(f) for f in reply_forms()]


def wer_counts(ref: list[str], hyp: list[str]) -> int:
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        prev, d = d, np.empty_like(d)
        d[0] = i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return int(d[-1])


PACE_BLOCK = 0.1  # seconds of audio per feed while the responder works (``run_listener(pace=True)``)


def run_listener(bundle, audio: np.ndarray, instruction: str, sensitivity: float = 0.5,
                 min_confidence: float = 0.0, responder=None, pace: bool = False, decider=None,
                 **loop_options) -> list[dict]:
    """The events of one stream through the Listener (``loop_options``: more LoopOptions fields).

    The stream is read as fast as the model goes, far faster than a microphone speaks; with
    ``pace`` (and a responder) it is fed in real time while the responder works, as a microphone
    would feed it, so the streaming model takes the CPU from Whisper and the LM only as much as it
    does on a live stream (at most 0.4 s of audio buffered and 2 chunks queued ahead of it).
    ``decider``: as Listener's (tests)."""
    from edge_runtime.listener import Listener, ListenerOptions
    from edge_runtime.loop import LoopOptions
    from edge_runtime.whisper_asr import SR  # a responder's rate

    events: list[dict] = []
    paced = pace and responder is not None
    opts = ListenerOptions(loop=LoopOptions(instruction=instruction, sensitivity=sensitivity,
                                            min_confidence=min_confidence, **loop_options), responder=responder,
                           **({"ring_seconds": 0.4, "max_backlog": 2} if paced else {}))
    with Listener(bundle, callback=events.append, feed_live=False, options=opts, decider=decider) as li:
        if paced:
            step = int(PACE_BLOCK * SR)
            for i in range(0, len(audio), step):
                if li.loop.worker.busy:
                    time.sleep(PACE_BLOCK)
                li.feed(audio[i : i + step])
        else:
            li.feed(audio)
        li.close_input()
        li.join(600)
    return events


def window_end(ev: dict) -> float:
    """The last stream time a response can start and still answer ``ev``."""
    return ev["end"] + 2.0 if ev["kind"] == "speech" else ev["start"] + 2.5


def score_stream(stream_meta: dict, events: list[dict]) -> dict:
    """Match responses to the events that asked for one (see the module docstring)."""
    stats = [e for e in events if e["type"] == "stats"]
    compute_s = (stats[-1].get("chunk_ms_p50") or 0.0) / 1000 if stats else 0.0
    resp = [e for e in events if e["type"] == "response.end"]
    wanted = [ev for ev in stream_meta["events"] if ev["response"] is not None]
    used = [False] * len(wanted)
    rows, false = [], []
    for r in resp:
        t = r["t"]
        hit = None
        for i, ev in enumerate(wanted):
            if used[i]:
                continue
            if ev["start"] <= t <= window_end(ev):
                hit = i
                break
        if hit is None:
            ev = event_at(stream_meta["events"], t)
            false.append({"t": t, "text": r["text"], "cause": false_cause(ev, wanted, used), "confidence": r.get("confidence"),
                          "what": ev["what"] if ev else None, "heard": r.get("heard"), "said_by": r.get("said_by")})
            continue
        used[hit] = True
        ev = wanted[hit]
        ref_t = ev["end"] if ev["kind"] == "speech" else ev["start"]
        lat = (t - ref_t) + compute_s + (r.get("first_token_ms") or 0.0) / 1000
        rows.append({"event": ev, "text": r["text"], "correct": meaning(r["text"]) == meaning(ev["response"]),
                     "exact": r["text"].strip() == ev["response"],
                     "latency_s": round(lat, 3), "confidence": r.get("confidence"), "heard": r.get("heard")})
    missed = [ev for i, ev in enumerate(wanted) if not used[i]]
    quiet_s = stream_meta["duration"] - sum(ev["end"] - ev["start"] for ev in wanted)
    return {"matched": rows, "missed": missed, "false": false, "wanted": len(wanted), "quiet_s": quiet_s}


MAX_FALSE_KEPT = 100  # false responses kept in a report, each with what was playing and what Whisper heard


def event_at(events: list[dict], t: float) -> dict | None:
    """What was heard when a response began: the latest event whose window (as for matching) holds ``t``."""
    return max((ev for ev in events if ev["start"] <= t <= max(window_end(ev), ev["end"])),
               key=lambda ev: ev["start"], default=None)


def false_cause(ev: dict | None, wanted: list[dict], used: list[bool]) -> str:
    """Why a false response began over ``ev`` (``event_at``): ``repeat`` (a second answer to an
    answered event), ``late`` (an answer to an event that was asked for, after its window),
    ``unwatched:CLASS``, ``distractor:CLASS``, ``speech:INTENT`` (other, near_miss, ...), or
    ``background`` (no event)."""
    if ev is None:
        return "background"
    if any(u and w is ev for w, u in zip(wanted, used)):
        return "repeat"
    if any(w is ev for w in wanted):  # asked for, but not answered in time: this answer came too late
        return "late"
    if ev["kind"] == "speech":
        return f"speech:{ev['meta'].get('intent', 'other')}"
    return f"{'unwatched' if ev['what'] in SOUND_CLASSES else 'distractor'}:{ev['what']}"


def spread(values: list) -> dict:
    """How many values there are and their 10th, 25th and 50th percentiles (None values left out)."""
    v = [x for x in values if x is not None]
    if not v:
        return {"n": 0}
    return {"n": len(v), **{f"p{q}": round(float(np.percentile(v, q)), 4) for q in (10, 25, 50)}}


def summarize(scored: list[dict], transcribe: bool = False) -> dict:
    rows = [r for s in scored for r in s["matched"]]
    wanted = sum(s["wanted"] for s in scored)
    false = sum(len(s["false"]) for s in scored)
    quiet_h = sum(s["quiet_s"] for s in scored) / 3600
    out = {"events": wanted, "recall": round(len(rows) / max(wanted, 1), 4),
           "false_responses": false, "quiet_hours": round(quiet_h, 3),
           "false_per_hour": round(false / max(quiet_h, 1e-9), 2),
           "latency_s_p50": round(float(np.median([r["latency_s"] for r in rows])), 3) if rows else None,
           "latency_s_p90": round(float(np.percentile([r["latency_s"] for r in rows], 90)), 3) if rows else None,
           "false_by_cause": dict(sorted(Counter(f["cause"] for s in scored for f in s["false"]).items())),
           "confidence": {"correct": spread([r["confidence"] for r in rows if r["correct"]]),
                          "wrong": spread([r["confidence"] for r in rows if not r["correct"]]),
                          "false": spread([f["confidence"] for s in scored for f in s["false"]])}}
    if transcribe:
        errs = sum(wer_counts(norm(r["event"]["response"]), norm(r["text"])) for r in rows)
        words = sum(len(norm(r["event"]["response"])) for r in rows)
        out["wer"] = round(errs / max(words, 1), 4)
        # the same with numbers written as digits on both sides ("seventy one" = "71"): Whisper
        # writes digits, the reference words, and that is not a recognition error
        digits = lambda text: in_digits(" ".join(norm(text))).split()  # noqa: E731
        errs = sum(wer_counts(digits(r["event"]["response"]), digits(r["text"])) for r in rows)
        out["wer_numbers_as_digits"] = round(errs / max(sum(len(digits(r["event"]["response"])) for r in rows), 1), 4)
        out["exact"] = round(sum(r["exact"] for r in rows) / max(len(rows), 1), 4)
        return out
    cats: dict[str, dict] = {}
    for s in scored:
        for ev, row in [*((r["event"], r) for r in s["matched"]), *((ev, None) for ev in s["missed"])]:
            names = [category(ev)] + ([f"sound:{ev['what']}"] if ev["kind"] == "sound" else [])
            for name in names:  # sounds: also per class
                c = cats.setdefault(name, {"events": 0, "matched": 0, "correct": 0, "exact": 0})
                c["events"] += 1
                c["matched"] += row is not None
                c["correct"] += bool(row and row["correct"])
                c["exact"] += bool(row and row["exact"])
    for k, c in cats.items():
        c["recall"] = round(c["matched"] / c["events"], 4)
        c["correct_of_events"] = round(c["correct"] / c["events"], 4)
    out["by_category"] = dict(sorted(cats.items()))
    return out


def category(ev: dict) -> str:
    if ev["kind"] == "sound":
        return "sound"
    return "unknown" if ev["meta"].get("intent") == "unknown" else "command"


def build_set(name: str, n: int, seconds: float, seed_base: int = SEED_BASE, voices: str = "heldout") -> list[st.Stream]:
    split, mode, kinds = SETS[name]
    base = seed_base + 1000 * list(SETS).index(name)
    if split == "real":
        return [real_audio.make_stream(base + i, mode, seconds) for i in range(n)]
    sp = st.Speaker()
    return [st.make_stream(base + i, split, seconds, mode=mode, speaker=sp, voice_split=voices, kinds=kinds)
            for i in range(n)]


def evaluate_bundle(bundle_path: str, n: int = 12, seconds: float = 60.0, sets: list[str] | None = None,
                    keep_examples: int = 6, sensitivity: float = 0.5, seed_base: int = SEED_BASE,
                    voices: str = "heldout", min_confidence: float = 0.0, responder: str | None = None,
                    pace: bool = True) -> dict:
    """``responder``: a responder bundle (edge-export responder) that writes the replies to speech;
    ``pace``: the streams are fed in real time while it works (``run_listener``)."""
    from edge_runtime.model import Bundle

    bundle = Bundle(bundle_path)
    if responder is not None:
        from edge_runtime.responder import Responder
        from edge_runtime.sessions import SessionConfig

        responder_path, responder = responder, Responder(responder, SessionConfig(threads=2))
    report = {"bundle": str(bundle_path), "streams_per_set": n, "stream_seconds": seconds,
              "sensitivity": sensitivity, "seed_base": seed_base, "voices": voices,
              "min_confidence": min_confidence, "responder": responder_path if responder else None,
              "paced": bool(pace and responder),
              "correct_means": "intent and slots (by_category: correct; exact: the exact text)", "sets": {}}
    for name in sets or DEFAULT_SETS:
        t0 = time.monotonic()
        streams = build_set(name, n, seconds, seed_base, voices)
        scored, examples, false, stage_ms = [], [], [], {"asr_ms": [], "lm_ms": []}
        for i, s in enumerate(streams):
            evs = run_listener(bundle, s.audio, s.instruction, sensitivity, min_confidence, responder, pace)
            for e in evs:
                for k in stage_ms if e.get("heard") is not None else ():
                    stage_ms[k].append(e[k])
            sc_ = score_stream(s.to_dict(), evs)
            scored.append(sc_)
            for r in sc_["matched"]:
                if not r["correct"] and len(examples) < keep_examples:
                    examples.append({"said": r["event"]["what"], "expected": r["event"]["response"], "got": r["text"],
                                     "heard": r["heard"]})
            false += [{"stream": i, **f} for f in sc_["false"]]
        summary = summarize(scored, transcribe=SETS[name][1] == "transcribe")
        summary["audio_hours"] = round(sum(s.duration for s in streams) / 3600, 3)
        summary["eval_s"] = round(time.monotonic() - t0, 1)
        if responder is not None:  # per answer it wrote or withheld: Whisper's and the LM's time
            summary["responder"] = {"answers": len(stage_ms["asr_ms"]),
                                    **{f"{k}_p{q}": round(float(np.percentile(v, q)), 1) if v else None
                                       for k, v in stage_ms.items() for q in (50, 90)}}
        summary["error_examples"] = examples
        summary["false_examples"] = false[:MAX_FALSE_KEPT]
        report["sets"][name] = summary
        print(f"{name}: {json.dumps({k: v for k, v in summary.items() if not k.endswith('_examples')})}", file=sys.stderr)
    return report


RULE_SETS = ("alerts", "assistant", "assistant-wording")


def choice_score(sets: dict) -> tuple[int, dict]:
    """The rule that chooses between trained stages (fixed in stage 9, before its tuning runs):
    correct alerts + correct requests + honest unknown requests, in both wordings, minus the
    false responses of those three sets. ``sets`` is a report's ``sets`` (or several merged)."""
    missing = [name for name in RULE_SETS if name not in sets]
    if missing:
        raise ValueError(f"the choice rule needs the sets {', '.join(missing)} in the reports given")
    parts = {"alerts_correct": sets["alerts"]["by_category"]["sound"]["correct"],
             "alerts_false": sets["alerts"]["false_responses"]}
    for name in RULE_SETS[1:]:
        cats = sets[name]["by_category"]
        parts[f"{name}_requests"] = cats["command"]["correct"]
        parts[f"{name}_unknown"] = cats["unknown"]["correct"]
        parts[f"{name}_false"] = sets[name]["false_responses"]
    return sum(-v if k.endswith("_false") else v for k, v in parts.items()), parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-train-eval", description="Evaluate a trained bundle on held-out streams.")
    ap.add_argument("bundle", nargs="?", default=None, help="bundle folder (default: the shipped default bundle)")
    ap.add_argument("--streams", type=int, default=12, help="streams per set")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each stream")
    ap.add_argument("--sets", default=",".join(DEFAULT_SETS),
                    help=f"comma-separated: {', '.join(SETS)} (default: {', '.join(DEFAULT_SETS)}; the others need "
                         "Debian packages of recordings: real_audio.py)")
    ap.add_argument("--sensitivity", type=float, default=0.5, help="as edge-listen --sensitivity")
    ap.add_argument("--tuning", action="store_true",
                    help=f"streams from the tuning seeds ({TUNING_SEED_BASE}+), not the acceptance seeds: for choosing settings")
    ap.add_argument("--seed-base", type=int, metavar="N",
                    help="streams from seeds N+ (say 900000: neither the tuning nor the acceptance streams): to check a "
                         "choice made on the tuning seeds")
    ap.add_argument("--examples", type=int, default=6, help="wrong answers kept per set in the report (with what Whisper heard); every false "
                                                         "response is kept (false_examples, up to 100)")
    ap.add_argument("--training-voices", action="store_true",
                    help="a diagnostic: the same sets spoken in training voices (espeak-ng, festival ked), not held-out ones")
    ap.add_argument("--min-confidence", "--withhold-below", type=float, default=0.0, metavar="P",
                    help="as edge-listen --min-confidence: responses with confidence under P are withheld (default 0)")
    ap.add_argument("--responder", metavar="DIR", help="as edge-listen --responder: a responder bundle writes the replies to speech")
    ap.add_argument("--unpaced", action="store_true",
                    help="with --responder: read the streams as fast as the model goes even while the responder works "
                         "(before session 19: Whisper and the LM then share the CPU with a model running flat out)")
    ap.add_argument("--out", help="write the report (JSON) here")
    ap.add_argument("--score", nargs="+", metavar="REPORT",
                    help="evaluate nothing: print the choice rule (and transcription WER) of these reports' sets")
    args = ap.parse_args(argv)
    if args.score:
        sets = {}
        for path in args.score:
            try:
                sets.update(json.loads(Path(path).read_text())["sets"])
            except (OSError, ValueError, KeyError) as e:
                ap.error(f"{path}: not an edge-train-eval report ({e})")
        try:
            total, parts = choice_score(sets)
        except ValueError as e:
            ap.error(str(e))
        wer = sets.get("transcribe", {}).get("wer")
        print(json.dumps({"score": total, **parts, **({"transcribe_wer": wer} if wer is not None else {})}))
        return 0
    if args.bundle is None:
        from edge_runtime.listener import DEFAULT_BUNDLE

        args.bundle = str(DEFAULT_BUNDLE)
    seed_base = TUNING_SEED_BASE if args.tuning else SEED_BASE
    if args.seed_base is not None:
        if args.tuning:
            ap.error("give --tuning or --seed-base, not both")
        try:
            seed_base = other_seeds(args.seed_base)
        except ValueError as e:
            ap.error(str(e))
    unknown = [name for name in args.sets.split(",") if name not in SETS]
    if unknown:
        ap.error(f"--sets: unknown set {', '.join(unknown)} (sets: {', '.join(SETS)})")
    report = evaluate_bundle(args.bundle, args.streams, args.seconds, args.sets.split(","), keep_examples=args.examples,
                             sensitivity=args.sensitivity, seed_base=seed_base,
                             voices="train" if args.training_voices else "heldout", min_confidence=args.min_confidence,
                             responder=args.responder, pace=not args.unpaced)
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

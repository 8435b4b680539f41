"""How narrowly does the default model miss the speech it does not answer? (responder ``rescue_above``)

Runs the tuning streams (seeds 700000+, never the acceptance streams) of the speech sets through
the Listener with a ``decision`` event per call (p(<respond>)), no responder, and counts per piece
of speech the highest p from its start to 1.2 s after its end: addressed utterances the model did
not answer against speech not addressed to it, above each threshold.

    python -m edge_bench.near_misses edge_runtime/bundles/default --out RUN.pkl   # about 2.5 min
    python -m edge_bench.near_misses --score RUN.pkl
"""

from __future__ import annotations

import argparse
import collections
import json
import pickle
import sys

SETS = ("assistant", "assistant-wording")
THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


def collect(bundle_path: str, n: int = 24) -> dict:
    from edge_models import evaluate as E
    from edge_runtime.listener import Listener, ListenerOptions
    from edge_runtime.loop import LoopOptions
    from edge_runtime.model import Bundle

    b, out = Bundle(bundle_path), {}
    for name in SETS:
        out[name] = []
        for s in E.build_set(name, n, 60.0, E.TUNING_SEED_BASE):
            events: list[dict] = []
            opts = ListenerOptions(loop=LoopOptions(instruction=s.instruction), verbose=True)
            with Listener(b, callback=events.append, feed_live=False, options=opts) as li:
                li.feed(s.audio)
                li.close_input()
                li.join(600)
            out[name].append((s.to_dict(), events))
    return out


def near(meta: dict, events: list[dict], after: float = 1.2) -> list[tuple[str, bool, float]]:
    """(kind, answered, highest p) per piece of speech: kind ``addressed`` or its intent (other, near_miss)."""
    decisions = [(e["t"], e["p_respond"]) for e in events if e["type"] == "decision"]
    said = [e["t"] for e in events if e["type"] == "response.end"]
    rows = []
    for ev in meta["events"]:
        if ev["kind"] != "speech":
            continue
        p = max([p for t, p in decisions if ev["start"] < t <= ev["end"] + after], default=0.0)
        answered = any(ev["start"] <= t <= ev["end"] + 2.0 for t in said)
        rows.append(("addressed" if ev["meta"].get("addressed") else ev["meta"].get("intent", "other"), answered, p))
    return rows


def score(dump: dict) -> dict:
    out = {}
    for name, items in dump.items():
        rows = [r for meta, events in items for r in near(meta, events)]
        missed = [p for kind, answered, p in rows if kind == "addressed" and not answered]
        other = [p for kind, answered, p in rows if kind != "addressed" and not answered]
        out[name] = {"addressed_missed": len(missed), "not_addressed_unanswered": len(other),
                     "by_cause": dict(collections.Counter(k for k, a, _ in rows if not a)),
                     **{f"p>={t}": {"addressed_missed": sum(p >= t for p in missed), "not_addressed": sum(p >= t for p in other)}
                        for t in THRESHOLDS}}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("--out", help="with BUNDLE: where to keep the run (pickle)")
    ap.add_argument("--score", metavar="RUN", help="count a kept run")
    a = ap.parse_args(argv)
    if a.score:
        with open(a.score, "rb") as f:
            print(json.dumps(score(pickle.load(f)), indent=1))
        return 0
    if not (a.bundle and a.out):
        ap.error("give BUNDLE --out RUN, or --score RUN")
    with open(a.out, "wb") as f:
        pickle.dump(collect(a.bundle), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Do backlogs cost answers? The alert tuning streams with busy processes beside the runtime.

With the cores shared, chunks queue for the decoder. ``decide_each_up_to`` 1 prefills every
backlog in one call and decides once, at its last chunk; the default (4) decides short backlogs
chunk by chunk. This runs the 36 alert tuning streams (seeds 700000+, never the acceptance
streams) through the Listener once per setting, with ``--busy`` spinning processes started first:

    python -m edge_bench.backlog edge_runtime/bundles/default --each 1,4 --busy 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time


def _spin() -> None:
    while True:
        pass


def run(bundle_path: str, each: int, n: int = 36) -> dict:
    from edge_models import evaluate as E
    from edge_runtime.model import Bundle

    b = Bundle(bundle_path)
    scored, backlog = [], []
    t0 = time.monotonic()
    for s in E.build_set("alerts", n, 60.0, E.TUNING_SEED_BASE):
        events = E.run_listener(b, s.audio, s.instruction, decide_each_up_to=each)
        backlog.append(max([e.get("backlog_max", 0) for e in events if e["type"] == "stats"] or [0]))
        scored.append(E.score_stream(s.to_dict(), events))
    r = E.summarize(scored)
    backlog.sort()
    return {"decide_each_up_to": each, "correct": r["by_category"]["sound"]["correct"], "events": r["events"],
            "recall": r["recall"], "false": r["false_responses"], "backlog_max_p50": backlog[len(backlog) // 2],
            "backlog_max": backlog[-1], "seconds": round(time.monotonic() - t0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--each", default="1,4", help="decide_each_up_to values, comma-separated")
    ap.add_argument("--busy", type=int, default=1, help="spinning processes beside the runtime")
    ap.add_argument("--streams", type=int, default=36)
    a = ap.parse_args(argv)
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(a.busy)]
    for p in spinners:
        p.start()
    try:
        for each in (int(x) for x in a.each.split(",")):
            print(json.dumps(run(a.bundle, each, a.streams)), flush=True)
    finally:
        for p in spinners:
            p.terminate()
    return 0


if __name__ == "__main__":
    sys.exit(main())

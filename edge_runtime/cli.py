"""edge-listen: listen to a microphone, a file or stdin and respond when the model decides to.

Exit codes: 0 the stream ended (end of input, or stopped by SIGINT/SIGTERM after a final `end`
event); 1 runtime failure; 2 bad usage, bad input or a bad bundle; 3 no microphone.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

EXIT_OK, EXIT_RUNTIME, EXIT_INPUT, EXIT_NO_MIC = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="edge-listen", description="Run an audio interaction model on a live stream.",
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--bundle", help="bundle folder or name (looked up in $EDGE_RUNTIME_BUNDLES, ~/.cache/edge-runtime/bundles "
                    "and the package; default: the bundle installed with the package)")
    ap.add_argument("--input", help="audio file (WAV/FLAC/OGG), or - for raw PCM on stdin; default: the microphone")
    ap.add_argument("--fast", action="store_true", help="replay the file as fast as possible (same threads and queues)")
    ap.add_argument("--speed", type=float, default=1.0, help="real-time replay speed factor for files (default 1)")
    ap.add_argument("--device", help="microphone by index or name substring")
    ap.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    ap.add_argument("--rate", type=int, default=16000, help="stdin sample rate in Hz (with --input -)")
    ap.add_argument("--channels", type=int, default=1, help="stdin channels (with --input -)")
    ap.add_argument("--format", default="s16le", choices=["s16le", "f32le"], help="stdin sample format")
    ap.add_argument("--provider", default="cpu", help="cpu, cuda, tensorrt, openvino, qnn, coreml, dml or auto")
    ap.add_argument("--strict-provider", action="store_true", help="fail instead of falling back to CPU")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per session (default 1)")
    ap.add_argument("--decoder-threads", type=int, default=None, help="intra-op threads of the decoder (default --threads)")
    ap.add_argument("--instruction", help="what the model should do (default: the bundle's)")
    ap.add_argument("--sensitivity", type=float, default=0.5, help="0..1: respond when p(respond) >= 1 - sensitivity")
    ap.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                    help="0..1: say a response only if every token it chose had probability >= P; the rest are "
                         "withheld (a response.withheld event). Default 0: say everything, token by token")
    ap.add_argument("--responder", metavar="DIR", help="a responder bundle (edge-export responder): Whisper + a pretrained "
                    "LM write the reply to speech after the model decides to respond, and answer speech it passed "
                    "over narrowly (its policy: edge-export info DIR)")
    ap.add_argument("--max-response-tokens", type=int, default=48)
    ap.add_argument("--repeat-gap", type=float, default=0.3, metavar="S",
                    help="a response the same as one said in the last 10 s is withheld unless S seconds of quiet came "
                         "between: the doorbell that rings on is announced once (default 0.3; 0: never withheld)")
    ap.add_argument("--same-sound", type=float, default=0.7, metavar="C",
                    help="an alert said in the last 10 s is not said again while the same tones sound (their spectral "
                         "peaks alike to cosine C), pauses or not: a smoke alarm's beep groups (default 0.7; 0: off)")
    ap.add_argument("--line-pause", type=float, default=0.5, metavar="S",
                    help="with --responder, under transcription: a line waits until the speech has paused S seconds, "
                         "and the model's lines meanwhile are one line of the whole utterance (default 0.5; 0: at once)")
    ap.add_argument("--line-wait", type=float, default=1.2, metavar="S",
                    help="with --line-pause: a line waits at most S seconds after the model wrote it (default 1.2)")
    ap.add_argument("--beam", type=int, default=1, help="whisper-asr bundles: beam size of final transcripts (default 1: greedy)")
    ap.add_argument("--dereverb-taps", type=int, default=0, metavar="N",
                    help="whisper-asr bundles: dereverberate each segment first (WPE with N taps; 20 for a room; default 0: off)")
    ap.add_argument("--context", type=int, default=None, help="KV cache tokens (default: the bundle's max)")
    ap.add_argument("--no-fifo", action="store_true", help="decode chunk by chunk instead of prefilling the backlog at once")
    ap.add_argument("--vad-gate", choices=["auto", "on", "off"], default="auto", help="skip the encoder on quiet chunks")
    ap.add_argument("--stats-interval", type=float, default=60.0, help="stream seconds between stats events")
    ap.add_argument("--jsonl", action="store_true", help="events as JSON lines on stdout")
    ap.add_argument("--verbose", action="store_true", help="also a decision event per decoder call")
    ap.add_argument("--log-level", default="WARNING")
    return ap


def _fail(code: int, msg: str) -> int:
    print(f"edge-listen: error: {msg}", file=sys.stderr)
    return code


def _make_source(args):
    from .audio import FileSource, RawSource

    if args.input == "-":
        return RawSource(None, args.rate, args.channels, args.format)
    if args.input:
        return FileSource(args.input, fast=args.fast, speed=args.speed)
    from .mic import MicSource

    return MicSource(args.device)


class ConsoleView:
    """Readable output: responses as they stream, warnings, a short summary at the end."""

    def __init__(self, out=sys.stdout, err=sys.stderr):
        self.out, self.err = out, err

    def __call__(self, ev: dict) -> None:
        k = ev["type"]
        if k == "ready":
            print(f"listening with {ev['bundle']} ({', '.join(ev['providers'])}, {ev['kv_layout']} KV) to "
                  f"{ev['source']['name']}; instruction: {ev['instruction']!r}"
                  + (f"; responder {ev['responder']}" if ev.get("responder") else ""), file=self.err)
        elif k == "response.start":
            print(f"[{ev['t']:8.1f}s] ", end="", file=self.out, flush=True)
        elif k == "response.delta":
            print(ev["text"], end="", file=self.out, flush=True)
        elif k == "response.end":
            by = f", by the responder, which heard {ev['heard']!r}" if ev.get("said_by") == "responder" else ""
            by += ", a second chance" if "rescue" in ev else ""
            print(f"   ({ev['first_token_ms']} ms to first token{by})", file=self.out, flush=True)
        elif k == "transcript":
            print(f"[{ev['t_start']:8.1f}s] {ev['text']}", file=self.out, flush=True)
        elif k == "response.withheld":
            why = f"heard {ev['heard']!r}" if ev.get("reason") == "responder" else f"confidence {ev['confidence']}"
            print(f"[{ev['t']:8.1f}s] (withheld, {why}: {ev['text']!r})", file=self.err)
        elif k == "decision":
            print(f"[{ev['t']:8.1f}s] p(respond) {ev['p_respond']:.3f}", file=self.err)
        elif k == "warning":
            print(f"warning: {ev['message']}", file=self.err)
        elif k == "stats":
            print(f"stats at {ev['t']:.1f}s: {ev['chunks']} chunks, chunk p50 {ev['chunk_ms_p50']} ms, p99 "
                  f"{ev['chunk_ms_p99']} ms, backlog max {ev['backlog_max']}, dropped {ev['dropped_ms']} ms, "
                  f"RSS {ev['rss_mb']} MB", file=self.err)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .audio import AudioInputError
    from .bundle import BundleError
    from .sessions import ProviderError

    if args.list_devices:
        from .mic import list_devices

        try:
            for d in list_devices():
                print(f"{d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['rate']:.0f} Hz)")
        except AudioInputError as e:
            return _fail(EXIT_NO_MIC, str(e))
        return EXIT_OK
    try:
        from .listener import Listener, ListenerOptions
        from .loop import LoopOptions
        from .mic import NoMicrophoneError
        from .sessions import SessionConfig

        opts = ListenerOptions(
            loop=LoopOptions(instruction=args.instruction, sensitivity=args.sensitivity, min_confidence=args.min_confidence,
                             max_response_tokens=args.max_response_tokens, fifo=not args.no_fifo, context=args.context,
                             repeat_gap=args.repeat_gap, same_sound=args.same_sound,
                             line_pause=args.line_pause, line_wait=args.line_wait),
            session=SessionConfig(provider=args.provider, threads=args.threads, strict=args.strict_provider),
            decoder_threads=args.decoder_threads, stats_interval=args.stats_interval,
            vad_gate={"auto": None, "on": True, "off": False}[args.vad_gate], verbose=args.verbose,
            responder=args.responder, asr_beam=args.beam, asr_dereverb_taps=args.dereverb_taps)
        try:
            source = _make_source(args)
        except NoMicrophoneError as e:
            return _fail(EXIT_NO_MIC, f"{e}" if "--input" in str(e) else f"{e}; pass --input FILE")
        listener = Listener(args.bundle, source, opts)
    except (BundleError, AudioInputError, ProviderError, ValueError) as e:
        return _fail(EXIT_INPUT, str(e))

    def on_signal(signum, frame):
        listener.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    show = (lambda ev: print(json.dumps(ev), flush=True)) if args.jsonl else ConsoleView()
    failed = False
    try:
        for ev in listener.events():
            show(ev)
            if ev["type"] == "warning" and ev["message"].startswith(("encoder failed", "decoder failed")):
                failed = True
    finally:
        listener.stop()
        listener.join(2.0)
    return EXIT_RUNTIME if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

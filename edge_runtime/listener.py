"""Threads and the public API: :class:`Listener` (sync) and :class:`AsyncListener` (asyncio).

    source --(native frames)--> RingBuffer --> encoder worker --(Chunk)--> ChunkQueue --> decoder worker --> events

The encoder never waits for the decoder (DESIGN section 4): chunks queue up while the decoder
generates, and the decoder prefills the whole backlog in one call when it is free (FIFO).
onnxruntime releases the GIL, so the two workers overlap on two cores.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .audio import FeedSource, Resampler, RingBuffer, Source, to_mono
from .loop import Chunk, Decider, DecisionLoop, LoopOptions
from .model import Bundle, EncoderStream
from .sessions import SessionConfig
from .vad import GateOptions, QuietGate

log = logging.getLogger(__name__)

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "bundles" / "default"


def bundle_dirs() -> list[Path]:
    """Where bundles are looked up by name: $EDGE_RUNTIME_BUNDLES (os.pathsep-separated), the
    user cache, and the bundles installed with the package."""
    env = [Path(p) for p in os.environ.get("EDGE_RUNTIME_BUNDLES", "").split(os.pathsep) if p]
    return env + [Path.home() / ".cache" / "edge-runtime" / "bundles", DEFAULT_BUNDLE.parent]


def resolve_bundle(spec: str | Path | None) -> Path:
    """A bundle folder from a path, a name (see bundle_dirs), or None for the default bundle."""
    if spec is None:
        return default_bundle_path()
    p = Path(spec)
    if p.exists() or os.sep in str(spec) or str(spec).startswith("."):
        return p
    for d in bundle_dirs():
        if (d / str(spec) / "manifest.json").is_file():
            return d / str(spec)
    from .bundle import BundleError

    raise BundleError(f"{spec}: no such bundle folder, and no bundle of that name in {', '.join(map(str, bundle_dirs()))}")


def default_bundle_path() -> Path:
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        from .bundle import BundleError

        raise BundleError(f"{DEFAULT_BUNDLE}: no default bundle is installed with this package; pass --bundle DIR")
    return DEFAULT_BUNDLE


@dataclasses.dataclass(frozen=True)
class ListenerOptions:
    """loop: the decide-respond options. session: provider and threads.
    decoder_threads: intra-op threads of the decoder session (None: session.threads).
    stats_interval: stream seconds between ``stats`` events. ring_seconds: capture buffer length.
    max_backlog: chunks that may wait for the decoder; beyond it the oldest are dropped (live
    sources) or the reader waits (files, stdin). vad_gate: skip the encoder on chunks whose
    whole window is quiet (None: as the bundle's manifest says). verbose: emit a ``decision`` event per decoder call.
    responder: a responder bundle (folder, or a loaded Responder): Whisper + a pretrained LM write the reply to speech
    after the model decides to respond (edge_runtime/responder.py); responder_threads: its
    sessions' intra-op threads (it runs in bursts, on its own thread beside the decoder worker).
    asr_beam: with a ``whisper-asr`` bundle, the beam size of final transcripts (1: greedy);
    asr_dereverb_taps: ... each segment dereverberated before Whisper hears it (AsrOptions.dereverb_taps; 0: off)."""

    loop: LoopOptions = LoopOptions()
    session: SessionConfig = SessionConfig()
    decoder_threads: int | None = None
    stats_interval: float = 60.0
    ring_seconds: float = 30.0
    max_backlog: int = 150
    vad_gate: bool | None = None
    gate: GateOptions = GateOptions()
    verbose: bool = False
    responder: object = None  # str | Path | edge_runtime.responder.Responder
    responder_threads: int = 2
    asr_beam: int = 1
    asr_dereverb_taps: int = 0

    def __post_init__(self) -> None:
        if self.stats_interval <= 0 or self.ring_seconds <= 0 or self.max_backlog < 1:
            raise ValueError("stats_interval and ring_seconds must be > 0, max_backlog >= 1")
        if self.asr_beam < 1:
            raise ValueError(f"--beam must be at least 1 (ListenerOptions.asr_beam; got {self.asr_beam})")
        if self.asr_dereverb_taps < 0:
            raise ValueError(f"--dereverb-taps must be 0 (off) or more (ListenerOptions.asr_dereverb_taps; got {self.asr_dereverb_taps})")


class ChunkQueue:
    """Bounded FIFO between the workers. ``take`` returns the whole backlog (FIFO) or one chunk."""

    END = object()

    def __init__(self, maxlen: int):
        self._q: collections.deque = collections.deque()
        self.maxlen, self.max_seen, self.dropped = maxlen, 0, 0
        self._cv = threading.Condition()

    def put(self, item, block: bool, stop: threading.Event) -> None:
        with self._cv:
            while block and len(self._q) >= self.maxlen and not stop.is_set():
                self._cv.wait(0.05)
            if len(self._q) >= self.maxlen and item is not self.END:  # END never displaces audio
                self._q.popleft()
                self.dropped += 1
            self._q.append(item)
            self.max_seen = max(self.max_seen, sum(1 for x in self._q if x is not self.END))
            self._cv.notify_all()

    def take(self, all_of_them: bool, timeout: float) -> list | None:
        """Chunks ready now ([] on timeout); None when END is next."""
        with self._cv:
            if not self._q:
                self._cv.wait(timeout)
            out = []
            while self._q and self._q[0] is not self.END and (all_of_them or not out):
                out.append(self._q.popleft())
            if not out and self._q and self._q[0] is self.END:
                return None
            self._cv.notify_all()
            return out

    def __len__(self) -> int:
        return len(self._q)


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def _pct(samples, q: float) -> float | None:
    v = samples.values()
    return round(float(np.percentile(v, q)), 3) if len(v) else None


class Listener:
    """Listen to a source with a bundle; iterate over events (or get them through ``callback``).

    ``source=None`` means the embedder feeds PCM itself with :meth:`feed` (at the bundle's rate
    unless ``feed_rate`` is given). Use as a context manager, or call start() / stop().
    """

    def __init__(self, bundle: str | Path | Bundle | None = None, source: Source | None = None,
                 options: ListenerOptions = ListenerOptions(), callback: Callable[[dict], None] | None = None,
                 decider: Decider | None = None, feed_rate: int | None = None, feed_live: bool = True):
        self.options = options
        self._early_warnings: list[str] = []
        self.asr = None
        if isinstance(bundle, Bundle):
            self.bundle = bundle
        elif _kind(resolve_bundle(bundle)) == "whisper-asr":
            return self._init_asr(resolve_bundle(bundle), source, callback, feed_rate, feed_live)
        else:
            self.bundle = Bundle(resolve_bundle(bundle), options.session, warn=self._early_warnings.append,
                                 decoder_threads=options.decoder_threads)
        m = self.bundle.manifest
        self.source = source or FeedSource(feed_rate or m.sample_rate, live=feed_live)
        self._callback = callback
        self._events: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._chunks = ChunkQueue(options.max_backlog)
        self._threads: list[threading.Thread] = []
        self._decider = decider
        self.loop: DecisionLoop | None = None
        self.started = self.finished = False
        self.nonfinite_samples = 0
        gate_on = options.vad_gate if options.vad_gate is not None else bool(m.raw.get("vad_gate", False))
        self._gate = QuietGate(m.sample_rate, options.gate) if gate_on else None
        self.gated_chunks = 0
        self._t_stream = 0.0
        self._responder = None
        if options.responder is not None:
            from .responder import Responder

            if m.sample_rate != 16000:
                raise ValueError(f"a responder needs a 16 kHz bundle; {m.name} runs at {m.sample_rate} Hz")
            r = options.responder  # a folder, or a Responder already loaded (shared between streams)
            self._responder = Responder(resolve_bundle(r), dataclasses.replace(options.session, threads=options.responder_threads)) \
                if isinstance(r, (str, Path)) else r  # a folder or a name, as for bundles

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "Listener":
        if self.started:
            return self
        self.started = True
        info = self.source.info
        self.ring = RingBuffer(max(1, int(self.options.ring_seconds * info.rate)), info.channels)
        if self.asr is not None:
            return self._start_asr()
        self.loop = DecisionLoop(self.bundle, self.options.loop, self._emit, self._decider,
                                 should_stop=self._stop.is_set, verbose=self.options.verbose, responder=self._responder)
        m = self.bundle.manifest
        self._emit({"type": "ready", "bundle": m.name, "path": str(m.root), "providers": self.bundle.providers_in_use,
                    "chunk_ms": m.chunk_ms, "sample_rate": m.sample_rate, "decoder": self.bundle.decoder_file.file,
                    "kv_layout": self.bundle.decoder_file.kv_layout, "instruction": self.loop.instruction,
                    "source": {"name": info.name, "rate": info.rate, "channels": info.channels, "live": info.live},
                    "fifo": self.options.loop.fifo, "vad_gate": self._gate is not None,
                    "responder": self._responder.name if self._responder is not None else None})
        for w in self._early_warnings:
            self._emit({"type": "warning", "message": w, "t": 0.0})
        self._t_wall0 = time.monotonic()
        self._threads = [threading.Thread(target=self._encoder_worker, name="edge-encoder", daemon=True),
                         threading.Thread(target=self._decoder_worker, name="edge-decoder", daemon=True)]
        for t in self._threads:
            t.start()
        self.source.start(self.ring, self._stop)
        return self

    def stop(self) -> None:
        """Ask everything to stop (returns at once); the final ``stats`` and ``end`` follow."""
        self._stop.set()
        if hasattr(self, "ring"):
            self.ring.close()

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)
        self.source.join(0.5)

    def close_input(self) -> None:
        """For ``feed`` users: no more audio; process what was fed, then end."""
        if isinstance(self.source, FeedSource):
            self.source.close()

    def feed(self, pcm: np.ndarray) -> None:
        if not isinstance(self.source, FeedSource):
            raise RuntimeError("feed() needs a Listener created without a source")
        if not self.started:
            self.start()
        self.source.feed(pcm)

    def __enter__(self) -> "Listener":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.join(5.0)

    # ---------------------------------------------------------------- events

    def _emit(self, event: dict) -> None:
        if self._callback is not None:
            try:
                self._callback(event)
            except Exception:  # an embedder's bug must not kill the loop
                log.exception("event callback failed")
        else:
            self._events.put(event)

    def events(self, timeout: float | None = None) -> Iterator[dict]:
        """Events until ``end``; ``timeout`` seconds without one raises TimeoutError."""
        if not self.started:
            self.start()
        while True:
            try:
                ev = self._events.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no event for {timeout} s") from None
            yield ev
            if ev["type"] == "end":
                return

    def __iter__(self) -> Iterator[dict]:
        return self.events()

    def run(self) -> list[dict]:
        """Start, collect every event until ``end``, and return them (files, tests)."""
        return list(self.events())

    # ---------------------------------------------------------------- workers

    def _encoder_worker(self) -> None:
        m = self.bundle.manifest
        info = self.source.info
        resampler = Resampler(info.rate, m.sample_rate)
        enc = EncoderStream(self.bundle)
        chunk_n = m.chunk_samples
        tail = np.zeros(0, np.float32)  # resampled samples of the chunk in progress (for the gate)
        block = not info.live
        silence_embeds = None
        # A chunk skips the encoder only when its whole window (left context + chunk) is quiet: the
        # chunks right after a sound still see it in their left context and are encoded.
        span = -(-m.encoder.window_frames // m.encoder.chunk_frames)
        quiet_run = span  # the stream starts on a silent left context
        n_done = 0
        read_n = max(1, info.rate // 10)
        lag = 0 if info.rate == m.sample_rate else resampler.latency_in
        try:
            while not self._stop.is_set():
                # Wake once per chunk, not per capture block: ask for the frames that complete it.
                need = int(np.ceil((chunk_n - len(tail)) * info.rate / m.sample_rate)) + lag
                frames = self.ring.read(max(read_n, need), timeout=0.1, min_frames=max(1, need))
                eof = frames is None
                if eof:
                    x = resampler.flush()
                    partial = (len(tail) + len(x)) % chunk_n
                    if len(tail) + len(x) > 0 and partial:  # the last, partial chunk: pad it with silence
                        x = np.concatenate([x, np.zeros(chunk_n - partial, np.float32)])
                elif len(frames) == 0:
                    continue
                else:
                    mono = to_mono(frames)
                    bad = ~np.isfinite(mono)
                    if bad.any():
                        self._nonfinite(int(bad.sum()), n_done * chunk_n / m.sample_rate)
                        mono = np.where(bad, 0.0, mono).astype(np.float32)
                    x = resampler.process(mono)
                available = time.monotonic()
                windows = enc.push(x)
                tail = np.concatenate([tail, x])
                if windows:
                    samples = [tail[i * chunk_n : (i + 1) * chunk_n] for i in range(len(windows))]
                    tail = tail[len(windows) * chunk_n :]
                    quiet = []
                    for s in samples:
                        quiet_run = quiet_run + 1 if self._gate is not None and self._gate.is_quiet(s) else 0
                        quiet.append(quiet_run >= span)
                    loud = [w for w, q in zip(windows, quiet) if not q]
                    t0 = time.monotonic()
                    embeds = iter(self.bundle.encode_windows(np.stack(loud)) if loud else [])
                    ms = 1000 * (time.monotonic() - t0) / max(1, len(loud))
                    for w, q, s in zip(windows, quiet, samples):
                        if q:
                            if silence_embeds is None:
                                silence_embeds = self._silence_embeds()
                            self.gated_chunks += 1
                        e = silence_embeds if q else next(embeds)
                        n_done += 1
                        chunk = Chunk(n_done - 1, n_done * chunk_n / m.sample_rate, e, available, 0.0 if q else ms, q, s)
                        self._chunks.put(chunk, block=block, stop=self._stop)
                if eof:
                    break
        except Exception as e:  # surfaced as an event; the decoder worker ends the stream
            log.exception("encoder worker failed")
            self._emit({"type": "warning", "message": f"encoder failed: {e}", "t": round(n_done * chunk_n / m.sample_rate, 3)})
        finally:
            self._chunks.put(ChunkQueue.END, block=False, stop=self._stop)
            err = getattr(self.source, "error", None)
            if err:
                self._emit({"type": "warning", "message": err, "t": round(n_done * chunk_n / m.sample_rate, 3)})

    def _silence_embeds(self) -> np.ndarray:
        m = self.bundle.manifest
        w = np.full((1, m.features.n_mels, m.encoder.window_frames), m.features.silence_value, np.float32)
        return self.bundle.encode_windows(w)[0]

    def _nonfinite(self, n: int, t: float) -> None:
        if self.nonfinite_samples == 0:
            self._emit({"type": "warning", "message": "NaN or inf samples in the input were replaced by 0", "t": round(t, 3)})
        self.nonfinite_samples += n

    def _decoder_worker(self) -> None:
        loop = self.loop
        next_stats = self.options.stats_interval
        dropped_seen = 0
        try:
            while True:
                items = self._chunks.take(self.options.loop.fifo, timeout=0.1)
                if items is None or (self._stop.is_set() and not items):
                    break
                if not items:
                    continue
                if self._stop.is_set():
                    break
                loop.process(items)
                self._t_stream = items[-1].t_end
                dropped = self.ring.dropped + self._chunks.dropped
                if dropped > dropped_seen:
                    self._emit({"type": "warning", "message": f"audio overflow: {self.dropped_ms:.0f} ms dropped so far "
                                "(the runtime cannot keep up with the input)", "t": round(self._t_stream, 3)})
                    dropped_seen = dropped
                if self._t_stream >= next_stats:
                    self._emit(self.stats())
                    next_stats += self.options.stats_interval
        except Exception as e:
            log.exception("decoder worker failed")
            self._emit({"type": "warning", "message": f"decoder failed: {e}", "t": round(self._t_stream, 3)})
        finally:
            try:
                loop.close()  # the responder's last answers come before the final stats and end
            except Exception:
                log.exception("responder failed to finish")
            self._stop.set()
            self.ring.close()
            self.finished = True
            self._emit(self.stats())
            self._emit({"type": "end", "t": round(self._t_stream, 3)})

    @property
    def dropped_ms(self) -> float:
        m = self.bundle.manifest
        return 1000 * self.ring.dropped / self.source.info.rate + self._chunks.dropped * m.chunk_ms

    def stats(self) -> dict:
        lp = self.loop
        wall = time.monotonic() - self._t_wall0
        return {
            "type": "stats", "t": round(self._t_stream, 3), "chunks": len(lp.compute_ms),
            "chunk_ms_p50": _pct(lp.compute_ms, 50), "chunk_ms_p95": _pct(lp.compute_ms, 95),
            "chunk_ms_p99": _pct(lp.compute_ms, 99), "decision_lag_ms_p50": _pct(lp.decision_lag_ms, 50),
            "decision_lag_ms_p99": _pct(lp.decision_lag_ms, 99), "first_token_ms_p50": _pct(lp.first_token_ms, 50),
            "decisions": lp.decisions, "responses": lp.responses, "withheld": lp.withheld, "rescues": lp.rescues,
            "rescues_late": lp.rescues_late, "lines_joined": lp.lines_joined, "backlog_max": self._chunks.max_seen,
            "dropped_ms": round(self.dropped_ms, 1), "gated_chunks": self.gated_chunks,
            "evictions": lp.ctx.evictions, "context_tokens": lp.ctx.cache.length,
            "rss_mb": round(rss_mb(), 1), "rtf": round(wall / self._t_stream, 4) if self._t_stream else None,
        }


def _kind(path) -> str:
    from .bundle import load_common

    return load_common(path, verify_hashes=False)[1]["kind"]


class _AsrMode:
    """Listener methods for ``whisper-asr`` bundles: one transcription worker instead of the
    encoder and decoder workers; same capture, ring, resampling, events and stop handling."""

    def _init_asr(self, bundle, source, callback, feed_rate, feed_live):
        from .whisper_asr import AsrOptions, Transcriber, WhisperBundle

        self.asr = WhisperBundle(bundle, self.options.session)
        self.transcriber = Transcriber(self.asr, AsrOptions(beam_size=self.options.asr_beam,
                                                                dereverb_taps=self.options.asr_dereverb_taps))
        self.source = source or FeedSource(feed_rate or 16000, live=feed_live)
        self._callback = callback
        self._events = queue.Queue()
        self._stop = threading.Event()
        self._threads = []
        self.started = self.finished = False
        self.nonfinite_samples = 0
        self._t_stream = 0.0
        self._chunks = ChunkQueue(1)

    def _start_asr(self):
        info = self.source.info
        self._emit({"type": "ready", "bundle": self.asr.name, "path": str(self.asr.root), "providers": self.asr.providers,
                    "chunk_ms": 20.0, "sample_rate": 16000, "mode": "transcribe",
                    "source": {"name": info.name, "rate": info.rate, "channels": info.channels, "live": info.live}})
        for w in self._early_warnings:
            self._emit({"type": "warning", "message": w, "t": 0.0})
        self._t_wall0 = time.monotonic()
        self._threads = [threading.Thread(target=self._asr_worker, name="edge-asr", daemon=True)]
        self._threads[0].start()
        self.source.start(self.ring, self._stop)
        return self

    def _asr_worker(self) -> None:
        info = self.source.info
        resampler = Resampler(info.rate, 16000)
        n_in = 0
        try:
            while not self._stop.is_set():
                frames = self.ring.read(max(1, info.rate // 5), timeout=0.1, min_frames=max(1, info.rate // 10))
                if frames is None:
                    x = resampler.flush()
                    for ev in self.transcriber.push(x, flush=True):
                        self._emit(ev)
                    break
                if len(frames) == 0:
                    continue
                mono = to_mono(frames)
                bad = ~np.isfinite(mono)
                if bad.any():
                    self._nonfinite(int(bad.sum()), n_in / 16000)
                    mono = np.where(bad, 0.0, mono).astype(np.float32)
                x = resampler.process(mono)
                n_in += len(x)
                self._t_stream = n_in / 16000
                for ev in self.transcriber.push(x):
                    self._emit(ev)
        except Exception as e:
            log.exception("transcription worker failed")
            self._emit({"type": "warning", "message": f"decoder failed: {e}", "t": round(self._t_stream, 3)})
        finally:
            err = getattr(self.source, "error", None)
            if err:
                self._emit({"type": "warning", "message": err, "t": round(self._t_stream, 3)})
            self._stop.set()
            self.ring.close()
            self.finished = True
            self._emit(self._asr_stats())
            self._emit({"type": "end", "t": round(self._t_stream, 3)})

    def _asr_stats(self) -> dict:
        tr = self.transcriber
        fin, part = np.array(tr.latency_ms or [np.nan]), np.array(tr.decode_ms or [np.nan])
        wall = time.monotonic() - self._t_wall0
        pct = lambda a, q: None if np.isnan(a).all() else round(float(np.nanpercentile(a, q)), 2)  # noqa: E731
        return {"type": "stats", "t": round(self._t_stream, 3), "chunks": len(tr.latency_ms),
                "chunk_ms_p50": pct(fin, 50), "chunk_ms_p95": pct(fin, 95), "chunk_ms_p99": pct(fin, 99),
                "segments": len(tr.latency_ms), "segments_dropped": tr.dropped,
                "partial_decode_ms_p50": pct(part, 50), "backlog_max": 0,
                "dropped_ms": round(1000 * self.ring.dropped / self.source.info.rate, 1),
                "rss_mb": round(rss_mb(), 1), "rtf": round(wall / self._t_stream, 4) if self._t_stream else None}


for _name in ("_init_asr", "_start_asr", "_asr_worker", "_asr_stats"):
    setattr(Listener, _name, getattr(_AsrMode, _name))


class AsyncListener:
    """asyncio facade: ``async with AsyncListener(...) as l: async for ev in l: ...``.

    Bundle loading and stopping run in the default executor and events arrive through
    ``call_soon_threadsafe``, so nothing blocks the event loop (fit for Home Assistant)."""

    def __init__(self, *args, **kwargs):
        if "callback" in kwargs:
            raise TypeError("AsyncListener delivers events by async iteration, not callback")
        self._args, self._kwargs = args, kwargs
        self.listener: Listener | None = None
        self._queue: asyncio.Queue | None = None

    async def start(self) -> "AsyncListener":
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        q = self._queue

        def make() -> Listener:
            return Listener(*self._args, callback=lambda ev: loop.call_soon_threadsafe(q.put_nowait, ev), **self._kwargs)

        self.listener = await loop.run_in_executor(None, make)
        await loop.run_in_executor(None, self.listener.start)
        return self

    def feed(self, pcm: np.ndarray) -> None:
        """Non-blocking for live feeds (the ring drops oldest rather than wait)."""
        assert self.listener is not None, "start() first"
        self.listener.feed(pcm)

    def close_input(self) -> None:
        assert self.listener is not None, "start() first"
        self.listener.close_input()

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            await asyncio.get_running_loop().run_in_executor(None, self.listener.join, 5.0)

    async def __aenter__(self) -> "AsyncListener":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        assert self._queue is not None, "start() first"
        while True:
            ev = await self._queue.get()
            yield ev
            if ev["type"] == "end":
                return

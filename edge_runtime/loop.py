"""The decide-respond loop (DESIGN section 3), free of threads so that it can be tested directly.

    [instruction]                       the sink: kept forever
    [chunk 1] <silent>                  <silent> rides along with the next chunk's prefill
    [chunk 2] <silent> [chunk 3]        FIFO: a backlog is prefilled in one call, one decision at the end
    <respond> text ... <end>            greedy response, streamed token by token; <end> rides along too

The context is bounded: when the next call would not fit, the oldest blocks after the sink are
dropped and the kept ones are prefilled again at re-based positions (one O(window) call per
eviction block). So positions never grow, and the cache after an eviction is exactly that of a
stream that began with the kept tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from typing import Callable, Protocol

import numpy as np

from .model import Bundle

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """instruction: what the model is told to do (None: the bundle's default).
    sensitivity: 0..1; respond when p(<respond>) >= 1 - sensitivity (0.5: the more likely of the two).
    max_response_tokens: a response is cut (and closed with <end>) after this many tokens.
    fifo: prefill every queued chunk in one call (True) or one call per chunk (False).
    decide_each_up_to: with fifo, a backlog of up to this many chunks is still decided chunk by
        chunk (one call each), so that no chunk where a response is due is passed over with a
        forced <silent>; only a longer backlog (real overload) is prefilled in one call and decided
        once. For a small decoder a call costs a fraction of a millisecond against the encoder's
        ~15 ms per chunk, so short backlogs (CPU contention, a responder's Whisper) cost next to
        nothing to decide exactly.
    context: tokens the KV cache may hold (None: the bundle's max_context).
    evict_fraction: share of the window (after the sink) dropped per eviction.
    min_confidence: 0..1; when above 0 a response is generated whole before any of it is emitted,
        and one whose confidence (the lowest probability of any token chosen, <end> included) is
        under it is not said: a ``response.withheld`` event carries it instead.
    repeat_gap: seconds of quiet that make a sound or an utterance a new one (Repeats): the same
        response said again within ``repeat_within`` s with no such gap since is withheld (reason
        ``repeat``); a response that could be one is held until it is whole. 0: never withheld.
    same_sound: an alert said within ``repeat_within`` s of another alert, while the same tones
        sound as when that one was said (Repeats.same_sound: spectral peaks alike to this cosine),
        is a repeat too, pauses or not: a smoke alarm's beep groups, a doorbell rung twice. 0: off.
    line_pause: with a responder, under its transcription instructions, a line waits until the
        speech has been unvoiced this many seconds, and the model's lines while it waits are one
        line: a line written at a pause inside an utterance and the model's line again at its end
        become one line over the whole utterance. 0: each line is said when the model writes it.
    line_wait: ... but a line waits at most this many seconds after the model first wrote it (noise
        the voice detector takes for speech would hold it past the point it answers anything)."""

    instruction: str | None = None
    sensitivity: float = 0.5
    max_response_tokens: int = 48
    fifo: bool = True
    decide_each_up_to: int = 4
    context: int | None = None
    evict_fraction: float = 0.5
    min_confidence: float = 0.0
    repeat_gap: float = 0.3
    repeat_within: float = 10.0
    same_sound: float = 0.7
    line_pause: float = 0.5
    line_wait: float = 1.2

    def __post_init__(self) -> None:
        if not 0.0 <= self.sensitivity <= 1.0:
            raise ValueError(f"sensitivity must be in [0, 1], got {self.sensitivity}")
        if self.max_response_tokens < 1:
            raise ValueError(f"max_response_tokens must be >= 1, got {self.max_response_tokens}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if not 0.05 <= self.evict_fraction <= 0.95:
            raise ValueError(f"evict_fraction must be in [0.05, 0.95], got {self.evict_fraction}")
        if self.decide_each_up_to < 1:
            raise ValueError(f"decide_each_up_to must be >= 1, got {self.decide_each_up_to}")
        if self.repeat_gap < 0 or self.repeat_within <= 0:
            raise ValueError(f"repeat_gap must be >= 0 and repeat_within > 0, got {self.repeat_gap}, {self.repeat_within}")
        if not 0.0 <= self.same_sound <= 1.0:
            raise ValueError(f"same_sound must be in [0, 1], got {self.same_sound}")
        if self.line_pause < 0 or self.line_wait <= 0:
            raise ValueError(f"line_pause must be >= 0 and line_wait > 0, got {self.line_pause}, {self.line_wait}")
        if self.context is not None and self.context < 64:
            raise ValueError(f"context must be >= 64 tokens, got {self.context}")


@dataclasses.dataclass
class Chunk:
    """One encoded chunk. index: 0-based. t_end: stream seconds at its last sample.
    available: wall clock (time.monotonic) when its last sample was read. encode_ms: encoder time."""

    index: int
    t_end: float
    embeds: np.ndarray
    available: float
    encode_ms: float
    gated: bool = False
    samples: np.ndarray | None = None  # the chunk's 16 kHz audio (a responder's trail, Repeats)


class Decider(Protocol):
    def respond(self, p_respond: float, chunk: Chunk) -> bool: ...


@dataclasses.dataclass(frozen=True)
class ThresholdDecider:
    threshold: float

    def respond(self, p_respond: float, chunk: Chunk) -> bool:
        return p_respond >= self.threshold


class ScriptedDecider:
    """Responds once for each given chunk index, at the first decision that covers it (with FIFO
    a backlog is decided once, at its last chunk). For tests and benchmarks of the loop itself."""

    def __init__(self, chunks):
        self.chunks = sorted(set(chunks))
        self._next = 0

    def respond(self, p_respond: float, chunk: Chunk) -> bool:
        hit = False
        while self._next < len(self.chunks) and self.chunks[self._next] <= chunk.index:
            self._next, hit = self._next + 1, True
        return hit


class Context:
    """Per-stream decoder state: KV cache, the sink, and the blocks fed since (for eviction)."""

    def __init__(self, bundle: Bundle, capacity: int, evict_fraction: float):
        self.decoder = bundle.decoder
        self.cache = bundle.decoder.new_cache()
        self.capacity = min(capacity, bundle.decoder.max_len)
        self.evict_fraction = evict_fraction
        self.sink_len = 0
        self.blocks: list[np.ndarray] = []  # embeddings fed after the sink, in order
        self.evictions = 0
        self.log: list[np.ndarray] | None = None  # tests may record every block fed

    def set_sink(self, embeds: np.ndarray) -> np.ndarray:
        self.cache.reset()
        self.blocks.clear()
        logits = self.decoder.forward(self.cache, embeds).copy()
        self.sink_len = self.cache.length
        if self.sink_len > self.capacity // 2:
            raise ValueError(f"instruction of {self.sink_len} tokens leaves too little of a {self.capacity}-token context")
        return logits

    def feed(self, embeds: np.ndarray, reserve: int = 0) -> np.ndarray:
        """Append a block (T, hidden); evict first if it and ``reserve`` more tokens would not fit."""
        if self.cache.length + len(embeds) + reserve > self.capacity:
            self._evict(len(embeds) + reserve)
        if self.log is not None:
            self.log.append(embeds)
        self.blocks.append(embeds)
        return self.decoder.forward(self.cache, embeds)

    def _evict(self, need: int) -> None:
        window = self.capacity - self.sink_len
        keep_budget = min(int(window * (1 - self.evict_fraction)), window - need)
        kept, total = [], 0
        for b in reversed(self.blocks):
            if total + len(b) > keep_budget:
                break
            kept.append(b)
            total += len(b)
        kept.reverse()
        self.cache.truncate(self.sink_len)
        self.blocks = kept
        if kept:
            self.decoder.forward(self.cache, np.concatenate(kept))  # re-based prefill, O(window)
        self.evictions += 1
        log.debug("evicted: kept %d tokens after a %d-token sink", total, self.sink_len)


class Samples:
    """The most recent ``capacity`` measurements (a preallocated ring), for percentiles: memory
    stays flat over an endless stream. ``count`` is the number ever added."""

    def __init__(self, capacity: int = 16384):
        self._a = np.zeros(capacity, np.float32)
        self.count = 0

    def add(self, x: float) -> None:
        self._a[self.count % len(self._a)] = x
        self.count += 1

    def extend(self, xs) -> None:
        for x in xs:
            self.add(x)

    def values(self) -> np.ndarray:
        return self._a[: min(self.count, len(self._a))]

    def __len__(self) -> int:
        return self.count


def tones(audio: np.ndarray, n: int = 2048, low_bin: int = 20) -> np.ndarray | None:
    """The tonal peaks of ``audio`` (16 kHz: 7.8 Hz bins): the log power spectrum of its loudest
    30% of frames (``n`` samples, half overlapping) above its running median over 41 bins, from
    ``low_bin`` up, as a unit vector; None when it holds no whole frame or no peak. Two stretches
    of one alarm or bell give nearly the same vector; another bell, a knock or noise do not."""
    if len(audio) < n:
        return None
    frames = np.lib.stride_tricks.sliding_window_view(np.asarray(audio, np.float64), n)[:: n // 2] * np.hanning(n)
    power = np.square(np.abs(np.fft.rfft(frames, axis=1)))
    energy = power.sum(axis=1)
    level = np.log10(power[energy >= np.percentile(energy, 70)].mean(axis=0) + 1e-10)
    floor = np.median(np.lib.stride_tricks.sliding_window_view(np.pad(level, 20, mode="edge"), 41), axis=1)
    peaks = np.maximum(level - floor, 0.0)
    peaks[:low_bin] = 0.0
    norm = float(np.linalg.norm(peaks))
    return peaks / norm if norm > 1e-6 else None


class Repeats:
    """Is a response a repeat: the same text said again while what prompted it goes on? A doorbell
    that rings on, or a knock that keeps knocking, can make the model answer twice; a second
    doorbell after a pause is a new event. A response is a repeat when the same text was said less
    than ``within`` s before it and the audio has had no quiet gap of ``gap`` s since: no run of
    20 ms frames within ``margin`` dB of the floor (the 5th percentile of the last
    ``floor_seconds``). ``gap`` 0, or chunks that carry no audio: nothing is a repeat.

    Alarms pause between beeps, so a gap does not end them: one of ``sounds`` (the alert replies)
    is also a repeat when another of them was said less than ``within`` s before and the last
    ``sound_seconds`` of audio have the same tones (``tones``, cosine >= ``same_sound``; 0: off)
    as the ``sound_seconds`` before that one was said. The same tones are one event even when
    the model names them differently the second time."""

    def __init__(self, gap: float = 0.3, within: float = 10.0, margin: float = 6.0, floor_seconds: float = 10.0,
                 sample_rate: int = 16000, sounds: frozenset = frozenset(), same_sound: float = 0.0,
                 sound_seconds: float = 1.2):
        self.gap, self.within, self.margin = gap, within, margin
        self.sounds, self.same_sound = (sounds, same_sound) if gap > 0 and same_sound > 0 else (frozenset(), 0.0)
        self.frame = sample_rate // 50  # 20 ms
        self.frame_s = self.frame / sample_rate
        self._db: collections.deque = collections.deque(maxlen=max(1, int(floor_seconds / self.frame_s)))
        self._need = max(1, int(round(gap / self.frame_s)))
        self._run = 0  # frames in the quiet run going on
        self._gaps: collections.deque = collections.deque(maxlen=64)  # [start, end] of quiet runs of gap s or more
        self._said: dict[str, float] = {}  # text -> stream time it was last said
        self._tail = np.zeros(int(sound_seconds * sample_rate) if self.sounds else 0, np.float32)  # the latest audio
        self._heard: collections.deque = collections.deque(maxlen=16)  # (time, tones) when an alert was said
        self._tones: tuple[int, np.ndarray | None] = (-1, None)  # (chunks pushed, tones of the tail then)
        self._pushed = 0  # chunks pushed into the tail
        self._judged = False  # audio came (chunks without samples: nothing is judged a repeat)
        self._lock = threading.Lock()  # the loop pushes and asks; a responder's thread says and asks too

    def push(self, samples: np.ndarray, t_end: float) -> None:
        """The audio of a chunk that ends at stream time ``t_end``."""
        if self.gap <= 0 or samples is None:
            return
        n = len(samples) // self.frame
        if not n:
            return
        frames = np.asarray(samples[-n * self.frame :], np.float64).reshape(n, self.frame)
        db = 10 * np.log10(np.mean(np.square(frames), axis=1) + 1e-12)
        with self._lock:
            self._judged = True
            self._db.extend(db.tolist())
            self._mark_gaps(db < np.percentile(np.fromiter(self._db, float), 5) + self.margin, t_end)
            if len(self._tail):
                keep = min(len(samples), len(self._tail))
                self._tail = np.concatenate([self._tail[keep:], np.asarray(samples[-keep:], np.float32)])
                self._pushed += 1

    def _tones_now(self) -> np.ndarray | None:
        """``tones`` of the tail, computed once per chunk pushed (an alert is judged, then said)."""
        if self._tones[0] != self._pushed:
            self._tones = (self._pushed, tones(self._tail))
        return self._tones[1]

    def _mark_gaps(self, quiet: np.ndarray, t_end: float) -> None:
        """Carry the quiet run over these 20 ms frames (True: quiet; the last ends at ``t_end``); a run
        of ``gap`` s or more is kept as its [start, end]."""
        n = len(quiet)
        for i, q in enumerate(quiet):
            self._run = self._run + 1 if q else 0
            end = t_end - (n - 1 - i) * self.frame_s
            if self._run == self._need:
                self._gaps.append([end - self._need * self.frame_s, end])
            elif self._run > self._need:
                self._gaps[-1][1] = end

    def _goes_on(self, t0: float, t: float) -> bool:
        """Was ``t0`` less than ``within`` before ``t``, with no ``gap`` s of quiet between them?"""
        return 0 <= t - t0 < self.within and \
            not any(min(e, t) - max(s, t0) >= self.gap - 1e-6 for s, e in self._gaps)

    def _sounds_on(self, t: float) -> bool:
        """Do the tones of an alert said less than ``within`` before ``t`` sound now?"""
        recent = [heard for t0, heard in self._heard if 0 <= t - t0 < self.within]
        now = self._tones_now() if recent else None
        return now is not None and any(float(now @ heard) >= self.same_sound for heard in recent)

    def possible(self, t: float) -> bool:
        """Could a response at ``t`` be a repeat (of anything said)?"""
        with self._lock:
            return self._judged and (any(self._goes_on(t0, t) for t0 in self._said.values())
                                     or any(0 <= t - t0 < self.within for t0, _ in self._heard))

    def is_repeat(self, text: str, t: float) -> bool:
        with self._lock:
            if not self._judged:
                return False
            return (text in self._said and self._goes_on(self._said[text], t)) or \
                (text in self.sounds and self._sounds_on(t))

    def said_lately(self, text: str, t: float, seconds: float) -> bool:
        """Was ``text`` said at most ``seconds`` before ``t``, gaps or not?"""
        with self._lock:
            return text in self._said and 0 <= t - self._said[text] <= seconds + 1e-6

    def said(self, text: str, t: float) -> None:
        if not text:
            return
        with self._lock:
            self._said[text] = max(t, self._said.get(text, t))
            for old in [k for k, v in self._said.items() if t - v >= self.within]:
                del self._said[old]
            if text in self.sounds and self._judged:
                heard = self._tones_now()
                if heard is not None:
                    self._heard.append((t, heard))


def _p_respond(logits: np.ndarray, silent: int, respond: int) -> float:
    d = float(logits[respond]) - float(logits[silent])
    return float(1.0 / (1.0 + np.exp(-np.clip(d, -60, 60))))


def _p_top(logits: np.ndarray) -> float:
    """The probability the model gives its most likely next token (the one greedy decoding picks)."""
    x = np.asarray(logits, dtype=np.float64).ravel()
    return float(1.0 / np.exp(x - x.max()).sum())


class DecisionLoop:
    """Feeds chunks, decides, generates. ``emit`` receives event dicts (DESIGN section 5)."""

    def __init__(self, bundle: Bundle, opts: LoopOptions, emit: Callable[[dict], None],
                 decider: Decider | None = None, should_stop: Callable[[], bool] = lambda: False,
                 verbose: bool = False, responder=None):
        self.b, self.opts, self.emit = bundle, opts, emit
        self._saying = threading.Lock()  # the loop and the responder's thread both say: one response's events stay together
        self.responder = responder  # edge_runtime.responder.Responder: rewrites speech replies
        self.trail = self.worker = None
        if responder is not None:
            from .responder import ResponderWorker, SpeechTrail

            self.trail = SpeechTrail()
            self.worker = ResponderWorker(responder, self.say, answered=lambda voiced: voiced in self._answered,
                                          said_upto=lambda: self._said_upto)
        self.decider = decider or ThresholdDecider(1.0 - opts.sensitivity)
        self.should_stop, self.verbose = should_stop, verbose
        m = bundle.manifest
        self.silent_id, self.respond_id, self.end_id = (m.control_tokens[k] for k in ("silent", "respond", "end"))
        self._silent, self._respond, self._end = (bundle.embed([i]) for i in (self.silent_id, self.respond_id, self.end_id))
        self.instruction = opts.instruction if opts.instruction is not None else m.default_instruction
        asked = self.instruction.lower()  # alert replies the instruction does not ask for are withheld (reason "unasked")
        self._unasked = frozenset(r for r, words in m.alert_words.items() if not any(w in asked for w in words))
        self.ctx = Context(bundle, opts.context or m.decoder.max_context, opts.evict_fraction)
        # transcript lines wait for the speaker to pause (line_pause)
        self._lines = opts.line_pause > 0 and responder is not None and self.instruction in responder.repeat_instructions
        self.reset()

    def reset(self) -> None:
        ids = self.b.token_ids(self.instruction)
        if not ids:
            raise ValueError("the instruction encodes to no tokens")
        self.ctx.set_sink(self.b.embed(ids))
        self._pending: np.ndarray | None = None  # <silent> or <end> waiting to ride with the next chunk
        self.decisions = 0
        self.compute_ms = Samples()  # per chunk: encode + its share of the prefill/decision call
        self.decision_lag_ms = Samples()
        self.first_token_ms = Samples()
        self.responses = 0
        self.withheld = 0
        self.rescues = 0  # utterances handed to the responder for a second chance
        self.rescues_late = 0  # ... not handed over: the speech went on past the responder's rescue_late
        self._repeats = Repeats(self.opts.repeat_gap, self.opts.repeat_within, sample_rate=self.b.manifest.sample_rate,
                                sounds=frozenset(self.b.manifest.alert_words), same_sound=self.opts.same_sound)
        self._near: tuple[float, float] | None = None  # (armed at, highest p) of a narrowly passed-over utterance
        self._heard_upto = -1  # trail frame up to which speech was answered or handed over (never a second time)
        self._said_upto = -1  # the trail frame after the speech the last reply said answered: later replies hear what follows
        self._handed = -2  # the last voiced trail frame of the utterance last handed over for a second chance
        self._answered: collections.deque = collections.deque(maxlen=64)  # ... of those the model then answered itself
        self._line: dict | None = None  # a transcript line waiting for the speaker to pause (line_pause)
        self.lines_joined = 0  # lines of the model's that joined a waiting line
        self._t = 0.0  # the end of the last chunk
        if self.trail is not None:
            self.trail.reset()

    def process(self, chunks: list[Chunk]) -> None:
        """Decide on ``chunks`` (the backlog the queue handed over): chunk by chunk up to
        ``decide_each_up_to`` of them, else in one call with one decision after the last (FIFO)."""
        if 1 < len(chunks) <= self.opts.decide_each_up_to:
            for c in chunks:
                self._prefill_and_decide([c])
        else:
            self._prefill_and_decide(chunks)

    def _prefill_and_decide(self, chunks: list[Chunk]) -> None:
        """Prefill ``chunks`` in one call and decide once, after the last."""
        parts = [] if self._pending is None else [self._pending]
        for i, c in enumerate(chunks):
            if i:
                parts.append(self._silent)  # the model "stayed silent" on queued chunks
            parts.append(c.embeds)
        for c in chunks:
            self._repeats.push(c.samples, c.t_end)
            if self.trail is not None:
                self.trail.push(c.samples)
        t0 = time.monotonic()
        logits = self.ctx.feed(np.concatenate(parts), reserve=self.opts.max_response_tokens + 2)
        p = _p_respond(logits, self.silent_id, self.respond_id)
        t1 = time.monotonic()
        last = chunks[-1]
        share = 1000 * (t1 - t0) / len(chunks)
        self.compute_ms.extend(c.encode_ms + share for c in chunks)
        self.decision_lag_ms.add(1000 * (t1 - last.available))
        self.decisions += 1
        if self.verbose:
            self.emit({"type": "decision", "t": round(last.t_end, 3), "p_respond": round(p, 4), "chunks": len(chunks)})
        responds = self.decider.respond(p, last)
        if self.worker is not None and self.responder.rescues(self.instruction):
            self._second_chance(p, last.t_end, responds, t1)
        if responds:
            self._respond_to(last, t1)
        else:
            self._pending = self._silent
        self._t = last.t_end
        if self._line is not None and (self.trail.quiet_seconds() >= self.opts.line_pause
                                       or self._t - self._line["t"] >= self.opts.line_wait - 1e-6):
            self._say_line()

    def _second_chance(self, p: float, t: float, responds: bool, t_decided: float) -> None:
        """Arm when p(<respond>) reaches the responder's ``rescue_above`` without a response; once the
        speech has ended (``rescue_wait`` s unvoiced, or 5 s after arming), hand the utterance to the
        responder, which says a reply only if its LM writes one, Whisper heard the name, and the
        model has not answered that utterance itself meanwhile (``_answered``); with the responder's
        ``rescue_late``, not when that came more than ``rescue_late`` s after arming (counted in
        ``rescues_late``: a reply that late answers nothing the listener still waits for). A
        response disarms."""
        if responds:
            if self.trail.last_voiced == self._handed:  # no speech since: it answers that utterance
                self._answered.append(self._handed)
            self._near, self._heard_upto = None, self.trail.frames
            return
        if p >= self.responder.rescue_above:
            self._near = (self._near[0], max(p, self._near[1])) if self._near else (t, p)
        if self._near and (self.trail.quiet_seconds() >= self.responder.rescue_wait or t - self._near[0] >= 5.0):
            late = self.responder.rescue_late is not None and t - self._near[0] > self.responder.rescue_late
            if self.trail.last_voiced >= self._heard_upto:  # speech since the last answer
                if late:  # it ran on past rescue_late: a reply now would come after the listener stopped waiting
                    self.rescues_late += 1
                else:
                    self.rescues += 1
                    self._handed = self.trail.last_voiced
                    audio, span = self._utterance()
                    self.worker.submit(round(t, 3), t_decided, "", self._near[1], 0, self.instruction, audio,
                                       rescue=self._near[1], voiced=self._handed, span=span)
            self._near, self._heard_upto = None, self.trail.frames

    def _respond_to(self, chunk: Chunk, t_decided: float) -> None:
        """Generate greedily after <respond>. Streamed delta by delta, or, with ``min_confidence``,
        held until <end> and then said whole or withheld. Either way every token is fed, so the
        model's context is the same whether or not the response was said."""
        t = round(chunk.t_end, 3)
        hold = self.opts.min_confidence > 0.0 or self.responder is not None or bool(self._unasked) or self._repeats.possible(t)
        if not hold:
            self.emit({"type": "response.start", "t": t})
        logits = self.ctx.feed(self._respond)
        ids: list[int] = []
        text_sent, first_ms, confidence = "", None, 1.0
        while True:
            nxt = int(np.argmax(logits))
            confidence = min(confidence, _p_top(logits))
            if nxt == self.end_id:
                break
            ids.append(nxt)
            if not hold:  # streamed: first token time, and each new whole character as it comes
                if first_ms is None:
                    first_ms = 1000 * (time.monotonic() - t_decided)
                text = self.b.tokenizer.decode(ids)
                if len(text) > len(text_sent) and not text.endswith("\ufffd"):
                    self.emit({"type": "response.delta", "t": t, "text": text[len(text_sent) :]})
                    text_sent = text
            if len(ids) >= self.opts.max_response_tokens or self.should_stop():
                break
            logits = self.ctx.feed(self.b.embed([nxt]))
        if nxt == self.end_id:
            self._pending = self._end  # every token was fed; <end> rides with the next chunk
        else:  # cut short: the last token was not fed yet; it and <end> ride with the next chunk
            self._pending = np.concatenate([self.b.embed([nxt]), self._end])
        text = self.b.tokenizer.decode(ids)
        if self.worker is not None and confidence >= self.opts.min_confidence:
            r = self.responder
            if self._lines:
                self._wait_for_pause(t, text, confidence, len(ids))
                return
            ask, check = r.asks(self.instruction, text, confidence), text in r.confirm_replies
            overrule = r.overrules(self.instruction, text, confidence)
            if ask or check or overrule:  # the responder writes or checks what is said, on its own thread: the loop goes on deciding
                audio, span = self._utterance()
                self.worker.submit(t, t_decided, text, confidence, len(ids), self.instruction, audio, ask=ask,
                                   check=check, overrule=overrule, span=span)
                return
        self.say(t, text, round(1000 * (time.monotonic() - t_decided), 2), len(ids), confidence,
                 withhold=confidence < self.opts.min_confidence, held=hold, first_ms=first_ms, text_sent=text_sent,
                 upto=None if self.trail is None or text in self.b.manifest.alert_words else self.trail.last_voiced + 1)

    def _utterance(self) -> tuple[np.ndarray | None, tuple[int, int] | None]:
        """The utterance to hand the responder, and its first and last voiced trail frames."""
        span = self.trail.utterance_span()
        return (None, None) if span is None else (span[0], span[1:])

    def _wait_for_pause(self, t: float, text: str, confidence: float, tokens: int) -> None:
        """Hold a transcript line until the speech pauses (``line_pause``, or ``line_wait`` after the
        model first wrote it); a line already waiting is replaced by this one, which read more of
        the utterance, and the utterance is heard from where the waiting one's began."""
        since, first = self.trail.run_start(), t
        if self._line is not None:
            self.lines_joined += 1
            first = self._line["t"]
            since = min((f for f in (since, self._line["since"]) if f is not None), default=None)
        self._line = {"t": first, "text": text, "confidence": confidence, "tokens": tokens, "since": since,
                      "voiced": self.trail.last_voiced}

    def _say_line(self) -> None:
        """Say the waiting line now that the speech has paused: Whisper's transcript of the whole
        utterance when the responder asks for it, or when the speech went on after the model wrote
        its line (it did not hear all of it); else the model's own line."""
        line, self._line = self._line, None
        t, now = round(self._t, 3), time.monotonic()
        went_on = self.trail.last_voiced > line["voiced"]
        if went_on or self.responder.asks(self.instruction, line["text"], line["confidence"]):
            self.worker.submit(t, now, line["text"], line["confidence"], line["tokens"], self.instruction,
                               self.trail.utterance(since=line["since"]))
        else:
            self.say(t, line["text"], 0.0, line["tokens"], line["confidence"])

    def say(self, t: float, text: str, total_ms: float, tokens: int, confidence: float, withhold: bool = False,
            held: bool = True, first_ms: float | None = None, text_sent: str = "", upto: int | None = None,
            **extra) -> None:
        """Emit a generated response (its remaining delta and ``response.end``), or, with
        ``withhold``, a ``response.withheld`` instead; ``extra`` fields ride on the last event.
        With a responder, a reply it writes is said from its thread when it is ready, so a later
        reply the loop says itself (an alert, a sure reply) may come first: events are in the
        order they are said, each response's start, delta and end together, ``t`` its chunk.
        ``upto``: the trail frame after the speech the response answers; once a reply is said, the
        responder hears no speech before it again (``_said_upto``)."""
        with self._saying:
            said = self._say(t, text, total_ms, tokens, confidence, withhold, held, first_ms, text_sent, **extra)
            if said and text and upto is not None:
                self._said_upto = max(self._said_upto, upto)

    def _say(self, t, text, total_ms, tokens, confidence, withhold, held, first_ms, text_sent, **extra) -> bool:
        because = None if withhold else self._not_said_because(text, t, held)
        if withhold or because:
            self.withheld += 1
            reason = because or ("responder" if "heard" in extra else "confidence")
            self.emit({"type": "response.withheld", "t": t, "text": text if because else extra.get("model_text", text),
                       "reason": reason, "confidence": round(confidence, 4), "total_ms": total_ms, "tokens": tokens, **extra})
            return False
        self._repeats.said(text, t)
        self.responses += 1
        if held:
            self.emit({"type": "response.start", "t": t})
            if text:
                first_ms = total_ms  # the listener hears nothing before the whole response is checked
        if first_ms is not None:
            self.first_token_ms.add(first_ms)
        if len(text) > len(text_sent):
            self.emit({"type": "response.delta", "t": t, "text": text[len(text_sent) :]})
        self.emit({"type": "response.end", "t": t, "text": text,
                   "first_token_ms": round(first_ms, 2) if first_ms is not None else None,
                   "total_ms": total_ms, "tokens": tokens,
                   "confidence": round(confidence, 4), **extra})
        return True

    def _not_said_because(self, text: str, t: float, held: bool) -> str | None:
        """Why a whole response is not said: an alert reply the instruction did not ask for
        (``unasked``), a ``repeat`` (or, under ``line_pause``, a line said again within
        ``line_wait`` s: a line said before the utterance ended, written again at its end); None:
        it is said. A streamed one is said."""
        if not held:
            return None
        if text in self._unasked:
            return "unasked"
        if self._lines and self._repeats.said_lately(text, t, self.opts.line_wait):
            return "repeat"
        return "repeat" if self._repeats.is_repeat(text, t) else None

    def close(self) -> None:
        """Wait for the responder to finish what it was handed (the stream is ending)."""
        if self._line is not None:
            self._say_line()
        if self.worker is not None:
            self.worker.close()

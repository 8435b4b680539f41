"""Streaming-native training data (SoundFlow section 3): whole scripted audio streams with the
instruction at the start and, per 400 ms chunk, what the model should do after it.

A stream is a sequence of events (utterances and sounds) over room noise. Each event that calls
for a response carries the stream time by which the response is due:

- speech: 0.25 s after the utterance's last voiced sample (the model must hear that it ended);
- a watched sound: 0.3 s after its onset (responses within about 1 s of the onset); a recipe
  can move this later (``data.sound_due``, applied by ``relabel``) to let the model hear more of
  the sound before it decides.

The response is attached to the first chunk whose end reaches that time; every other chunk is
labelled ``<silent>``. Held-out streams (``split="heldout"``) use held-out voices, wording and
sound seeds only.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np

from . import scenarios as sc
from . import synth

CHUNK_S = 0.4
SPEECH_DUE_S = 0.25  # after the utterance's last voiced sample
SOUND_DUE_S = 0.3  # after a watched sound's onset
MODES = {"assistant": 0.3, "alerts": 0.25, "transcribe": 0.2, "combined": 0.25}


@dataclasses.dataclass
class Event:
    kind: str  # speech | sound
    start: float  # stream seconds
    end: float
    what: str  # the words, or the sound class
    response: str | None = None
    due: float | None = None  # stream time the response is due
    meta: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Stream:
    audio: np.ndarray  # float32 16 kHz
    instruction: str
    mode: str
    watch: list[str]
    events: list[Event]
    labels: list[str | None]  # per chunk: the response after it, or None for <silent>

    @property
    def duration(self) -> float:
        return len(self.audio) / synth.SR

    def to_dict(self) -> dict:
        return {"instruction": self.instruction, "mode": self.mode, "watch": self.watch,
                "duration": round(self.duration, 3), "events": [dataclasses.asdict(e) for e in self.events],
                "labels": self.labels}


def sentence(text: str) -> str:
    """How a transcript is written: first letter capitalized, a full stop at the end."""
    t = text.strip()
    t = t[0].upper() + t[1:]
    return t if t[-1] in ".?!" else t + "."


def _pick(rng: random.Random, table: dict[str, float]) -> str:
    r, acc = rng.random() * sum(table.values()), 0.0
    for k, w in table.items():
        acc += w
        if r < acc:
            return k
    return k


def _event_kinds(mode: str) -> dict[str, float]:
    if mode == "assistant":
        return {"command": 0.4, "other_speech": 0.35, "alert_sound": 0.15, "distractor": 0.1}
    if mode == "alerts":
        return {"watched": 0.35, "alert_sound": 0.2, "distractor": 0.15, "command": 0.12, "other_speech": 0.18}
    if mode == "transcribe":
        return {"command": 0.35, "other_speech": 0.4, "alert_sound": 0.15, "distractor": 0.1}
    return {"command": 0.3, "other_speech": 0.25, "watched": 0.25, "alert_sound": 0.1, "distractor": 0.1}


class Speaker:
    """TTS with a per-process cache (the same line in the same voice is synthesized once)."""

    def __init__(self):
        self.cache: dict[tuple[str, str], np.ndarray] = {}

    def __call__(self, text: str, voice: synth.Voice) -> np.ndarray:
        key = (text, voice.label())
        if key not in self.cache:
            if len(self.cache) > 2000:
                self.cache.clear()
            self.cache[key] = synth.speak(text, voice)
        return self.cache[key]


def make_stream(seed: int, split: str, duration: float = 45.0, mode: str | None = None,
                speaker: Speaker | None = None, voices_per_stream: int = 3, voice_split: str | None = None,
                kinds: dict[str, float] | None = None, warp: float = 0.0,
                modes: dict[str, float] | None = None, mode_kinds: dict[str, dict[str, float]] | None = None,
                intents: dict[str, float] | None = None) -> Stream:
    """One scripted stream. ``seed`` fixes everything (voices, words, sounds, levels, timing).
    ``split`` picks the wording, ``voice_split`` (default: the same) the voices; ``kinds``
    overrides how often each kind of event occurs, ``modes`` how often each instruction mode is
    drawn when ``mode`` is not given (default ``MODES``). ``warp`` > 0: each utterance is resampled by a
    random factor in [1 - warp, 1 + warp] (pitch, formants and tempo together: another vocal tract).
    ``mode_kinds`` overrides the kinds of events per mode ({mode: {kind: weight}}; a recipe's
    ``data.kinds``), ``intents`` how often each intent of an addressed request is drawn
    ({intent or "unknown": weight}; a recipe's ``data.intents``; default: all equally often)."""
    rng = random.Random(f"{split}:{voice_split}:{seed}" if voice_split else f"{split}:{seed}")
    speaker = speaker or Speaker()
    mode = mode or _pick(rng, modes or MODES)
    watch: list[str] = []
    if mode in ("alerts", "combined"):
        if mode == "combined" and rng.random() < 0.4:
            watch, instr = list(sc.SOUND_CLASSES), sc.DEFAULT_INSTRUCTION
        else:
            watch = rng.sample(sc.SOUND_CLASSES, rng.randint(1, 3))
            instr = sc.instruction(rng, mode, watch)
    else:
        instr = sc.instruction(rng, mode)
    voices = [synth.random_voice(rng, voice_split or split) for _ in range(voices_per_stream)]
    n = int(duration * synth.SR)
    audio = synth.background(rng, n).astype(np.float64)
    kinds = kinds or (mode_kinds or {}).get(mode) or _event_kinds(mode)
    events = lay_out(rng, audio, duration,
                     lambda: _event(rng, _pick(rng, kinds), split, mode, watch, voices, speaker, warp, intents))
    if rng.random() < 0.25:  # a TV or radio bed under part of the stream
        bed = synth.at_level(synth.sound(rng, "music"), rng.uniform(-42, -30))
        i = rng.randrange(max(1, n - len(bed)))
        audio[i : i + len(bed)] += bed[: n - i]
    return finish(audio, instr, mode, watch, events)


def lay_out(rng: random.Random, audio: np.ndarray, duration: float, draw, tries: int = 1) -> list[Event]:
    """Events from ``draw()`` (an Event and its audio) mixed into ``audio`` one after another, 0.8-3.5 s
    apart, until one does not fit in what is left of ``duration`` (``tries`` such misses in all)."""
    events: list[Event] = []
    t, misses = rng.uniform(0.4, 2.5), 0
    while misses < tries:
        ev, x = draw()
        if t + len(x) / synth.SR + 0.8 > duration:
            misses += 1
            continue
        i = int(t * synth.SR)
        audio[i : i + len(x)] += x
        ev.start, ev.end = round(t, 3), round(t + len(x) / synth.SR, 3)
        if ev.response is not None:
            ev.due = due(ev)
        events.append(ev)
        t = ev.end + rng.uniform(0.8, 3.5)
    return events


def finish(audio: np.ndarray, instruction: str, mode: str, watch: list[str], events: list[Event]) -> Stream:
    """The stream of mixed ``audio`` (float64, scaled down if it peaks over 0.98) and its labels."""
    peak = np.abs(audio).max()
    if peak > 0.98:
        audio *= 0.98 / peak
    return Stream(audio.astype(np.float32), instruction, mode, watch, events, chunk_labels(events, len(audio)))


# alert sounds that share their first second with another class (synth.py): bells (a doorbell's
# electric bell, an old phone's clapper) and high beeps (a CO alarm's short beeps, a digital timer)
CONFUSABLE = {"doorbell": ("phone",), "phone": ("doorbell",), "smoke_alarm": ("timer",), "timer": ("smoke_alarm",)}


def _event(rng, kind, split, mode, watch, voices, speaker, warp=0.0, intents=None) -> tuple[Event, np.ndarray]:
    if kind in ("command", "other_speech"):
        u = (sc.command(rng, split, _pick(rng, intents) if intents else None) if kind == "command"
             else sc.not_addressed(rng, split))
        voice = rng.choice(voices)
        x = speaker(u.text, voice)
        if warp > 0 and rng.random() < 0.7:
            x = synth.warp(x, rng.uniform(1 - warp, 1 + warp))
        if rng.random() < 0.4:
            x = synth.room(rng, x)
        x = synth.at_level(x, rng.uniform(-32, -18))
        if kind == "other_speech" and rng.random() < 0.3:  # from a TV or radio: band-limited, with a music bed
            from scipy.signal import butter, sosfilt

            sos = butter(4, [rng.uniform(150, 400), rng.uniform(3000, 5000)], btype="band", fs=synth.SR, output="sos")
            x = sosfilt(sos, x).astype(np.float32)
            bed = synth.sound(rng, "music")
            bed = np.resize(bed, len(x)) * (np.sqrt(np.mean(x**2)) * rng.uniform(0.2, 0.6) / (np.sqrt(np.mean(bed**2)) + 1e-9))
            x = x + bed.astype(np.float32)
        response = None
        if mode == "transcribe":
            response = sentence(u.text)
        elif mode in ("assistant", "combined") and u.addressed:
            response = u.response
        return Event("speech", 0, 0, u.text, response, meta={"intent": u.intent, "addressed": u.addressed,
                                                             "voice": voice.label()}), x
    if kind == "real_sound":  # a recording of a real sound the assistant is never asked about
        from .real_audio import training_sounds

        pool = training_sounds("train" if split.startswith("train") else "heldout")
        name = rng.choice(sorted(pool))
        x = pool[name]
        if rng.random() < 0.5:
            x = synth.room(rng, x)
        x = synth.at_level(x, rng.uniform(-30, -6), peak=True)
        return Event("sound", 0, 0, f"real:{name}", None, meta={"watched": False, "recording": name}), x
    if kind == "watched" and watch:
        cls = rng.choice(watch)
    elif kind == "confusable" and (near := sorted({c for w in watch for c in CONFUSABLE.get(w, ()) if c not in watch})):
        cls = rng.choice(near)  # an unwatched sound that sounds like a watched one: the hard negative
    elif kind in ("alert_sound", "watched", "confusable"):
        others = [c for c in sc.SOUND_CLASSES if c not in watch]
        cls = rng.choice(others or sc.SOUND_CLASSES)
    else:
        cls = rng.choice(sc.DISTRACTOR_SOUNDS)
    x = synth.sound(rng, cls)
    if rng.random() < 0.5:
        x = synth.room(rng, x)
    x = synth.at_level(x, rng.uniform(-26, -4) if cls in sc.SOUND_CLASSES else rng.uniform(-34, -10), peak=True)
    response = sc.SOUND_RESPONSES[cls] if cls in watch else None
    return Event("sound", 0, 0, cls, response, meta={"watched": cls in watch}), x


def due(ev: Event) -> float:
    """When a response to ``ev`` is due: 0.25 s after an utterance ends, 0.3 s after a sound starts."""
    return due_time(ev.kind, ev.start, ev.end)


def due_time(kind: str, start: float, end: float, sound_due: float = SOUND_DUE_S) -> float:
    return round((end + SPEECH_DUE_S) if kind == "speech" else (start + sound_due), 3)


def due_chunk(t: float) -> int:
    """The chunk whose end is the first at or after ``t``: where a response due at ``t`` belongs."""
    return max(0, math.ceil(t / CHUNK_S - 1e-9) - 1)


def chunk_labels(events: list[Event], n_samples: int) -> list[str | None]:
    return _labels(events, n_samples // int(CHUNK_S * synth.SR))


def relabel(meta: dict, sound_due: float) -> dict:
    """A stored stream's metadata with every watched sound's response due ``sound_due`` s after
    its onset (speech unchanged), and the chunk labels placed again from those times."""
    events = []
    for e in meta["events"]:
        ev = Event(**e)
        if ev.response is not None:
            ev.due = due_time(ev.kind, ev.start, ev.end, sound_due)
        events.append(ev)
    return meta | {"events": [dataclasses.asdict(e) for e in events],
                   "labels": _labels(events, len(meta["labels"]))}


def _labels(events: list[Event], n_chunks: int) -> list[str | None]:
    labels: list[str | None] = [None] * n_chunks
    for ev in events:
        if ev.response is None:
            continue
        c = due_chunk(ev.due)
        while c < n_chunks and labels[c] is not None:
            c += 1
        if c < n_chunks:
            labels[c] = ev.response
    return labels


def scripted_stream(items: list[tuple], seed: int, mode: str, watch: list[str], instruction: str,
                    gap: float = 1.5, lead: float = 1.0) -> Stream:
    """A hand-written stream (the demo): items are ``("speech", text, Voice, reply)`` (reply: what the
    assistant answers, None when the line is not addressed to it) or ``("sound", class)``,
    placed one after another with ``gap`` seconds between them, labelled as ``make_stream`` does."""
    rng = random.Random(f"script:{seed}")
    speaker = Speaker()
    parts, events, t = [], [], lead
    for item in items:
        if item[0] == "speech":
            _, text, voice, answer = item
            x = synth.at_level(speaker(text, voice), rng.uniform(-26, -20))
            reply = None
            if mode == "transcribe":
                reply = sentence(text)
            elif mode in ("assistant", "combined"):
                reply = answer
            meta = {"addressed": answer is not None, "voice": voice.label()}
            if answer is not None:
                meta["intent"] = "unknown" if answer == sc.SORRY else "request"
            ev = Event("speech", t, t + len(x) / synth.SR, text, reply, meta=meta)
        else:
            cls = item[1]
            x = synth.at_level(synth.sound(rng, cls), rng.uniform(-14, -8), peak=True)
            reply = sc.SOUND_RESPONSES[cls] if cls in watch else None
            ev = Event("sound", t, t + len(x) / synth.SR, cls, reply, meta={"watched": cls in watch})
        ev.start, ev.end = round(ev.start, 3), round(ev.end, 3)
        if reply is not None:
            ev.due = due(ev)
        parts.append((t, x))
        events.append(ev)
        t = ev.end + gap
    n = int((t + lead) * synth.SR)
    audio = synth.background(rng, n).astype(np.float64)
    for start, x in parts:
        i = int(start * synth.SR)
        audio[i : i + len(x)] += x
    return Stream(audio.astype(np.float32), instruction, mode, watch, events, chunk_labels(events, n))


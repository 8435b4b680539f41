"""Streams of real recordings: the reserved held-out set, for evaluation only.

DEVELOPERS.md reserves the recordings of real people and real sounds that ship in Debian and PyPI
packages as the held-out acceptance set of the trained model: nothing here is used to train or
tune it. ``edge-train-eval --sets real-assistant,real-alerts,real-transcribe`` scores the model on
streams built from them, exactly as it scores the synthetic streams (``streams.make_stream``: the
same room noise under them, levels, echo and gaps, the same labels and matching):

- speech: the Asterisk English prompts (one real speaker, 8 kHz telephone recordings, with their
  published transcripts; ``asterisk-core-sounds-en-wav``, ``asterisk-core-sounds-en``). None says
  the assistant's name, so under an assistant or alert instruction every response to them is false;
- sounds: the Scratch 1.4 sound library (``scratch``: animals, people, household effects,
  instruments, music loops; CC-BY-SA-3.0) and the freedesktop sound theme
  (``sound-theme-freedesktop``; CC-BY-SA-3.0, CC-BY-3.0, GPL-2+). Of the alert classes only the
  phone has a recording there (``phone-incoming-call``, rung two to three times with pauses, as
  a phone rings); every other recording is a sound the assistant was not asked about. Recordings
  that a listener could take for an alert class (``LEFT_OUT``), voices saying or singing words
  (``VOICES``: Scratch's vocals, the theme's "front left" channel tests) and recordings that
  nearly vanish at 16 kHz are left out.

Sets (``SETS``): ``real-assistant`` (assistant instruction; real speech and sounds, nothing
addressed), ``real-alerts`` (an alert instruction; the phone watched in half the streams; real
speech, the phone and other sounds), ``real-transcribe`` (transcribe instruction; the prompts'
words as the expected transcripts).

Apart from them, ``training_sounds`` reads recordings of real sounds from packages that are not
reserved (``TRAINING_SOUND_GLOBS``), for training: a recipe's ``data.kinds`` ``"real_sound"``.
"""

from __future__ import annotations

import functools
import random
import re
import zlib
from pathlib import Path

import numpy as np

from . import scenarios as sc
from . import streams as st
from . import synth

SOUND_DIRS = (Path("/usr/share/scratch/Media/Sounds"), Path("/usr/share/sounds/freedesktop/stereo"))
CLASS_OF = {"phone-incoming-call": "phone"}  # recordings of an alert class (file stem -> class)
LEFT_OUT = {
    # a listener could name these as an alert class: not counted either way
    "alarm-clock-elapsed", "phone-outgoing-calling", "phone-outgoing-busy", "bell", "BellToll",
}
VOICES = ("Vocals", "audio-channel-", "audio-test-signal")  # words spoken or sung: not sounds, not transcribed speech
KINDS = {  # per mode: how often each kind of event is drawn
    "assistant": {"speech": 0.6, "sound": 0.3, "phone": 0.1},
    "alerts": {"speech": 0.3, "sound": 0.4, "phone": 0.3},
    "transcribe": {"speech": 0.75, "sound": 0.25},
}
SETS = {"real-assistant": "assistant", "real-alerts": "alerts", "real-transcribe": "transcribe"}


def _read(path: Path) -> np.ndarray:
    """A recording as 16 kHz mono float32 (its first channel)."""
    import soundfile as sf

    from edge_runtime.audio import Resampler

    x, sr = sf.read(path, dtype="float32", always_2d=True)
    r = Resampler(sr, synth.SR)
    return np.concatenate([r.process(x[:, 0]), r.flush()]).astype(np.float32)


AUDIO_SUFFIXES = (".wav", ".mp3", ".oga", ".ogg")


def _recordings(files, packages: str) -> dict[str, np.ndarray]:
    """{file stem: 16 kHz audio, quiet edges trimmed} of ``files``; files libsndfile cannot read,
    shorter than 0.05 s or nearly silent at 16 kHz are skipped. FileNotFoundError naming the
    Debian ``packages`` when none is left."""
    out = {}
    for p in files:
        try:
            x = _read(p)
        except (RuntimeError, ValueError):  # libsndfile cannot read it: not part of the set
            continue
        loud = np.flatnonzero(np.abs(x) > 0.01 * (np.abs(x).max() + 1e-9))
        if len(loud) and np.abs(x).max() > 1e-3:
            x = x[loud[0] : loud[-1] + 1]
            if len(x) >= 0.05 * synth.SR:
                out[p.stem] = x
    if not out:
        raise FileNotFoundError(f"no sound recordings found: install the Debian packages {packages}")
    return out


@functools.lru_cache(maxsize=2)
def real_sounds(dirs: tuple[Path, ...] = SOUND_DIRS) -> dict[str, np.ndarray]:
    """{file stem: 16 kHz audio} of the reserved sound recordings under ``dirs`` but those in
    ``LEFT_OUT`` or ``VOICES`` (``_recordings``)."""
    files = [p for d in dirs for p in (sorted(d.rglob("*")) if d.is_dir() else ())
             if p.suffix.lower() in AUDIO_SUFFIXES and p.stem not in LEFT_OUT
             and p.parent.name not in VOICES and not p.stem.startswith(VOICES)]
    return _recordings(files, "scratch and sound-theme-freedesktop")


# Recordings that are NOT reserved, for training (a recipe's data.kinds "real_sound"): real sounds
# of the world from other Debian packages, every one a sound the assistant is never asked about.
# tuxpaint-stamps-default (GPL-2: animals, household, vehicles, instruments; its spoken names and
# the letters and numbers are left out), oxygen-sounds, yaru-theme-sound, deepin-sound-theme
# (desktop sounds). A recording named like an alert class is left out.
TRAINING_SOUND_GLOBS = (("/usr/share/tuxpaint/stamps", "**/*"), ("/usr/share/sounds", "Oxygen-*"),
                        ("/usr/share/sounds/Yaru", "**/*"), ("/usr/share/sounds/deepin", "**/*"))
TRAINING_PACKAGES = "tuxpaint-stamps-default oxygen-sounds yaru-theme-sound deepin-sound-theme"
ALERT_WORDS = {"phone", "ring", "ringing", "bell", "doorbell", "alarm", "clock", "door", "knock", "timer", "smoke",
               "glass"}


def _training_file(p: Path) -> bool:
    words = {w.lower() for w in re.split(r"[_\-\s]+", p.stem)}
    return (p.suffix.lower() in AUDIO_SUFFIXES and "symbols" not in p.parts
            and not words & {"desc", "name"} and not words & ALERT_WORDS)


@functools.lru_cache(maxsize=2)
def training_sounds(split: str = "train") -> dict[str, np.ndarray]:
    """The unreserved recordings of ``split``: one in five (by a hash of its name) is kept for
    validation ("heldout"), the rest is for training ("train")."""
    files = sorted({p for root, pattern in TRAINING_SOUND_GLOBS for p in Path(root).glob(pattern)
                    if p.is_file() and _training_file(p)})
    held = lambda p: zlib.crc32(p.stem.encode()) % 5 == 0  # noqa: E731
    return _recordings([p for p in files if held(p) == (split != "train")], TRAINING_PACKAGES)


MAX_UTTERANCE_S = 12.0  # longer prompts (menus read out for half a minute) are left out


@functools.lru_cache(maxsize=1)
def real_speech() -> list[tuple[str, np.ndarray, str]]:
    """[(name, 16 kHz audio, transcript)] of the Asterisk prompts (``edge_bench.asr``) up to
    ``MAX_UTTERANCE_S`` long whose transcript is the words said (not "(5 seconds of silence)")."""
    from edge_bench.asr import asterisk_items

    return [(name, x, text.strip(". ")) for name, x, text in asterisk_items()
            if len(x) <= MAX_UTTERANCE_S * synth.SR and "(" not in text and text.strip(". ")]


def phone_ringing(rng: random.Random, ring: np.ndarray) -> np.ndarray:
    """A phone ringing: the ring recording two or three times, 1-2 s apart."""
    parts, t = [], 0.0
    for _ in range(rng.randint(2, 3)):
        parts.append((t, ring))
        t += len(ring) / synth.SR + rng.uniform(1.0, 2.0)
    last = parts[-1][0]
    return synth._place(last + len(ring) / synth.SR, parts)[: int(last * synth.SR) + len(ring)].astype(np.float32)


def make_stream(seed: int, mode: str, duration: float = 60.0, sounds: dict[str, np.ndarray] | None = None,
                speech: list | None = None) -> st.Stream:
    """One stream of real recordings (``mode``: assistant, alerts or transcribe), laid out as
    ``streams.make_stream`` lays out synthetic ones. ``seed`` fixes everything."""
    rng = random.Random(f"real:{mode}:{seed}")
    sounds = real_sounds() if sounds is None else sounds
    speech = real_speech() if speech is None else speech
    rings = [k for k in sounds if k in CLASS_OF]
    others = sorted(k for k in sounds if k not in CLASS_OF)
    watch: list[str] = []
    if mode == "alerts":
        phone = rng.random() < 0.5  # the one class with a recording: watched in half the streams
        watch = rng.sample([c for c in sc.SOUND_CLASSES if c != "phone"], rng.randint(0 if phone else 1, 2))
        watch += ["phone"] if phone else []
        instr = sc.instruction(rng, mode, watch)
    else:
        instr = sc.instruction(rng, mode)
    kinds = dict(KINDS[mode])
    if not rings:
        kinds.pop("phone", None)
    audio = synth.background(rng, int(duration * synth.SR)).astype(np.float64)

    def draw() -> tuple[st.Event, np.ndarray]:
        kind = st._pick(rng, kinds)
        if kind == "speech":
            name, x, text = rng.choice(speech)
            if rng.random() < 0.4:
                x = synth.room(rng, x)
            x = synth.at_level(x, rng.uniform(-32, -18))
            return st.Event("speech", 0, 0, text, st.sentence(text) if mode == "transcribe" else None,
                            meta={"intent": "other", "addressed": False, "recording": name}), x
        name = rng.choice(rings) if kind == "phone" else rng.choice(others)
        cls = CLASS_OF.get(name)
        x = phone_ringing(rng, sounds[name]) if cls == "phone" else sounds[name]
        if rng.random() < 0.5:
            x = synth.room(rng, x)
        x = synth.at_level(x, rng.uniform(-26, -4) if cls else rng.uniform(-34, -10), peak=True)
        watched = cls is not None and cls in watch
        return st.Event("sound", 0, 0, cls or f"real:{name}", sc.SOUND_RESPONSES[cls] if watched else None,
                        meta={"watched": watched, "recording": name}), x

    # a long recording that does not fit in what is left of the stream: draw another, up to 10 times
    return st.finish(audio, instr, mode, watch, st.lay_out(rng, audio, duration, draw, tries=10))

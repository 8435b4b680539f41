"""Audio for training and evaluation streams: text-to-speech through the Debian TTS engines, and
environment sounds synthesized procedurally (every instance from its own random parameters).

Voices are split by *speaker and engine*: training speech comes from espeak-ng (its English voices
times its voice variants) and festival's ``ked_diphone``; held-out speech comes from flite (kal,
kal16, awb, rms, slt) and festival's ``kal_diphone`` (flite's kal speaker), an engine and speakers
the model never hears in training. flite's awb/rms/slt voices are built from CMU ARCTIC recordings:
they are used for evaluation only, never for training.

All audio is float32 mono at 16 kHz.
"""

from __future__ import annotations

import dataclasses
import io
import random
import shutil
import subprocess

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve, lfilter, resample_poly

SR = 16000

ESPEAK_BASES = ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029"]
ESPEAK_VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
                   "klatt3", "klatt4", "Alex", "Andy", "Annie", "adam", "anika", "aunty", "belinda", "benjamin",
                   "caleb", "david", "ed", "edward", "grandma", "grandpa", "iven", "john", "linda", "max", "michel",
                   "norbert", "paul", "quincy", "rob", "robert", "steph", "travis", "victor", "zac", "Lee", "Mike"]
FLITE_VOICES = ["kal", "kal16", "awb", "rms", "slt"]
TTS_SPLITS = {"train": ["espeak-ng", "festival-ked"], "heldout": ["flite", "festival-kal"]}
TTS_LICENSES = {
    "espeak-ng": "espeak-ng (Debian package espeak-ng), GPL-3.0-or-later; generated audio carries no license",
    "festival-ked": "festival + festvox-kdlpc16k (ked_diphone), free use (Festvox/CMU licence)",
    "festival-kal": "festival + festvox-kallpc16k (kal_diphone), free use (Festvox/CMU licence); evaluation only",
    "flite": "flite (Debian package flite), BSD-like; voices awb/rms/slt from CMU ARCTIC; evaluation only",
}


@dataclasses.dataclass(frozen=True)
class Voice:
    engine: str  # espeak-ng | festival-ked | festival-kal | flite
    name: str
    rate: float = 1.0  # speaking-rate factor
    pitch: int = 50  # espeak-ng pitch 0-99

    def label(self) -> str:
        return f"{self.engine}:{self.name}:{self.rate:.2f}:{self.pitch}"


def random_voice(rng: random.Random, split: str) -> Voice:
    engines = TTS_SPLITS[split]
    engine = engines[0] if rng.random() < 0.8 else engines[1]  # festival has one speaker each
    rate = rng.uniform(0.8, 1.25)
    if engine == "espeak-ng":
        v = rng.choice(ESPEAK_VARIANTS)
        return Voice(engine, rng.choice(ESPEAK_BASES) + (f"+{v}" if v else ""), rate, rng.randint(25, 75))
    if engine == "flite":
        return Voice(engine, rng.choice(FLITE_VOICES), rate)
    return Voice(engine, engine.split("-")[1], rate)


class TTSMissing(RuntimeError):
    pass


def _need(exe: str, pkg: str) -> str:
    path = shutil.which(exe)
    if path is None:
        raise TTSMissing(f"{exe} not found: apt-get install {pkg}")
    return path


def speak(text: str, voice: Voice) -> np.ndarray:
    """Synthesize ``text`` -> float32 16 kHz, leading and trailing silence trimmed."""
    if voice.engine == "espeak-ng":
        cmd = [_need("espeak-ng", "espeak-ng"), "-v", voice.name, "-s", str(int(165 * voice.rate)),
               "-p", str(voice.pitch), "--stdout", text]
        wav = subprocess.run(cmd, check=True, capture_output=True).stdout
    elif voice.engine == "flite":
        cmd = [_need("flite", "flite"), "-voice", voice.name, "--setf", f"duration_stretch={1 / voice.rate:.3f}",
               "-t", text, "-o", "/dev/stdout"]
        wav = subprocess.run(cmd, check=True, capture_output=True).stdout
    elif voice.engine.startswith("festival-"):
        scm = f"(voice_{voice.name}_diphone)"
        stretch = f"(Parameter.set 'Duration_Stretch {1 / voice.rate:.3f})"
        cmd = [_need("text2wave", "festival festvox-kdlpc16k festvox-kallpc16k"), "-eval", scm, "-eval", stretch,
               "-o", "/dev/stdout"]
        wav = subprocess.run(cmd, input=text.encode(), check=True, capture_output=True).stdout
    else:
        raise ValueError(f"unknown TTS engine {voice.engine!r}")
    x, sr = sf.read(io.BytesIO(_fix_wav_header(wav)), dtype="float32", always_2d=True)
    x = x[:, 0]
    if sr != SR:
        g = np.gcd(sr, SR)
        x = resample_poly(x, SR // g, sr // g).astype(np.float32)
    return trim(x)


def _fix_wav_header(wav: bytes) -> bytes:
    """WAVs written to a pipe carry placeholder sizes; rewrite them from the real length."""
    if wav[:4] != b"RIFF":
        raise RuntimeError("TTS engine wrote no WAV")
    b = bytearray(wav)
    b[4:8] = (len(b) - 8).to_bytes(4, "little")
    i = b.find(b"data")
    if i > 0:
        b[i + 4 : i + 8] = (len(b) - i - 8).to_bytes(4, "little")
    return bytes(b)


def trim(x: np.ndarray, db: float = -45.0) -> np.ndarray:
    """Cut leading/trailing audio quieter than ``db`` below the peak (10 ms frames)."""
    if not len(x):
        return x
    f = 160
    n = len(x) // f
    if n == 0:
        return x
    e = np.sqrt(np.mean(x[: n * f].reshape(n, f) ** 2, axis=1) + 1e-12)
    on = np.nonzero(20 * np.log10(e / (e.max() + 1e-12)) > db)[0]
    if not len(on):
        return x[:0]
    return x[on[0] * f : (on[-1] + 1) * f].copy()


# --------------------------------------------------------------------------- sound synthesis
# Each generator draws its own parameters from ``rng``, so instances differ in pitch, timbre,
# cadence and length; evaluation uses seeds no training stream used.


def _t(dur: float) -> np.ndarray:
    return np.arange(int(dur * SR)) / SR


def _env(n: int, attack: float, release: float) -> np.ndarray:
    a, r = max(1, int(attack * SR)), max(1, int(release * SR))
    e = np.ones(n)
    e[: min(a, n)] = np.linspace(0, 1, min(a, n))
    e[max(0, n - r) :] *= np.linspace(1, 0, n - max(0, n - r))
    return e


def _place(total: float, parts: list[tuple[float, np.ndarray]]) -> np.ndarray:
    out = np.zeros(int(total * SR) + 1)
    for start, p in parts:
        i = int(start * SR)
        j = min(len(out), i + len(p))
        if j > i:
            out[i:j] += p[: j - i]
    return out


def _tone(rng, f: float, dur: float, square: float) -> np.ndarray:
    t = _t(dur)
    s = np.sin(2 * np.pi * f * t)
    if square > 0:  # odd harmonics: piezo sounders are not pure sines
        s = s + square * (np.sin(6 * np.pi * f * t) / 3 + np.sin(10 * np.pi * f * t) / 5)
    return s * _env(len(t), 0.005, 0.005)


def _decay_partials(rng, freqs, amps, dur: float, tau: float) -> np.ndarray:
    t = _t(dur)
    return sum(a * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) * np.exp(-t / (tau * rng.uniform(0.6, 1.4)))
               for f, a in zip(freqs, amps)) * _env(len(t), 0.002, 0.01)


def smoke_alarm(rng) -> np.ndarray:
    f = rng.uniform(2900, 3500)
    sq = rng.uniform(0.2, 0.8)
    if rng.random() < 0.7:  # smoke: temporal-three pattern, 0.5 s beeps
        on, off, n, pause = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.55), 3, rng.uniform(1.0, 1.6)
    else:  # CO: four short beeps
        on, off, n, pause = rng.uniform(0.08, 0.15), rng.uniform(0.08, 0.15), 4, rng.uniform(1.5, 4.0)
    parts, t = [], 0.0
    total = rng.uniform(3.0, 7.0)
    while t < total:
        for _ in range(n):
            parts.append((t, _tone(rng, f, on, sq)))
            t += on + off
        t += pause - off
    return _place(t, parts)


def doorbell(rng) -> np.ndarray:
    kind = rng.random()
    if kind < 0.6:  # ding-dong chime: two struck bars, a third or fourth apart
        f1 = rng.uniform(500, 900)
        f2 = f1 / rng.choice([1.26, 1.33, 1.5])
        tau = rng.uniform(0.5, 1.2)
        bar = lambda f: _decay_partials(rng, [f, 2.76 * f, 5.4 * f], [1, 0.4, 0.15], 1.8, tau)  # noqa: E731
        gap = rng.uniform(0.35, 0.7)
        reps = rng.choice([1, 1, 2])
        parts = []
        for r in range(reps):
            parts += [(r * 2.2, bar(f1)), (r * 2.2 + gap, bar(f2))]
        return _place(2.2 * reps + 0.5, parts)
    if kind < 0.8:  # electric bell: a clapper hammering a gong
        dur = rng.uniform(1.0, 2.5)
        f = rng.uniform(700, 1400)
        t = _t(dur)
        ring = _decay_partials(rng, [f, 2.1 * f, 3.3 * f], [1, 0.5, 0.3], dur, 2.0)
        am = 0.55 + 0.45 * np.sign(np.sin(2 * np.pi * rng.uniform(18, 30) * t))
        return ring * am * _env(len(t), 0.005, 0.05)
    # three-note chime
    f = rng.uniform(600, 1000)
    notes = [f, f * 1.26, f * 1.5][:: rng.choice([1, -1])]
    return _place(2.5, [(i * 0.35, _decay_partials(rng, [n, 2.76 * n], [1, 0.3], 1.6, 0.6)) for i, n in enumerate(notes)])


def knocking(rng) -> np.ndarray:
    groups = rng.choice([1, 1, 2])
    parts, t = [], 0.0
    f0 = rng.uniform(90, 260)
    for _ in range(groups):
        for _ in range(rng.randint(2, 5)):
            n = int(rng.uniform(0.06, 0.12) * SR)
            burst = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(n)
            burst = lfilter([1], [1, -rng.uniform(0.85, 0.97)], burst)  # wooden: low-passed
            tt = np.arange(n) / SR
            body = np.sin(2 * np.pi * f0 * rng.uniform(0.9, 1.1) * tt) * 4
            hit = (burst / (np.abs(burst).max() + 1e-9) + body) * np.exp(-tt / rng.uniform(0.015, 0.04))
            parts.append((t, hit * rng.uniform(0.6, 1.0)))
            t += rng.uniform(0.15, 0.3)
        t += rng.uniform(0.6, 1.2)
    return _place(t, parts)


def phone(rng) -> np.ndarray:
    kind = rng.random()
    total = rng.uniform(2.5, 6.0)
    if kind < 0.4:  # dual-tone ring, UK-style double cadence or US long ring
        fa, fb = rng.choice([(400, 450), (440, 480), (425, 475)])
        cad = [(0.4, 0.2), (0.4, 2.0)] if rng.random() < 0.5 else [(rng.uniform(1.0, 2.0), rng.uniform(1.0, 3.0))]
        mk = lambda d: (np.sin(2 * np.pi * fa * _t(d)) + np.sin(2 * np.pi * fb * _t(d))) * _env(int(d * SR), 0.01, 0.01)  # noqa: E731
    elif kind < 0.75:  # electronic trill: two tones alternating fast
        fa, fb = rng.uniform(900, 1200), rng.uniform(1300, 1700)
        rate = rng.uniform(12, 25)

        def mk(d):
            t = _t(d)
            sel = np.sin(2 * np.pi * rate * t) > 0
            return np.where(sel, np.sin(2 * np.pi * fa * t), np.sin(2 * np.pi * fb * t)) * _env(len(t), 0.01, 0.01)

        cad = [(rng.uniform(0.8, 1.6), rng.uniform(0.8, 2.0))]
    else:  # old bell phone: a clapper at ~20 Hz on two bells
        f = rng.uniform(900, 1300)

        def mk(d):
            t = _t(d)
            return (_decay_partials(rng, [f, 1.18 * f, 2.4 * f], [1, 0.8, 0.3], d, 3.0)
                    * (0.5 + 0.5 * np.sign(np.sin(2 * np.pi * 20 * t))))

        cad = [(rng.uniform(1.0, 2.0), rng.uniform(1.5, 3.0))]
    parts, t = [], 0.0
    while t < total:
        for on, off in cad:
            parts.append((t, mk(on)))
            t += on + off
    return _place(t, parts)


def timer(rng) -> np.ndarray:
    if rng.random() < 0.75:  # digital kitchen timer: fast beep groups
        f = rng.uniform(1800, 4200)
        on = rng.uniform(0.05, 0.1)
        n = rng.choice([2, 3, 4, 4, 5])
        gap = rng.uniform(0.4, 0.9)
        parts, t = [], 0.0
        total = rng.uniform(2.5, 6.0)
        while t < total:
            for _ in range(n):
                parts.append((t, _tone(rng, f, on, rng.uniform(0, 0.5))))
                t += on * 2
            t += gap
        return _place(t, parts)
    # mechanical wind-up timer: a small bell struck very fast for a second or two
    f = rng.uniform(2000, 3200)
    d = rng.uniform(1.2, 2.5)
    t = _t(d)
    ring = _decay_partials(rng, [f, 1.5 * f, 2.7 * f], [1, 0.5, 0.3], d, 5.0)
    return ring * (0.4 + 0.6 * np.abs(np.sin(2 * np.pi * rng.uniform(12, 18) * t))) * _env(len(t), 0.003, 0.05)


def glass(rng) -> np.ndarray:
    d = rng.uniform(1.0, 2.0)
    g = np.random.default_rng(rng.randrange(1 << 30))
    n = int(d * SR)
    t = np.arange(n) / SR
    crash = g.standard_normal(n) * np.exp(-t / rng.uniform(0.05, 0.15))
    crash = crash - lfilter([1], [1, -0.7], crash) * 0.5  # tilt towards highs
    out = crash * 0.8
    for _ in range(rng.randint(15, 40)):  # shards: short high resonances falling after the crash
        start = rng.uniform(0, d * 0.7)
        f = rng.uniform(2500, 7500)
        dd = rng.uniform(0.03, 0.2)
        out += _place(d, [(start, _decay_partials(rng, [f, f * 1.63], [1, 0.4], dd, dd / 3) * rng.uniform(0.1, 0.5))])[:n]
    return out


def music(rng) -> np.ndarray:
    d = rng.uniform(3, 8)
    bpm = rng.uniform(70, 140)
    beat = 60 / bpm
    root = rng.uniform(110, 220)
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    parts, t = [], 0.0
    while t < d:
        notes = [root * 2 ** (rng.choice(scale) / 12) * rng.choice([1, 2]) for _ in range(rng.randint(1, 3))]
        dur = beat * rng.choice([0.5, 1, 1, 2])
        tt = _t(dur)
        chord = sum(np.sin(2 * np.pi * f * tt) + 0.3 * np.sin(4 * np.pi * f * tt) for f in notes) / len(notes)
        parts.append((t, chord * _env(len(tt), 0.02, dur * 0.4)))
        if rng.random() < 0.6:  # a drum hit
            nn = int(0.08 * SR)
            parts.append((t, np.random.default_rng(rng.randrange(1 << 30)).standard_normal(nn) * np.exp(-np.arange(nn) / 300) * 0.4))
        t += dur
    return _place(d, parts)


def _noise(rng, n: int, color: float) -> np.ndarray:
    """color 0: white, ~0.95: brown-ish."""
    w = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(n)
    return lfilter([1], [1, -color], w) if color else w


def _hits(rng, count: tuple[int, int], hit_s: float, color: float, decay: float, gap: tuple[float, float],
          tail: float) -> np.ndarray:
    """A run of short noise hits (steps, claps): ``decay`` in samples, ``gap`` in seconds."""
    parts, t = [], 0.0
    for _ in range(rng.randint(*count)):
        n = int(hit_s * SR)
        parts.append((t, _noise(rng, n, color) * np.exp(-np.arange(n) / decay)))
        t += rng.uniform(*gap)
    return _place(t + tail, parts)


def distractor(rng, kind: str) -> np.ndarray:
    if kind == "music":
        return music(rng)
    if kind == "noise_burst":  # a door slam, a dropped book
        n = int(rng.uniform(0.2, 0.6) * SR)
        return _noise(rng, n, rng.uniform(0.8, 0.98)) * np.exp(-np.arange(n) / (rng.uniform(0.03, 0.1) * SR))
    if kind == "water":
        d = rng.uniform(2, 6)
        n = int(d * SR)
        am = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * _t(d))
        return _noise(rng, n, rng.uniform(0.0, 0.5)) * am * _env(n, 0.2, 0.3)
    if kind == "footsteps":
        return _hits(rng, (3, 10), 0.1, 0.97, 400, (0.4, 0.7), 0.2)
    if kind == "clapping":
        return _hits(rng, (3, 12), 0.03, 0.3, 100, (0.15, 0.5), 0.1)
    if kind == "hum":  # fridge, fan
        d = rng.uniform(2, 6)
        f = rng.choice([50, 60, 100, 120])
        t = _t(d)
        return (sum(np.sin(2 * np.pi * f * k * t) / k for k in range(1, 6)) + 0.3 * _noise(rng, len(t), 0.9)) * _env(len(t), 0.3, 0.3)
    raise ValueError(kind)


MAX_SOUND_S = 6.0
SOUNDS = {"smoke_alarm": smoke_alarm, "doorbell": doorbell, "knocking": knocking, "phone": phone,
          "timer": timer, "glass": glass}


def sound(rng: random.Random, kind: str) -> np.ndarray:
    x = SOUNDS[kind](rng) if kind in SOUNDS else distractor(rng, kind)
    x = np.asarray(x, np.float64)[: int(MAX_SOUND_S * SR)]
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


# --------------------------------------------------------------------------- rooms and levels


def warp(x: np.ndarray, factor: float) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (and higher): a cheap new speaker from an existing voice."""
    up, down = 100, max(1, int(round(100 * factor)))
    return resample_poly(x, up, down).astype(np.float32)


def room(rng: random.Random, x: np.ndarray) -> np.ndarray:
    """A simple room: direct sound plus exponentially decaying diffuse reverb (RT60 0.15-0.7 s)."""
    rt60 = rng.uniform(0.15, 0.7)
    n = int(rt60 * SR)
    g = np.random.default_rng(rng.randrange(1 << 30))
    ir = g.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n) * rng.uniform(0.05, 0.3)
    ir[0] = 1.0
    y = fftconvolve(x, ir)[: len(x) + n // 2]
    return (y / (np.abs(y).max() + 1e-9) * np.abs(x).max()).astype(np.float32)


def at_level(x: np.ndarray, dbfs: float, peak: bool = False) -> np.ndarray:
    ref = np.abs(x).max() if peak else np.sqrt(np.mean(x.astype(np.float64) ** 2))
    return (x * (10 ** (dbfs / 20) / (ref + 1e-12))).astype(np.float32)


def heard_as_in_a_stream(rng: random.Random, voice: np.ndarray, room_echo: bool = False, noise: bool = False,
                         music: bool = False) -> np.ndarray:
    """``voice`` as a recogniser gets it from a stream: at a stream's speech level (-32 to -18 dBFS),
    0.2 s before it and 0.3 s after, with the stream builder's conditions asked for: a room's echo
    (``room``), steady background noise (``background``), a TV or radio music bed (-42 to -30 dBFS)."""
    x = room(rng, voice) if room_echo else voice
    x = at_level(x, rng.uniform(-32, -18))
    x = np.concatenate([np.zeros(int(0.2 * SR), np.float32), x, np.zeros(int(0.3 * SR), np.float32)])
    if noise:
        x = x + background(rng, len(x))
    if music:
        x = x + np.resize(at_level(sound(rng, "music"), rng.uniform(-42, -30)), len(x))
    return x.astype(np.float32)


def background(rng: random.Random, n: int) -> np.ndarray:
    """Steady room noise (white to brown) at -70..-42 dBFS."""
    return at_level(_noise(rng, n, rng.choice([0.0, 0.5, 0.9, 0.98])).astype(np.float32), rng.uniform(-70, -42))

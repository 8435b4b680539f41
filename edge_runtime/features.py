"""Streaming log-mel features (numpy), the runtime half of the bundle's feature recipe.

The recipe is Whisper's log-mel (400-point Hann STFT, 10 ms hop, Slaney mel filters, log10)
made *causal* so that it can be computed incrementally with exact chunk-size invariance:

- frame ``i`` covers samples ``[(i + 1) * hop - n_fft, (i + 1) * hop)``, with zeros before the
  stream starts, so every ``hop`` samples of input complete exactly one frame;
- the dynamic-range clamp is a fixed floor (``log_floor``) instead of Whisper's per-clip
  ``max - 8``, which would need the whole clip.

``models/`` computes the same recipe with ``torch.stft``; a test holds the two equal.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

__all__ = ["FeatureRecipe", "mel_filterbank", "LogMelStream", "log_mel"]


@dataclasses.dataclass(frozen=True)
class FeatureRecipe:
    """Exact log-mel parameters; stored under ``features`` in manifest.json.

    sample_rate: Hertz. n_fft, hop_length: samples. n_mels: mel bands.
    fmin, fmax: Hertz, band edges of the filterbank.
    log_floor: lower clamp of log10 power, applied before ``(x + offset) / scale``.
    """

    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    log_floor: float = -8.0
    offset: float = 4.0
    scale: float = 4.0
    mel_scale: str = "slaney"
    framing: str = "causal"

    def __post_init__(self) -> None:
        if self.hop_length <= 0 or self.n_fft < self.hop_length:
            raise ValueError(f"features: need 0 < hop_length <= n_fft, got {self.hop_length}, {self.n_fft}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"features: need 0 <= fmin < fmax <= sample_rate/2, got {self.fmin}, {self.fmax}")
        if self.mel_scale != "slaney" or self.framing != "causal":
            raise ValueError(f"features: unsupported mel_scale/framing {self.mel_scale!r}/{self.framing!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureRecipe":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"features: unknown field(s) {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def silence_value(self) -> float:
        """The feature value of digital silence (every band at the floor)."""
        return (self.log_floor + self.offset) / self.scale


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    # Slaney: linear below 1 kHz, logarithmic above.
    f = np.asarray(f, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = f / f_sp
    log_region = f >= min_log_hz
    mel[log_region] = min_log_mel + np.log(f[log_region] / min_log_hz) / logstep
    return mel


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    f = m * f_sp
    log_region = m >= min_log_mel
    f[log_region] = min_log_hz * np.exp(logstep * (m[log_region] - min_log_mel))
    return f


def mel_filterbank(recipe: FeatureRecipe) -> np.ndarray:
    """Slaney-normalised triangular filters, (n_mels, n_fft // 2 + 1) float32 (librosa's / Whisper's)."""
    n_freqs = recipe.n_fft // 2 + 1
    fft_hz = np.linspace(0.0, recipe.sample_rate / 2, n_freqs)
    mel_pts = np.linspace(_hz_to_mel(np.array([recipe.fmin]))[0], _hz_to_mel(np.array([recipe.fmax]))[0], recipe.n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)
    widths = np.diff(hz_pts)  # (n_mels + 1,)
    ramps = hz_pts[:, None] - fft_hz[None, :]  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]  # equal area per band
    return weights.astype(np.float32)


class LogMelStream:
    """Incremental causal log-mel: push samples of any length, get the frames they complete.

    Holds all per-stream state (the last ``n_fft - hop`` samples and any partial hop);
    ``reset()`` returns it to the start of a stream.
    """

    def __init__(self, recipe: FeatureRecipe):
        self.recipe = recipe
        self._filters = mel_filterbank(recipe)
        n = np.arange(recipe.n_fft)
        self._window = (0.5 - 0.5 * np.cos(2 * np.pi * n / recipe.n_fft)).astype(np.float32)  # periodic Hann
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros(self.recipe.n_fft - self.recipe.hop_length, dtype=np.float32)
        self.frames_done = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        """samples: float32 mono at the recipe's rate. Returns (n_mels, n_new_frames) float32."""
        r = self.recipe
        buf = np.concatenate([self._buf, np.asarray(samples, dtype=np.float32).reshape(-1)])
        n_frames = (len(buf) - (r.n_fft - r.hop_length)) // r.hop_length
        if n_frames <= 0:
            self._buf = buf
            return np.zeros((r.n_mels, 0), dtype=np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(buf, r.n_fft)[:: r.hop_length][:n_frames]  # (F, n_fft)
        self._buf = buf[n_frames * r.hop_length :].copy()
        self.frames_done += n_frames
        return self._log_mel_frames(frames)

    def _log_mel_frames(self, frames: np.ndarray) -> np.ndarray:
        r = self.recipe
        spec = np.fft.rfft(frames * self._window, n=r.n_fft, axis=-1)  # (F, n_freqs)
        power = (spec.real**2 + spec.imag**2).astype(np.float32)
        mel = self._filters @ power.T  # (n_mels, F)
        logmel = np.log10(np.maximum(mel, 1e-10))
        np.maximum(logmel, r.log_floor, out=logmel)
        return ((logmel + r.offset) / r.scale).astype(np.float32)


def log_mel(samples: np.ndarray, recipe: FeatureRecipe) -> np.ndarray:
    """Whole-signal convenience: the frames a fresh stream gives for ``samples``."""
    return LogMelStream(recipe).push(samples)

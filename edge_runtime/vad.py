"""Which chunks may skip the encoder: quiet ones only.

A chunk is *quiet* when webrtcvad finds no speech in any of its 20 ms frames and its level is
below an energy floor. Loud non-speech (an alarm, a knock) is never quiet, whatever the VAD says.
The listener skips the encoder for a chunk only when every chunk of its encoder window is quiet,
and uses the encoding of a silent window instead (exact for digital silence).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class GateOptions:
    """aggressiveness: webrtcvad mode 0-3. floor_dbfs: RMS level (dB full scale) under which a
    speech-free chunk counts as quiet."""

    aggressiveness: int = 2
    floor_dbfs: float = -50.0

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"vad aggressiveness must be 0-3, got {self.aggressiveness}")


class QuietGate:
    def __init__(self, sample_rate: int, opts: GateOptions = GateOptions()):
        import webrtcvad

        if sample_rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"webrtcvad needs 8/16/32/48 kHz, the bundle runs at {sample_rate}")
        self.vad = webrtcvad.Vad(opts.aggressiveness)
        self.rate, self.opts = sample_rate, opts
        self.frame = sample_rate // 50  # 20 ms

    def is_quiet(self, samples: np.ndarray) -> bool:
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
        if 20 * np.log10(rms + 1e-12) >= self.opts.floor_dbfs:
            return False
        pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
        for i in range(0, len(pcm) - self.frame + 1, self.frame):
            if self.vad.is_speech(pcm[i : i + self.frame].tobytes(), self.rate):
                return False
        return True

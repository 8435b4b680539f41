"""Audio in: a bounded ring buffer, a streaming resampler, and the file / stdin / feed sources.

Every source writes *native* frames (its own rate and channel count, float32) into the ring; the
encoder worker downmixes and resamples. So the code path after capture is the same for a
microphone (``mic.py``), a file, stdin or an embedder's ``feed()``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np


class AudioInputError(ValueError):
    """Unusable audio input (missing, corrupt, unsupported); the message is one line."""


# ----------------------------------------------------------------------------- ring buffer


class RingBuffer:
    """Bounded single-producer / single-consumer buffer of (frames, channels) float32.

    ``write`` never allocates. When full, a live writer (``block=False``) overwrites the oldest
    audio and counts the frames dropped; a file writer (``block=True``) waits for room instead, so
    ``--fast`` replay loses nothing.
    """

    def __init__(self, capacity: int, channels: int):
        self._buf = np.zeros((capacity, channels), dtype=np.float32)
        self.capacity, self.channels = capacity, channels
        self._r = self._w = 0  # absolute frame counters
        self.dropped = 0
        self.closed = False
        self._want = 1  # frames the waiting reader needs before a write wakes it
        self._cv = threading.Condition()

    def write(self, frames: np.ndarray, block: bool = False, stop: threading.Event | None = None) -> None:
        n = len(frames)
        if n == 0:
            return
        if block and n > self.capacity:  # a waiting writer never drops: hand it over in ring-sized parts
            for i in range(0, n, self.capacity):
                self.write(frames[i : i + self.capacity], block=True, stop=stop)
            return
        with self._cv:
            if block:
                while self._w + n - self._r > self.capacity and not (stop and stop.is_set()) and not self.closed:
                    self._cv.wait(0.05)
            if n > self.capacity:  # keep the newest capacity frames
                self.dropped += n - self.capacity
                frames, n = frames[-self.capacity :], self.capacity
            overflow = self._w + n - self._r - self.capacity
            if overflow > 0:
                self._r += overflow
                self.dropped += overflow
            i = self._w % self.capacity
            first = min(n, self.capacity - i)
            self._buf[i : i + first] = frames[:first]
            self._buf[: n - first] = frames[first:]
            self._w += n
            if self._w - self._r >= self._want:  # wake the reader only when it has what it asked for
                self._cv.notify_all()

    def read(self, max_frames: int, timeout: float, min_frames: int = 1) -> np.ndarray | None:
        """Up to max_frames (a copy) once at least min_frames are there (or the ring is closed);
        an empty array on timeout; None once closed and drained."""
        with self._cv:
            if self._w - self._r < min_frames and not self.closed:
                self._want = min_frames
                self._cv.wait_for(lambda: self._w - self._r >= min_frames or self.closed, timeout)
                self._want = 1
            n = min(max_frames, self._w - self._r)
            if n == 0:
                return None if self.closed else np.zeros((0, self.channels), np.float32)
            i = self._r % self.capacity
            first = min(n, self.capacity - i)
            out = np.concatenate([self._buf[i : i + first], self._buf[: n - first]])
            self._r += n
            self._cv.notify_all()
            return out

    def close(self) -> None:
        with self._cv:
            self.closed = True
            self._cv.notify_all()

    @property
    def available(self) -> int:
        return self._w - self._r


# ----------------------------------------------------------------------------- resampler


class Resampler:
    """Streaming band-limited polyphase resampler (Kaiser-windowed sinc), any rational ratio.

    Output sample n sits at input position n * down / up. Its value is the dot product of the
    ``2 * hw`` inputs around that position with one of ``up`` precomputed filter phases.
    ``half_width`` counts zero crossings at the lower of the two rates.
    """

    BLOCK = 8192  # outputs computed per vectorised step

    def __init__(self, src_rate: int, dst_rate: int, half_width: int = 12, beta: float = 8.6):
        if src_rate <= 0 or dst_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
        ratio = Fraction(dst_rate, src_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        fc = 0.95 * min(1.0, dst_rate / src_rate)  # cutoff, as a fraction of the input Nyquist
        self._hw = hw = int(math.ceil(half_width / fc))
        j = np.arange(2 * hw) - hw + 1  # (taps,) input offsets from floor(position)
        frac = np.arange(self.up)[:, None] / self.up  # (up, 1) fractional part of each phase
        d = j[None, :] - frac  # distance from the output position, in input samples
        window = np.i0(beta * np.sqrt(np.clip(1 - (d / hw) ** 2, 0, 1))) / np.i0(beta)
        h = fc * np.sinc(fc * d) * window
        self._h = (h / h.sum(axis=1, keepdims=True)).astype(np.float32)  # unity DC gain per phase
        self.reset()

    @property
    def latency_in(self) -> int:
        """Input samples the resampler holds back before an output can be computed."""
        return self._hw + 1

    def reset(self) -> None:
        self._buf = np.zeros(self._hw, np.float32)  # inputs before the stream are zeros
        self._base = -self._hw  # absolute input index of _buf[0]
        self._n_in = self._n_out = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(-1)
        if self.up == self.down:
            return x
        self._buf = np.concatenate([self._buf, x])
        self._n_in += len(x)
        last = self._n_in - 1 - self._hw  # the largest floor(position) whose window we hold
        n_end = ((last + 1) * self.up - 1) // self.down + 1 if last >= 0 else 0
        y = np.zeros(0, np.float32)
        if n_end > self._n_out:
            parts = []
            for a in range(self._n_out, n_end, self.BLOCK):  # bounded temporaries for long inputs
                num = np.arange(a, min(n_end, a + self.BLOCK)) * self.down
                ipos, phase = num // self.up, num % self.up
                idx = (ipos - self._hw + 1 - self._base)[:, None] + np.arange(2 * self._hw)[None, :]
                parts.append(np.einsum("ij,ij->i", self._buf[idx], self._h[phase]).astype(np.float32))
            y = np.concatenate(parts)
            self._n_out = n_end
        start = (self._n_out * self.down) // self.up - self._hw + 1  # first input still needed
        if start > self._base:
            self._buf = self._buf[start - self._base :].copy()
            self._base = start
        return y

    def flush(self) -> np.ndarray:
        """End of stream: the outputs that lie before the last input sample."""
        if self.up == self.down:
            return np.zeros(0, np.float32)
        want = -(-self._n_in * self.up // self.down)  # ceil
        before = self._n_out
        y = self.process(np.zeros(self._hw + 1, np.float32))
        return y[: max(0, want - before)]


def to_mono(frames: np.ndarray) -> np.ndarray:
    return frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1)


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass
class SourceInfo:
    """rate: Hertz of the frames written to the ring. channels: interleaved channels. live: a
    microphone-like source (overflow drops oldest) rather than a file (back-pressure)."""

    rate: int
    channels: int
    live: bool
    name: str


class Source:
    """Writes native frames into a ring from its own thread (or a PortAudio callback)."""

    info: SourceInfo

    def start(self, ring: RingBuffer, stop: threading.Event) -> None:
        raise NotImplementedError

    def join(self, timeout: float | None = None) -> None:
        pass


class ThreadSource(Source):
    """A source that reads on its own thread: subclasses implement ``_run(ring, stop)``, close the
    ring when done and may set ``error`` (a one-line message) for the stream's final warning."""

    thread_name = "edge-source"
    error: str | None = None
    _thread: threading.Thread | None = None

    def start(self, ring: RingBuffer, stop: threading.Event) -> None:
        self._thread = threading.Thread(target=self._run, args=(ring, stop), name=self.thread_name, daemon=True)
        self._thread.start()

    def _run(self, ring: RingBuffer, stop: threading.Event) -> None:
        raise NotImplementedError

    def join(self, timeout: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout)


class FileSource(ThreadSource):
    """A sound file (WAV/FLAC/OGG via soundfile), paced in real time unless ``fast``."""

    thread_name = "edge-file"

    BLOCK = 0.05  # seconds per write when pacing (and the microphone block): fewer wakeups, <= 50 ms later

    def __init__(self, path: str | Path, fast: bool = False, speed: float = 1.0):
        import soundfile as sf

        p = Path(path)
        if p.is_dir():
            raise AudioInputError(f"{p}: is a directory, not an audio file")
        if not p.exists():
            raise AudioInputError(f"{p}: no such file")
        try:
            self._f = sf.SoundFile(str(p))
        except Exception as e:  # soundfile raises LibsndfileError/RuntimeError
            raise AudioInputError(f"{p}: cannot read audio ({_first_line(e)})") from None
        if self._f.frames == 0:
            raise AudioInputError(f"{p}: contains no audio frames")
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.path, self.fast, self.speed = p, fast, speed
        self.info = SourceInfo(self._f.samplerate, self._f.channels, live=False, name=str(p))

    def _run(self, ring: RingBuffer, stop: threading.Event) -> None:
        block = max(1, int(self.info.rate * self.BLOCK))
        t0, sent = time.monotonic(), 0
        try:
            while not stop.is_set():
                try:
                    frames = self._f.read(block if not self.fast else block * 20, dtype="float32", always_2d=True)
                except Exception as e:  # truncated or corrupt data mid-file
                    self.error = f"{self.path}: audio data ends early or is corrupt ({_first_line(e)})"
                    break
                if len(frames) == 0:
                    break
                if not self.fast:
                    due = t0 + sent / (self.info.rate * self.speed)
                    delay = due - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                ring.write(frames, block=self.fast, stop=stop)
                sent += len(frames)
        finally:
            self._f.close()
            ring.close()

class RawSource(ThreadSource):
    """Raw interleaved PCM from a binary stream (``--input -``): s16le or f32le."""

    thread_name = "edge-stdin"

    FORMATS = {"s16le": (np.dtype("<i2"), 32768.0), "f32le": (np.dtype("<f4"), 1.0)}

    def __init__(self, stream: BinaryIO | None, rate: int, channels: int = 1, fmt: str = "s16le"):
        if fmt not in self.FORMATS:
            raise AudioInputError(f"--format: unknown sample format {fmt!r} (s16le or f32le)")
        if rate <= 0 or channels <= 0:
            raise AudioInputError(f"--rate and --channels must be positive, got {rate}, {channels}")
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.dtype, self.scale = self.FORMATS[fmt]
        self.info = SourceInfo(rate, channels, live=False, name="stdin")

    def _run(self, ring: RingBuffer, stop: threading.Event) -> None:
        frame_bytes = self.dtype.itemsize * self.info.channels
        pending = b""
        try:
            while not stop.is_set():
                data = self.stream.read1(frame_bytes * 1600) if hasattr(self.stream, "read1") else self.stream.read(frame_bytes * 1600)
                if not data:
                    break
                pending += data
                n = len(pending) // frame_bytes
                if n:
                    x = np.frombuffer(pending[: n * frame_bytes], dtype=self.dtype).astype(np.float32) / self.scale
                    ring.write(x.reshape(n, self.info.channels), block=True, stop=stop)
                    pending = pending[n * frame_bytes :]
        except (OSError, ValueError) as e:
            self.error = f"stdin: {_first_line(e)}"
        finally:
            ring.close()


class FeedSource(Source):
    """For embedders that own the microphone: they call :meth:`feed` with PCM blocks."""

    def __init__(self, rate: int, channels: int = 1, live: bool = True):
        self.info = SourceInfo(rate, channels, live=live, name="feed")
        self._ring: RingBuffer | None = None
        self._stop: threading.Event | None = None

    def start(self, ring: RingBuffer, stop: threading.Event) -> None:
        self._ring, self._stop = ring, stop

    def feed(self, pcm: np.ndarray) -> None:
        if self._ring is None:
            raise RuntimeError("feed() before start()")
        x = np.asarray(pcm)
        if x.dtype == np.int16:
            x = x.astype(np.float32) / 32768.0
        x = x.astype(np.float32, copy=False).reshape(-1, self.info.channels)
        self._ring.write(x, block=not self.info.live, stop=self._stop)

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__

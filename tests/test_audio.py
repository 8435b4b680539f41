"""Audio plumbing: ring buffer overflow accounting, the streaming resampler."""

import threading

import numpy as np
import pytest

from edge_runtime.audio import Resampler, RingBuffer


def test_ring_drops_oldest_and_counts():
    r = RingBuffer(100, 1)
    r.write(np.arange(80, dtype=np.float32)[:, None])
    r.write(np.arange(80, 130, dtype=np.float32)[:, None])  # 30 over capacity
    assert r.dropped == 30
    out = r.read(1000, timeout=0.01)
    np.testing.assert_array_equal(out[:, 0], np.arange(30, 130))


def test_ring_blocking_writer_loses_nothing():
    r = RingBuffer(64, 1)
    data = np.arange(10000, dtype=np.float32)[:, None]
    stop = threading.Event()
    t = threading.Thread(target=lambda: ([r.write(data[i:i + 50], block=True, stop=stop) for i in range(0, len(data), 50)], r.close()))
    t.start()
    got = []
    while (x := r.read(37, timeout=0.5)) is not None:
        got.append(x)
    t.join()
    np.testing.assert_array_equal(np.concatenate(got)[:, 0], data[:, 0])
    assert r.dropped == 0


@pytest.mark.parametrize("src", [8000, 22050, 44100, 48000])
def test_resampler_accurate_and_chunk_invariant(src):
    t = np.arange(src * 2) / src
    x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    r = Resampler(src, 16000)
    whole = np.concatenate([r.process(x), r.flush()])
    assert len(whole) == 32000
    r.reset()
    rng = np.random.default_rng(0)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 3000))
        parts.append(r.process(x[i:i + n]))
        i += n
    parts.append(r.flush())
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    ref = np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)
    assert np.abs(whole[300:-300] - ref[300:-300]).max() < 1e-3


def test_resampler_rejects_aliases():
    t = np.arange(48000) / 48000
    y = Resampler(48000, 16000).process(np.sin(2 * np.pi * 10000 * t).astype(np.float32))
    assert np.sqrt(np.mean(y[500:] ** 2)) < 1e-3  # a 10 kHz tone has no place at 16 kHz

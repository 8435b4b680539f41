"""Dereverberation (WPE) for what Whisper hears: edge_runtime.dereverb."""

import numpy as np
import pytest

from edge_runtime.dereverb import dereverb, istft, stft

SR = 16000


def _dry(seed: int, seconds: float = 3.0) -> np.ndarray:
    """Noise whose loudness changes every 50 ms: nothing in it can be predicted from its past."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    return (rng.standard_normal(n) * np.repeat(rng.uniform(0.1, 1.0, n // 800 + 1), 800)[:n]).astype(np.float32)


def _db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(np.square(x, dtype=np.float64))))


def test_the_spectrum_gives_the_audio_back_exactly():
    x = _dry(0, 1.234)
    assert np.abs(istft(stft(x), len(x)) - x).max() < 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_an_echo_is_taken_out_and_dry_audio_is_left_alone(seed):
    """A 100 ms echo at -4.4 dB: more than 2 dB of it goes (3.1 dB measured); audio with no echo
    changes by less than -15 dB (-19 to -21 dB measured)."""
    dry = _dry(seed)
    lag = int(0.1 * SR)
    wet = dry.copy()
    wet[lag:] += 0.6 * dry[:-lag]
    out = dereverb(wet)
    assert out.dtype == np.float32 and out.shape == wet.shape
    before, after = _db(wet - dry) - _db(dry), _db(out - dry) - _db(dry)
    assert after < before - 2.0, (before, after)
    assert _db(dereverb(dry) - dry) - _db(dry) < -15.0


def test_no_taps_or_too_little_audio_is_left_as_it_is():
    x = _dry(2, 0.5)
    assert np.array_equal(dereverb(x, taps=0), x)
    assert np.array_equal(dereverb(x[:300]), x[:300])

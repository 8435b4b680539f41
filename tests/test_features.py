"""The runtime's numpy log-mel equals the models/ torch reference and Whisper's filterbank, and is
invariant to how the audio is chunked."""

import numpy as np
import pytest

from edge_runtime.features import FeatureRecipe, LogMelStream, log_mel, mel_filterbank


def test_filterbank_matches_whisper_feature_extractor():
    audio_utils = pytest.importorskip("transformers.audio_utils")
    hf = audio_utils.mel_filter_bank(num_frequency_bins=201, num_mel_filters=80, min_frequency=0.0,
                                     max_frequency=8000.0, sampling_rate=16000, norm="slaney", mel_scale="slaney")
    assert np.abs(hf.T - mel_filterbank(FeatureRecipe())).max() < 1e-7


def test_numpy_matches_torch_reference():
    torch = pytest.importorskip("torch")
    from edge_models.features import log_mel_torch

    x = np.random.default_rng(0).standard_normal(16000 * 3).astype(np.float32) * 0.2
    a = log_mel(x, FeatureRecipe())
    b = log_mel_torch(torch.from_numpy(x), FeatureRecipe()).numpy()
    assert a.shape == b.shape == (80, 300)
    assert np.abs(a - b).max() < 1e-5


@pytest.mark.parametrize("piece", [1, 37, 160, 593, 6400])
def test_chunk_size_invariance(piece):
    x = np.random.default_rng(1).standard_normal(16000 * 2 + 77).astype(np.float32) * 0.1
    whole = log_mel(x, FeatureRecipe())
    s = LogMelStream(FeatureRecipe())
    parts = [s.push(x[i : i + piece]) for i in range(0, len(x), piece)]
    streamed = np.concatenate(parts, axis=1)
    assert streamed.shape == whole.shape == (80, len(x) // 160)
    np.testing.assert_allclose(streamed, whole, atol=1e-5)


def test_silence_is_floor():
    r = FeatureRecipe()
    f = log_mel(np.zeros(1600, np.float32), r)
    assert np.all(f == np.float32(r.silence_value))


def test_bad_recipe_is_named():
    with pytest.raises(ValueError, match="hop_length"):
        FeatureRecipe(hop_length=0)
    with pytest.raises(ValueError, match="unknown field"):
        FeatureRecipe.from_dict({"sample_rate": 16000, "bogus": 1})

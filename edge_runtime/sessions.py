"""The one module that imports onnxruntime: providers, session options, sessions.

Sessions are created with explicit thread counts and spinning off, so an idle daemon burns no CPU.
Inputs and outputs are always bound by name.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
}
# "auto" takes the first of these that this onnxruntime build offers.
AUTO_ORDER = ("tensorrt", "cuda", "qnn", "openvino", "coreml", "dml", "cpu")
# Providers that run com.microsoft GroupQueryAttention (the in-place "shared" KV decoder).
GQA_PROVIDERS = {"CPUExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider"}


class ProviderError(RuntimeError):
    """The requested execution provider cannot be used (and --strict-provider was given)."""


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """How sessions are made.

    provider: one of PROVIDERS or "auto". threads: intra-op threads per session (>= 1).
    strict: fail instead of falling back to CPU when the provider is unavailable.
    provider_options: passed to the provider as is (e.g. {"device_id": "0"} for CUDA).
    """

    provider: str = "cpu"
    threads: int = 1
    strict: bool = False
    provider_options: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.provider != "auto" and self.provider not in PROVIDERS:
            raise ValueError(f"unknown provider {self.provider!r} (one of auto, {', '.join(PROVIDERS)})")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def resolve_provider(cfg: SessionConfig, warn: Callable[[str], None] | None = None) -> list[str]:
    """The provider list to give onnxruntime, CPU last as the fallback."""
    have = set(available_providers())
    if cfg.provider == "auto":
        for name in AUTO_ORDER:
            if PROVIDERS[name] in have:
                return [PROVIDERS[name]] + ([] if name == "cpu" else ["CPUExecutionProvider"])
    wanted = PROVIDERS[cfg.provider]
    if wanted in have:
        return [wanted] + ([] if wanted == "CPUExecutionProvider" else ["CPUExecutionProvider"])
    msg = f"provider {cfg.provider!r} ({wanted}) is not available in this onnxruntime build (available: {', '.join(sorted(have))})"
    if cfg.strict:
        raise ProviderError(msg)
    if warn:
        warn(msg + "; falling back to CPU")
    log.warning("%s; falling back to CPU", msg)
    return ["CPUExecutionProvider"]


def make_session(path: str | Path, cfg: SessionConfig, providers: Sequence[str] | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    providers = list(providers or resolve_provider(cfg))
    opts = [dict(cfg.provider_options) if p == providers[0] and p != "CPUExecutionProvider" else {} for p in providers]
    sess = ort.InferenceSession(str(path), sess_options=so, providers=providers, provider_options=opts)
    used = sess.get_providers()
    if cfg.strict and used[0] != providers[0]:
        raise ProviderError(f"{path}: provider {providers[0]} was requested but the session uses {used[0]}")
    log.info("session %s on %s (%d threads)", Path(path).name, used, cfg.threads)
    return sess


class Runner:
    """A session plus IOBinding, bound by name; keeps outputs as OrtValues so that a KV cache can
    be fed back without a numpy copy."""

    def __init__(self, session: ort.InferenceSession):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.inputs = {i.name: i for i in session.get_inputs()}
        self.outputs = {o.name: o for o in session.get_outputs()}

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.output_names)
        return dict(zip(names, self.session.run(names, {k: v for k, v in feeds.items() if k in self.inputs})))

    def binding(self) -> "ort.IOBinding":
        return self.session.io_binding()

    def run_binding(self, io: "ort.IOBinding") -> None:
        self.session.run_with_iobinding(io)


def ortvalue(array: np.ndarray) -> "ort.OrtValue":
    """An OrtValue that shares memory with a C-contiguous numpy array (CPU)."""
    return ort.OrtValue.ortvalue_from_numpy(array)


def ort_version() -> str:
    return ort.__version__

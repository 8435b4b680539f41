"""A loaded bundle: the shared, read-only half (sessions, tokenizer, embeddings).

Per-stream state lives elsewhere (``EncoderStream``, ``KVCache``, the loop's ``Stream``), so one
:class:`Bundle` can serve several streams.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import numpy as np
from tokenizers import Tokenizer

from .bundle import BundleError, Manifest, load_manifest
from .decoder import Decoder
from .embeddings import TokenEmbeddings
from .features import LogMelStream
from .sessions import GQA_PROVIDERS, Runner, SessionConfig, make_session, resolve_provider

log = logging.getLogger(__name__)


class Bundle:
    def __init__(self, path: str | Path, session: SessionConfig = SessionConfig(), layout: str | None = None,
                 verify_hashes: bool = True, warn: Callable[[str], None] | None = None,
                 decoder_threads: int | None = None):
        self.manifest: Manifest = load_manifest(path, verify_hashes=verify_hashes)
        m = self.manifest
        if m.kind != "audio-interaction":
            raise BundleError(f"{m.root / 'manifest.json'}: kind: {m.kind!r} bundles are not run by this loop")
        providers = resolve_provider(session, warn)
        self.providers = providers
        try:
            self.tokenizer = Tokenizer.from_file(str(m.path(m.tokenizer)))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise BundleError(f"{m.path(m.tokenizer)}: unreadable tokenizer ({str(e).splitlines()[0]})") from None
        self.embed = TokenEmbeddings(m)
        self.encoder = Runner(self._session(m.encoder.file, session, providers))
        self._check_encoder()
        self.decoder_file = self._pick_decoder(layout, providers[0])
        dec_session = dataclasses.replace(session, threads=decoder_threads or session.threads)
        self.decoder = Decoder(Runner(self._session(self.decoder_file.file, dec_session, providers)), m.decoder,
                               self.decoder_file.kv_layout, where=self.decoder_file.file)
        log.info("bundle %s: decoder %s (%s), providers %s", m.name, self.decoder_file.file,
                 self.decoder_file.kv_layout, self.decoder.runner.providers)

    def _session(self, name: str, cfg: SessionConfig, providers: list[str]):
        path = self.manifest.path(name)
        try:
            return make_session(path, cfg, providers)
        except Exception as e:
            if type(e).__name__ in ("Fail", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "RuntimeException"):
                raise BundleError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})") from None
            raise

    def _pick_decoder(self, layout: str | None, provider: str):
        if layout is not None:
            return self.manifest.decoder_file(layout)
        for d in self.manifest.decoders:
            if d.kv_layout != "shared" or provider in GQA_PROVIDERS:
                return d
        return self.manifest.decoders[0]

    def _check_encoder(self) -> None:
        e, m, ins, outs = self.manifest.encoder, self.manifest, self.encoder.inputs, self.encoder.outputs
        if e.input not in ins or e.output not in outs:
            raise BundleError(f"{m.path(e.file)}: expected input {e.input!r} and output {e.output!r}")
        checks = [
            ("features.n_mels", m.features.n_mels, ins[e.input].shape[1]),
            ("encoder.left_context_frames + chunk_frames", e.window_frames, ins[e.input].shape[2]),
            ("encoder.tokens_per_chunk", e.tokens_per_chunk, outs[e.output].shape[1]),
            ("decoder.hidden_size", m.decoder.hidden_size, outs[e.output].shape[2]),
        ]
        for field, want, got in checks:
            if isinstance(got, int) and got != want:
                raise BundleError(f"{m.root / 'manifest.json'}: {field}: {want} contradicts {e.file} ({got})")

    @property
    def providers_in_use(self) -> list[str]:
        return self.decoder.runner.providers

    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        """windows (B, n_mels, window_frames) -> (B, tokens_per_chunk, hidden)"""
        e = self.manifest.encoder
        return self.encoder.run({e.input: np.ascontiguousarray(windows, dtype=np.float32)}, [e.output])[e.output]

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids


class EncoderStream:
    """Per-stream audio front end: samples -> log-mel -> encoder windows of [left context | chunk].

    Holds the mel state and the left-context frames; ``reset()`` starts a new stream."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.features = LogMelStream(bundle.manifest.features)
        self.reset()

    def reset(self) -> None:
        e, f = self.bundle.manifest.encoder, self.bundle.manifest.features
        self.features.reset()
        self._frames = np.full((f.n_mels, e.left_context_frames), f.silence_value, dtype=np.float32)
        self.chunks_done = 0

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        """Feed samples; return the encoder windows (n_mels, window_frames) of chunks completed."""
        e = self.bundle.manifest.encoder
        new = self.features.push(samples)
        if new.shape[1]:
            self._frames = np.concatenate([self._frames, new], axis=1)
        out = []
        while self._frames.shape[1] >= e.window_frames:
            out.append(self._frames[:, : e.window_frames])
            self._frames = self._frames[:, e.chunk_frames :]
            self.chunks_done += 1
        return out

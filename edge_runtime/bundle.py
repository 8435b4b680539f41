"""The bundle contract (schema "edge-bundle/1"): load and validate manifest.json.

Every failure is a :class:`BundleError` whose message is one line naming the file and the field,
e.g. ``bundle/manifest.json: decoder.n_layers: 4 contradicts decoder.onnx (2 past_key_values)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from .features import FeatureRecipe

SCHEMA = "edge-bundle/1"
KINDS = ("audio-interaction", "whisper-asr")
KV_LAYOUTS = ("concat", "shared")


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the field."""


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class DecoderDims:
    """Decoder dimensions. max_context: tokens the KV cache may hold. rope_theta: RoPE base."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_context: int
    rope_theta: float


@dataclasses.dataclass(frozen=True)
class DecoderFile:
    """One decoder graph. kv_layout: "concat" or "shared"; precision e.g. "fp32", "int8"."""

    file: str
    kv_layout: str
    precision: str


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """encoder.onnx: input (B, n_mels, window_frames) -> output (B, tokens_per_chunk, hidden)."""

    file: str
    input: str
    output: str
    chunk_frames: int
    left_context_frames: int
    tokens_per_chunk: int
    precision: str

    @property
    def window_frames(self) -> int:
        return self.left_context_frames + self.chunk_frames


@dataclasses.dataclass(frozen=True)
class Manifest:
    root: Path
    raw: dict
    kind: str
    name: str
    version: str
    features: FeatureRecipe
    encoder: EncoderSpec
    decoder: DecoderDims
    decoders: tuple[DecoderFile, ...]
    embeddings: dict
    tokenizer: str
    control_tokens: dict[str, int]
    default_instruction: str
    alert_words: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # reply -> words that ask for it

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    @property
    def chunk_samples(self) -> int:
        return self.encoder.chunk_frames * self.features.hop_length

    @property
    def chunk_ms(self) -> float:
        return 1000.0 * self.chunk_samples / self.sample_rate

    def path(self, name: str) -> Path:
        return self.root / name

    def decoder_file(self, layout: str | None = None) -> DecoderFile:
        """The decoder of ``layout``, or the first listed (the export's preferred one)."""
        for d in self.decoders:
            if layout is None or d.kv_layout == layout:
                return d
        raise BundleError(f"{self.root / 'manifest.json'}: decoders: no decoder with kv_layout {layout!r}")


def _get(d: dict, dotted: str, where: str, typ: type | tuple = object) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise BundleError(f"{where}: {dotted}: missing")
        cur = cur[part]
    if typ is not object and not isinstance(cur, typ):
        raise BundleError(f"{where}: {dotted}: expected {getattr(typ, '__name__', typ)}, got {cur!r}")
    return cur


def load_common(bundle_dir: str | Path, verify_hashes: bool = True) -> tuple[Path, dict]:
    """What every bundle kind shares: the manifest's schema and kind, its files and their sha256."""
    root = Path(bundle_dir)
    mpath = root / "manifest.json"
    where = str(mpath)
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    if not mpath.is_file():
        raise BundleError(f"{where}: missing")
    try:
        raw = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: not a JSON object")
    schema = _get(raw, "schema", where, str)
    if schema != SCHEMA:
        raise BundleError(f"{where}: schema: unsupported version {schema!r} (this runtime reads {SCHEMA!r})")
    kind = _get(raw, "kind", where, str)
    if kind not in KINDS:
        raise BundleError(f"{where}: kind: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    files = _get(raw, "files", where, dict)
    for name, info in files.items():
        p = root / name
        if not p.is_file():
            raise BundleError(f"{p}: missing (listed in manifest.json files.{name})")
        if verify_hashes:
            digest = sha256_file(p)
            if digest != info.get("sha256"):
                raise BundleError(f"{p}: sha256 mismatch (manifest files.{name}.sha256 {str(info.get('sha256'))[:12]}..., file {digest[:12]}...)")
    return root, raw


def load_manifest(bundle_dir: str | Path, verify_hashes: bool = True) -> Manifest:
    """Read and validate an ``audio-interaction`` bundle's manifest (and the files it lists)."""
    root, raw = load_common(bundle_dir, verify_hashes)
    where = str(root / "manifest.json")
    kind = raw["kind"]
    if kind != "audio-interaction":
        raise BundleError(f"{where}: kind: {kind!r} bundles are not run by the decide-respond loop")
    files = raw["files"]

    try:
        features = FeatureRecipe.from_dict(_get(raw, "features", where, dict))
    except (TypeError, ValueError) as e:
        raise BundleError(f"{where}: {e}") from None

    def need_file(field: str) -> str:
        name = _get(raw, field, where, str)
        if name not in files:
            raise BundleError(f"{where}: {field}: {name!r} is not listed in files")
        return name

    enc = raw.get("encoder") or {}
    encoder = EncoderSpec(
        file=need_file("encoder.file") if kind == "audio-interaction" else enc.get("file", ""),
        input=str(enc.get("input", "features")),
        output=str(enc.get("output", "audio_embeds")),
        chunk_frames=int(_get(raw, "encoder.chunk_frames", where, int)),
        left_context_frames=int(_get(raw, "encoder.left_context_frames", where, int)),
        tokens_per_chunk=int(_get(raw, "encoder.tokens_per_chunk", where, int)),
        precision=str(enc.get("precision", "fp32")),
    )
    dims = DecoderDims(**{f.name: _get(raw, f"decoder.{f.name}", where, (int, float)) for f in dataclasses.fields(DecoderDims)})
    decoders = []
    for i, d in enumerate(_get(raw, "decoders", where, list)):
        layout = d.get("kv_layout")
        if layout not in KV_LAYOUTS:
            raise BundleError(f"{where}: decoders[{i}].kv_layout: unknown layout {layout!r} (one of {', '.join(KV_LAYOUTS)})")
        decoders.append(DecoderFile(file=_decoder_file(d, files, where, i),
                                    kv_layout=layout, precision=str(d.get("precision", "fp32"))))
    if not decoders:
        raise BundleError(f"{where}: decoders: empty")
    control = _get(raw, "control_tokens", where, dict)
    for key in ("silent", "respond", "end"):
        v = _get(control, key, f"{where}: control_tokens", int)
        if not 0 <= v < dims.vocab_size:
            raise BundleError(f"{where}: control_tokens.{key}: id {v} outside vocab of {dims.vocab_size}")
    return Manifest(
        root=root,
        raw=raw,
        kind=kind,
        name=str(raw.get("name", root.name)),
        version=str(raw.get("version", "0")),
        features=features,
        encoder=encoder,
        decoder=dims,
        decoders=tuple(decoders),
        embeddings=_get(raw, "embeddings", where, dict),
        tokenizer=need_file("tokenizer"),
        control_tokens={k: int(v) for k, v in control.items()},
        default_instruction=str(raw.get("default_instruction", "")),
        alert_words=_alert_words(raw.get("alert_words", {}), where),
    )


def _alert_words(raw, where: str) -> dict[str, tuple[str, ...]]:
    """``alert_words``: {alert reply: [words]}; the runtime says such a reply only under an
    instruction that contains one of its words (lower case)."""
    ok = isinstance(raw, dict) and all(isinstance(k, str) and isinstance(v, list) and v and
                                       all(isinstance(w, str) and w.strip() for w in v) for k, v in raw.items())
    if not ok:
        raise BundleError(f"{where}: alert_words: must map each alert reply to a list of words")
    return {k: tuple(w.strip().lower() for w in v) for k, v in raw.items()}


def _decoder_file(d: dict, files: dict, where: str, i: int) -> str:
    name = d.get("file")
    if not isinstance(name, str):
        raise BundleError(f"{where}: decoders[{i}].file: missing")
    if name not in files:
        raise BundleError(f"{where}: decoders[{i}].file: {name!r} is not listed in files")
    return name

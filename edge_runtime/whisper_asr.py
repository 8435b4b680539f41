"""Streaming transcription with a ``whisper-asr`` bundle.

    16 kHz samples -> SpeechSegmenter (webrtcvad + energy floor, hangover) -> segment audio
      while speaking: a partial decode every ``partial_every`` seconds; the partial shown is the
                      words two consecutive decodes agree on (local agreement), so it rarely moves
      at the end:     a final decode -> ``transcript`` event (final=true)

Whisper's failure modes are guarded, not hoped away: nothing is decoded outside VAD speech;
a segment whose loudness barely moves (steady noise, a held chord: < 4 dB frame-level spread)
is not decoded; a segment with p(no speech) > 0.4 and mean log-probability < -1 is dropped;
decoding stops at a repeated n-gram loop; text with a gzip compression ratio above 2.4 (a loop)
is dropped; the token budget scales with the segment's duration.
The encoder window is the segment plus ``pad_seconds`` of silence (not Whisper's fixed 30 s), so
its cost follows the utterance's length. Measured on 326 real utterances (tiny.en int8, WER):
pad 1 s 28.6%, 2 s 20.9%, 5 s 10.4%, 8 s 7.7%, 10 s 7.1%, 15 s 6.4%, 30 s 6.2%; 15 s keeps the
30 s accuracy at 60% of its latency (README, ``edge-bench asr``). Audio longer than 25 s is
transcribed in pieces cut at its pauses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .bundle import BundleError, load_common
from .dereverb import dereverb
from .features import FeatureRecipe, mel_filterbank
from .sessions import Runner, SessionConfig, make_session, ortvalue

log = logging.getLogger(__name__)
SR = 16000
SUPPRESS_BEGIN_DEFAULT = [220]


def whisper_log_mel(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Whisper's features: audio zero-padded (or cut) to n_frames * 160 samples, centred reflect-
    padded STFT, Slaney mel, log10, dynamic range 8 from the window's max, (x + 4) / 4."""
    n = n_frames * 160
    x = np.zeros(n, np.float32)
    a = np.asarray(audio, np.float32)[:n]
    x[: len(a)] = a
    x = np.pad(x, (200, 200), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160][:n_frames]  # (F, 400)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)).astype(np.float32)
    spec = np.fft.rfft(frames * window, axis=-1)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    mel = _FILTERS @ power.T
    logmel = np.log10(np.maximum(mel, 1e-10))
    logmel = np.maximum(logmel, logmel.max() - 8.0)
    return ((logmel + 4.0) / 4.0).astype(np.float32)


_FILTERS = mel_filterbank(FeatureRecipe())


def window_frames(n_samples: int, pad_seconds: float = 15.0, max_frames: int = 3000) -> int:
    """Feature frames of the encoder window for a segment of ``n_samples``: the segment plus
    ``pad_seconds`` of silence, in whole seconds, at most Whisper's 30 s."""
    seconds = min(30.0, float(np.ceil(n_samples / SR + pad_seconds)))
    return min(max_frames, int(seconds * 100))


@dataclasses.dataclass(frozen=True)
class AsrOptions:
    """pad_seconds: silence appended to a segment before encoding (the window is segment + pad,
    rounded up to 1 s, at most 30 s). partial_every: seconds of new speech between partial decodes
    (0 turns partials off). max_tokens_per_second: token budget per second of audio (+8).
    no_speech_threshold / logprob_threshold: drop a segment when p(no speech) is above the first
    AND the mean token log-probability is below the second. compression_ratio_threshold: drop
    text that compresses better than this (a loop). prompt: text Whisper reads as what was said
    before the segment (its ``<|startofprev|>`` context), which leans it towards those words:
    the wake word, the rooms and devices a user has ("" for none); a transcript that reads three
    or more of its words back in order (``echoes``) is decoded again without it, and that decode
    is kept unless it says the same words (numbers as digits or words alike). beam_size: 1 decodes
    greedily; more searches that many hypotheses (final decodes only: partials stay greedy).
    dereverb_taps: each segment is dereverberated first (``dereverb``: WPE with this many frames of
    its past, from 24 ms back); 0 (the default) hears it as it is."""

    pad_seconds: float = 15.0
    partial_every: float = 0.75
    max_tokens_per_second: float = 6.0
    no_speech_threshold: float = 0.4
    logprob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    min_dynamics_db: float = 4.0
    prompt: str = ""
    beam_size: int = 1
    dereverb_taps: int = 0


class WhisperBundle:
    """Shared: sessions, tokenizer and token ids of a ``whisper-asr`` bundle."""

    def __init__(self, path: str | Path, session: SessionConfig = SessionConfig(), verify_hashes: bool = True):
        root, raw = load_common(path, verify_hashes)
        if raw["kind"] != "whisper-asr":
            raise BundleError(f"{root / 'manifest.json'}: kind: {raw['kind']!r} is not a whisper-asr bundle")
        self.root, self.raw = root, raw
        self.name = raw.get("name", root.name)
        t = raw["tokens"]
        self.sot, self.eot, self.no_ts, self.no_speech = t["sot"], t["eot"], t["no_timestamps"], t["no_speech"]
        self.prompt_ids = [self.sot] + ([t["en"], t["transcribe"]] if raw.get("multilingual") else []) + [self.no_ts]
        self.suppress = np.array(raw.get("suppress_tokens", []), np.int64)
        self.begin_suppress = list(raw.get("begin_suppress_tokens", SUPPRESS_BEGIN_DEFAULT))
        self.tokenizer = Tokenizer.from_file(str(root / raw["tokenizer"]))
        self.prev = self.tokenizer_id("<|startofprev|>")
        self.encoder = Runner(make_session(root / raw["encoder"]["file"], session))
        self.decoder = Runner(make_session(root / raw["decoder"]["file"], session))
        d = raw["decoder"]
        self.n_layers, self.n_heads, self.head_dim = d["n_layers"], d["n_heads"], d["head_dim"]
        self.max_frames = raw["encoder"]["max_frames"]
        self.providers = self.decoder.providers
        self._encoded: tuple[np.ndarray, dict] | None = None  # the last window and its cross K/V (_encode)
        self._encoded_lock = threading.Lock()
        n_cross = sum(1 for n in self.encoder.output_names if n.startswith("cross."))
        if n_cross != 2 * self.n_layers:
            raise BundleError(f"{root / 'manifest.json'}: decoder.n_layers: {self.n_layers} contradicts encoder.onnx ({n_cross // 2} cross K/V pairs)")

    def tokenizer_id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise BundleError(f"{self.root / self.raw['tokenizer']}: no {token} token")
        return i

    def context_ids(self, text: str) -> list[int]:
        """``<|startofprev|>`` + the tokens of ``text`` (at most 100, the most recent), or [] for none."""
        if not text.strip():
            return []
        return [self.prev] + self.tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids[-100:]

    def window_frames(self, n_samples: int, pad_seconds: float = 15.0) -> int:
        return window_frames(n_samples, pad_seconds, self.max_frames)

    def _encode(self, feats: np.ndarray) -> dict:
        """The encoder's cross K/V of one window (read-only OrtValues). The last window's are kept:
        the same window decoded again (without the prompt, after an echo or for a responder's name
        check) is not encoded twice. One window's K/V stay in memory: about 10 MB for tiny.en over a
        17 s window, 18 MB at the full 30 s."""
        with self._encoded_lock:
            last = self._encoded
        if last is not None and last[0].shape == feats.shape and np.array_equal(last[0], feats):
            return last[1]
        cross = {k: ortvalue(v) for k, v in self.encoder.run({"input_features": feats[None]}).items()}
        with self._encoded_lock:
            self._encoded = (feats.copy(), cross)
        return cross

    def _start(self, feats: np.ndarray, prefix: list[int] | None, context: list[int] | None):
        """Encode one window and read the prompt -> (step, logits after it, its cache, p(no speech)).
        ``step(ids, past)`` -> (next-token logits, the cache with ``ids`` appended); a cache is
        never changed in place, so hypotheses of a beam may share one."""
        io_cross = self._encode(feats)
        past_names = [f"past_key_values.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]
        present_names = [f"present.{i}.{kv}" for i in range(self.n_layers) for kv in ("key", "value")]

        def step(ids: list[int], past: list) -> tuple[np.ndarray, list]:
            io = self.decoder.binding()
            io.bind_cpu_input("input_ids", np.array([ids], np.int64))
            for n, v in zip(past_names, past):
                io.bind_ortvalue_input(n, v)
            for n, v in io_cross.items():
                io.bind_ortvalue_input(n, v)
            io.bind_output("logits", "cpu")
            for n in present_names:
                io.bind_output(n, "cpu")
            self.decoder.run_binding(io)
            outs = io.get_outputs()
            return outs[0].numpy()[0, -1].astype(np.float64), list(outs[1:])

        empty = [ortvalue(np.zeros((1, self.n_heads, 0, self.head_dim), np.float32)) for _ in range(2 * self.n_layers)]
        logits, past = step(list(context or []) + [self.sot], empty)  # p(no speech) is read right after <|startoftranscript|>
        p = np.exp(logits - logits.max())
        no_speech = float(p[self.no_speech] / p.sum())
        logits, past = step(self.prompt_ids[1:] + list(prefix or []), past)
        return step, logits, past, no_speech

    def _log_probs(self, logits: np.ndarray, first: bool) -> np.ndarray:
        logits = logits.copy()
        logits[self.suppress] = -np.inf
        if first:
            logits[self.begin_suppress] = -np.inf
        lp = logits - logits.max()
        return lp - np.log(np.exp(lp).sum())

    def greedy(self, feats: np.ndarray, max_tokens: int = 96, prefix: list[int] | None = None,
               stop_on_loop: bool = True, context: list[int] | None = None) -> tuple[list[int], dict]:
        """Greedy decode of one window -> (token ids, {no_speech_prob, avg_logprob, stopped}).
        ``context``: context_ids(), read before ``<|startoftranscript|>``."""
        step, logits, past, no_speech = self._start(feats, prefix, context)
        out, logprobs, stopped = list(prefix or []), [], "eot"
        while True:
            lp = self._log_probs(logits, not out)
            nxt = int(lp.argmax())
            if nxt == self.eot:
                break
            out.append(nxt)
            logprobs.append(float(lp[nxt]))
            if len(out) >= max_tokens:
                stopped = "budget"
                break
            if stop_on_loop and _looping(out):
                stopped = "loop"
                break
            logits, past = step([nxt], past)
        return out, {"no_speech_prob": no_speech, "avg_logprob": float(np.mean(logprobs)) if logprobs else 0.0,
                     "stopped": stopped}

    def beam(self, feats: np.ndarray, beam_size: int, max_tokens: int = 96, prefix: list[int] | None = None,
             stop_on_loop: bool = True, context: list[int] | None = None) -> tuple[list[int], dict]:
        """Beam search of one window (``beam_search``), returned as ``greedy`` returns its decode."""
        step, logits, past, no_speech = self._start(feats, prefix, context)
        toks, info = beam_search(step, logits, past, self._log_probs, self.eot, beam_size, max_tokens, prefix, stop_on_loop)
        return toks, {"no_speech_prob": no_speech, **info}

    def decode(self, feats: np.ndarray, max_tokens: int, context: list[int] | None, beam_size: int = 1) -> tuple[list[int], dict]:
        """``greedy`` for a beam of 1, else ``beam``."""
        if beam_size > 1:
            return self.beam(feats, beam_size, max_tokens, context=context)
        return self.greedy(feats, max_tokens, context=context)

    def transcribe(self, audio: np.ndarray, opts: AsrOptions = AsrOptions()) -> tuple[str, dict]:
        """One segment -> (text or "" when dropped, info).

        Steady sound (fans, hiss, a held chord) that the VAD let through is not decoded at all:
        speech swings 13-27 dB between syllables and pauses (Asterisk set), white and pink noise
        and synthetic music 0.3-4.8 dB. A short window sometimes makes Whisper loop ("Thank you.
        Thank you. ..."): then it is decoded once more in a window padded by RETRY_PAD_SECONDS,
        and if that loops too, the repeats are cut. Audio longer than MAX_PIECE_SECONDS (Whisper
        sees at most 30 s) is cut at its quietest moments and transcribed piece by piece
        (``info["pieces"]``), so nothing past the window is lost."""
        if len(audio) > MAX_PIECE_SECONDS * SR:
            return self._transcribe_pieces(audio, opts)
        if opts.dereverb_taps:
            audio = dereverb(audio, opts.dereverb_taps)
        dyn = dynamics_db(audio)
        if dyn < opts.min_dynamics_db:
            return "", {"dropped": "steady sound", "dynamics_db": dyn, "no_speech_prob": None, "avg_logprob": None}
        budget = self.budget(audio, opts)
        context = self.context_ids(opts.prompt)
        mel = whisper_log_mel(audio, self.window_frames(len(audio), opts.pad_seconds))
        ids, info = self.decode(mel, budget, context, opts.beam_size)
        text = self.tokenizer.decode(ids)
        echoed = bool(context) and echoes(text, opts.prompt)
        if echoed:  # the prompt read back over a doorbell or a mumble: what does Whisper hear without it?
            ids2, info2 = self.decode(mel, budget, None, opts.beam_size)
            text2 = self.tokenizer.decode(ids2)
            echoed = in_digits(normalize(text)) != in_digits(normalize(text2))  # the same words: they were said
            if echoed:
                ids, info, text = ids2, info2, text2
        info["retried"] = False
        if _suspicious(text, info, opts) and opts.pad_seconds < RETRY_PAD_SECONDS:
            ids2, info2 = self.decode(whisper_log_mel(audio, self.window_frames(len(audio), RETRY_PAD_SECONDS)), budget,
                                      context, opts.beam_size)
            if not _suspicious(self.tokenizer.decode(ids2), info2, opts) or len(ids2) < len(ids):
                ids, info = ids2, info2
            info["retried"] = True
        info["echoed"] = echoed  # kept through a retry, which decodes with the same context
        if info["stopped"] == "loop":
            ids = cut_loop(ids)
        text = self.tokenizer.decode(ids).strip()
        info["dropped"] = None
        if not any(c.isalnum() for c in text):
            info["dropped"] = "no words"  # "", ".", "..." from music or noise
        elif info["no_speech_prob"] > opts.no_speech_threshold and info["avg_logprob"] < opts.logprob_threshold:
            info["dropped"] = "no speech"
        elif text and compression_ratio(text) > opts.compression_ratio_threshold:
            info["dropped"] = "repetitive"
        return ("" if info["dropped"] else text), info

    @staticmethod
    def budget(audio: np.ndarray, opts: AsrOptions) -> int:
        """The most tokens a decode of ``audio`` may write."""
        return int(8 + opts.max_tokens_per_second * len(audio) / SR)

    def readings(self, audio: np.ndarray, opts: AsrOptions, n: int, prompted: bool = True) -> list[tuple[str, float]]:
        """The ``n`` likeliest readings of an utterance that ``transcribe`` heard with ``opts``, by a
        beam of ``n`` in the same window (its encoding is kept from that decode, so only the decoder
        runs), with ``opts.prompt`` as context unless ``prompted`` is False (a transcript decoded
        without it, ``echoed``) -> [(text, mean log-probability per token, the end token counted)],
        distinct texts, likeliest first; [] for audio too long for one window."""
        if len(audio) > MAX_PIECE_SECONDS * SR:
            return []
        if opts.dereverb_taps:
            audio = dereverb(audio, opts.dereverb_taps)
        mel = whisper_log_mel(audio, self.window_frames(len(audio), opts.pad_seconds))
        _, info = self.beam(mel, n, self.budget(audio, opts), context=self.context_ids(opts.prompt) if prompted else None)
        out: dict[str, float] = {}
        for toks, score in info["finished"]:
            out.setdefault(self.tokenizer.decode(cut_loop(toks)).strip(), score)
        return [(t, s) for t, s in out.items() if t]

    def _transcribe_pieces(self, audio: np.ndarray, opts: AsrOptions) -> tuple[str, dict]:
        outs = [self.transcribe(piece, opts) for piece in split_long(audio, MAX_PIECE_SECONDS)]
        text = " ".join(t for t, _ in outs if t)
        kept = [i for t, i in outs if t]
        info = {"pieces": len(outs), "dropped": None if text else outs[0][1]["dropped"],
                "no_speech_prob": min((i["no_speech_prob"] for _, i in outs if i["no_speech_prob"] is not None), default=None),
                "avg_logprob": float(np.mean([i["avg_logprob"] for i in kept])) if kept else None,
                "retried": any(i.get("retried") for _, i in outs)}
        return text, info


MAX_PIECE_SECONDS = 25.0  # as SegmenterOptions.max_segment: longer audio is transcribed in pieces


def split_long(audio: np.ndarray, max_seconds: float = MAX_PIECE_SECONDS, search_seconds: float = 5.0) -> list[np.ndarray]:
    """``audio`` in consecutive pieces of at most ``max_seconds``, each cut at the quietest 20 ms
    frame of its last ``search_seconds`` (a pause between words, where there is one)."""
    pieces, start, n_max = [], 0, int(max_seconds * SR)
    while len(audio) - start > n_max:
        lo, hi = start + n_max - int(search_seconds * SR), start + n_max
        frames = np.asarray(audio[lo:hi], np.float64)[: (hi - lo) // 320 * 320].reshape(-1, 320)
        cut = lo + 320 * int(np.argmin((frames**2).mean(axis=1))) + 160
        pieces.append(audio[start:cut])
        start = cut
    return pieces + [audio[start:]]


def beam_search(step, logits: np.ndarray, state, log_probs, eot: int, beam_size: int, max_tokens: int = 96,
                prefix: list[int] | None = None, stop_on_loop: bool = True, patience: float = 1.0) -> tuple[list[int], dict]:
    """Beam search from ``logits`` (after the prompt) and its decoder ``state``:
    ``step([token], state)`` -> (logits, new state), never changing ``state`` (hypotheses share
    it); ``log_probs(logits, first)`` -> next-token log-probabilities, suppressions applied.

    Each step extends every live hypothesis by its ``beam_size`` + 1 likeliest tokens and keeps
    the ``beam_size`` best continuations by total log-probability; one ending among them (end of
    text, the token budget, a loop) is finished instead. It stops when ``beam_size`` are finished,
    and the finished one with the highest mean log-probability per token wins (the end token
    counted, so a hypothesis cut short pays for it) -> (tokens, {avg_logprob, stopped, finished}),
    ``finished`` being every finished hypothesis as (tokens, that mean), best first.
    """
    live = [(list(prefix or []), 0.0, [], logits, state)]  # tokens, total log-prob, their log-probs, logits, state
    done: list[tuple[list[int], float, list[float], str]] = []
    while live and len(done) < beam_size * patience:
        cands = []
        for h, (toks, total, _, lg, _) in enumerate(live):
            lp = log_probs(lg, not toks)
            for t in np.argpartition(-lp, beam_size)[: beam_size + 1]:
                cands.append((total + float(lp[t]), h, int(t), float(lp[t])))
        cands.sort(key=lambda c: -c[0])
        kept, slots = [], 0
        for total, h, t, lp_t in cands:
            toks, _, lps, _, st = live[h]
            if t == eot:
                done.append((toks, total, lps + [lp_t], "eot"))
                continue
            new, lps = toks + [t], lps + [lp_t]
            end = "budget" if len(new) >= max_tokens else "loop" if stop_on_loop and _looping(new) else None
            if end:
                done.append((new, total, lps, end))
            else:
                kept.append((new, total, lps, st))
            slots += 1
            if slots == beam_size:
                break
        live = [(toks, total, lps, *step([toks[-1]], st)) for toks, total, lps, st in kept]
    done.sort(key=lambda d: -d[1] / len(d[2]))
    toks, _, lps, stopped = done[0]
    words = lps[:-1] if stopped == "eot" else lps  # as greedy's: the end token's log-prob is no word's
    return toks, {"avg_logprob": float(np.mean(words)) if words else 0.0, "stopped": stopped,
                  "finished": [(d[0], d[1] / len(d[2])) for d in done]}


RETRY_PAD_SECONDS = 30.0


def dynamics_db(audio: np.ndarray, frame: int = 320) -> float:
    """Standard deviation of the 20 ms frame levels in dB: how much the loudness moves."""
    n = len(audio) // frame
    if n < 2:
        return 0.0
    f = np.asarray(audio[: n * frame], np.float64).reshape(n, frame)
    return float(np.std(20 * np.log10(np.sqrt((f**2).mean(axis=1)) + 1e-9)))


def echoes(text: str, prompt: str, min_words: int = 3) -> bool:
    """Is ``text`` (at least ``min_words`` words) a piece of ``prompt``, read back word for word?
    Prompted Whisper does that over sounds and speech it cannot make out."""
    said = normalize(text)
    return len(said.split()) >= min_words and f" {said} " in f" {normalize(prompt)} "


def normalize(text: str) -> str:
    """Lower case, letters, digits and apostrophes only (what the responder's LM reads, too)."""
    return " ".join("".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split())


_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
         "seventeen eighteen nineteen".split()
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}


def in_digits(text: str) -> str:
    """Number words as digits ("twenty five minutes" -> "25 minutes"), as a recogniser writes them."""
    out, words, i = [], text.split(), 0
    while i < len(words):
        w = words[i]
        if w in _TENS:
            n = _TENS[w]
            if i + 1 < len(words) and words[i + 1] in _UNITS[1:10]:
                n, i = n + _UNITS.index(words[i + 1]), i + 1
            out.append(str(n))
        elif w in _UNITS[2:]:  # "one" and "a" stay words: "one hour", "in one go"
            out.append(str(_UNITS.index(w)))
        else:
            out.append(w)
        i += 1
    return " ".join(out)


def _suspicious(text: str, info: dict, opts: AsrOptions) -> bool:
    return info["stopped"] == "loop" or (bool(text) and compression_ratio(text) > opts.compression_ratio_threshold)


def cut_loop(ids: list[int], n_max: int = 8) -> list[int]:
    """Drop the trailing repeats of an n-gram, keeping its first occurrence."""
    for n in range(1, n_max + 1):
        k = len(ids)
        while k >= 2 * n and ids[k - n : k] == ids[k - 2 * n : k - n]:
            k -= n
        if k < len(ids):
            return ids[:k]
    return ids


def _looping(ids: list[int], n_max: int = 4, repeats: int = 3) -> bool:
    """True when the tail is an n-gram (n <= n_max) repeated ``repeats`` times in a row."""
    for n in range(1, n_max + 1):
        if len(ids) >= n * repeats and all(ids[-n:] == ids[-n * (k + 1) : len(ids) - n * k] for k in range(1, repeats)):
            return n > 1 or len(ids) >= 6  # a single token repeated thrice is a loop only in longer text
    return False


def compression_ratio(text: str) -> float:
    b = text.encode("utf-8")
    return len(b) / max(1, len(zlib.compress(b)))


@dataclasses.dataclass(frozen=True)
class SegmenterOptions:
    """aggressiveness: webrtcvad 0-3. start_frames: voiced 20 ms frames (of the last 5) that open
    speech. hangover: seconds of non-speech that close it. floor_dbfs: quieter frames are
    non-speech whatever the VAD says. max_segment: seconds after which a segment is cut.
    preroll: seconds kept before the first voiced frame."""

    aggressiveness: int = 3
    start_frames: int = 3
    hangover: float = 0.5
    floor_dbfs: float = -50.0
    max_segment: float = 25.0
    preroll: float = 0.2


class SpeechSegmenter:
    """Per-stream: 16 kHz samples in, (start_s, end_s, audio) segments out, plus the open one."""

    FRAME = 320  # 20 ms

    def __init__(self, opts: SegmenterOptions = SegmenterOptions()):
        import webrtcvad

        self.vad = webrtcvad.Vad(opts.aggressiveness)
        self.opts = opts
        self.reset()

    def reset(self) -> None:
        self._pending = np.zeros(0, np.float32)
        self._history: list[np.ndarray] = []  # recent frames (pre-roll)
        self._voiced_recent: list[bool] = []
        self.frames = 0
        self.active: list[np.ndarray] | None = None
        self.start_frame = 0
        self._silent_run = 0

    @property
    def active_audio(self) -> np.ndarray | None:
        return np.concatenate(self.active) if self.active else None

    def _voiced(self, f: np.ndarray) -> bool:
        rms = float(np.sqrt(np.mean(np.square(f, dtype=np.float64))))
        if 20 * np.log10(rms + 1e-12) < self.opts.floor_dbfs:
            return False
        return self.vad.is_speech((np.clip(f, -1, 1) * 32767).astype("<i2").tobytes(), SR)

    def push(self, samples: np.ndarray, flush: bool = False) -> list[tuple[float, float, np.ndarray]]:
        done = []
        buf = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        n = len(buf) // self.FRAME
        self._pending = buf[n * self.FRAME :]
        pre = int(self.opts.preroll * 50)
        for i in range(n):
            f = buf[i * self.FRAME : (i + 1) * self.FRAME]
            v = self._voiced(f)
            self.frames += 1
            self._voiced_recent = (self._voiced_recent + [v])[-5:]
            if self.active is None:
                self._history = (self._history + [f])[-(pre + 5) :]
                if sum(self._voiced_recent) >= self.opts.start_frames:
                    self.active = list(self._history)
                    self.start_frame = self.frames - len(self._history)
                    self._silent_run = 0
            else:
                self.active.append(f)
                self._silent_run = 0 if v else self._silent_run + 1
                long = len(self.active) * 0.02 >= self.opts.max_segment
                if self._silent_run * 0.02 >= self.opts.hangover or long:
                    keep = len(self.active) - max(0, self._silent_run - 5)  # keep 100 ms after the last voice
                    done.append(self._close(keep))
        if flush and self.active is not None:
            done.append(self._close(len(self.active)))
        return done

    def _close(self, keep: int) -> tuple[float, float, np.ndarray]:
        audio = np.concatenate(self.active[:keep])
        seg = (self.start_frame * 0.02, (self.start_frame + keep) * 0.02, audio)
        self.active, self._history, self._voiced_recent = None, [], []
        return seg


class Transcriber:
    """Per-stream transcription: push 16 kHz audio, get ``transcript`` events (DESIGN section 5)."""

    def __init__(self, bundle: WhisperBundle, opts: AsrOptions = AsrOptions(), seg: SegmenterOptions = SegmenterOptions()):
        self.b, self.opts = bundle, opts
        self.segmenter = SpeechSegmenter(seg)
        self.latency_ms: list[float] = []
        self.decode_ms: list[float] = []
        self.dropped = 0
        self._partial_at = 0.0
        self._recent: list[str] = []

    def push(self, samples: np.ndarray, flush: bool = False) -> list[dict]:
        events = []
        for start, end, audio in self.segmenter.push(samples, flush):
            t0 = time.perf_counter()
            text, info = self.b.transcribe(audio, self.opts)
            ms = 1000 * (time.perf_counter() - t0)
            self.latency_ms.append(ms)
            self._partial_at, self._recent = 0.0, []
            if info["dropped"]:
                self.dropped += 1
                log.info("segment %.2f-%.2f dropped (%s)", start, end, info["dropped"])
                continue
            if text:
                events.append({"type": "transcript", "t_start": round(start, 2), "t_end": round(end, 2), "text": text,
                               "final": True, "decode_ms": round(ms, 1)})
        live = self.segmenter.active
        if live is not None and self.opts.partial_every > 0:
            dur = len(live) * 0.02
            if dur - self._partial_at >= self.opts.partial_every:
                self._partial_at = dur
                events += self._partial()
        return events

    def _partial(self) -> list[dict]:
        audio = self.segmenter.active_audio
        t0 = time.perf_counter()
        text, info = self.b.transcribe(audio, dataclasses.replace(self.opts, beam_size=1))
        self.decode_ms.append(1000 * (time.perf_counter() - t0))
        if info["dropped"] or not text:
            return []
        self._recent = (self._recent + [text])[-2:]
        if len(self._recent) < 2:
            return []
        stable = _agreed_prefix(*self._recent)
        if not stable:
            return []
        start = self.segmenter.start_frame * 0.02
        return [{"type": "transcript", "t_start": round(start, 2), "t_end": round(start + len(audio) / SR, 2),
                 "text": stable, "final": False}]


def _agreed_prefix(a: str, b: str) -> str:
    wa, wb = a.split(), b.split()
    n = 0
    while n < min(len(wa), len(wb)) and _norm(wa[n]) == _norm(wb[n]):
        n += 1
    return " ".join(wb[:n])


def _norm(w: str) -> str:
    return "".join(c for c in w.lower() if c.isalnum())


def load_asr_manifest_kind(path: str | Path) -> str:
    return json.loads((Path(path) / "manifest.json").read_text()).get("kind", "")

"""The responder stage: the streaming model decides *when* to speak; a pretrained LM writes *what*.

    decision loop: <respond> -> the streaming model's own reply (held, not said yet)
        a sound reply (manifest ``pass_through``, "The doorbell is ringing.") -> said as it is
        otherwise: the utterance it answers (SpeechTrail: webrtcvad, back from the decision chunk)
                   -> Whisper (the bundle's ``asr``) -> transcript
                   -> the LM (the bundle's ``lm``), prompted with (instruction, transcript)
                   -> its reply is said instead; an empty reply (the end token at once) or no
                      speech to answer withholds the response (``response.withheld``, reason ``responder``)

A responder bundle is a folder with ``manifest.json`` (kind ``responder``) naming two bundles inside
it: an audio-interaction bundle whose decoder is the LM (its encoder is unused) and a whisper-asr
bundle. ``edge-export responder`` writes one (SmolLM2-135M + the LoRA trained by
``edge-train-responder``, Whisper tiny.en).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import re
import threading
import time
from pathlib import Path

import numpy as np

from .bundle import BundleError
from .loop import Context, _p_top
from .model import Bundle
from .sessions import SessionConfig
from .whisper_asr import SR, AsrOptions, SegmenterOptions, WhisperBundle, in_digits, normalize

log = logging.getLogger(__name__)
FRAME = 320  # 20 ms at 16 kHz, webrtcvad's frame
COPY_TOP = 20  # with copy_slots: how many of the LM's likeliest next tokens may be tried at a step
COPY_BACKTRACK = 8  # and how many times a token may be taken back


def numbers_heard(text: str, heard: str | None) -> bool:
    """Was every number of ``text`` (in digits or words, "forty five" = "45") in what was heard?"""
    want = set(re.findall(r"\d+", in_digits(normalize(text))))
    return want <= set(re.findall(r"\d+", in_digits(normalize(heard or ""))))


def reply_form(template: str) -> re.Pattern:
    """A reply template ("Turning on the {room} lights.") as a pattern: each ``{slot}`` is any words."""
    return re.compile(re.sub(r"\\\{\w+\\\}", "(.+)", re.escape(template)))


def formed(text: str, forms: list[re.Pattern], unknown_reply: str) -> str:
    """``text``, or ``unknown_reply`` when forms are given and it fits none of them."""
    return unknown_reply if text and forms and not any(f.fullmatch(text) for f in forms) else text


def copy_forms(templates: list[str], slots: list[str]) -> list[tuple[str, str]]:
    """(the text before, the text after) the slot of each reply template whose one slot is one of
    ``slots`` ("Setting a timer for {duration}." -> ("Setting a timer for ", "."))."""
    out = []
    for t in templates:
        found = re.findall(r"\{(\w+)\}", t)
        if len(found) == 1 and found[0] in slots:
            before, after = t.split("{" + found[0] + "}")
            out.append((before, after))
    return out


def copies(text: str, forms: list[tuple[str, str]], heard: str, done: bool = False) -> bool:
    """May a reply read so far as ``text`` go on (``done``: end there) when the slot of a
    ``copy_forms`` form must be words heard in a row (``heard``: normalized)? Outside those forms
    anything may; inside one, the slot so far must start words of ``heard`` (case aside), and what
    follows a whole slot must be the start of the form's end (all of it, to end there)."""
    h = f" {heard} "
    for before, after in forms:
        if not text.startswith(before):
            continue
        rest = text[len(before):].lower()
        if rest[:1] == " ":  # a slot starts at once, with a word
            return False
        if not done and f" {rest}" in h:
            return True
        for k in range(1, len(rest)):
            slot, tail = rest[:k].strip(), rest[k:]
            if slot and f" {slot} " in h and (tail == after.lower() if done else after.lower().startswith(tail)):
                return True
        return False
    return True


# before a noun, not a name: "the edge of the table", "along the water's edge", "on edge"
_NOUN_BEFORE = frozenset("the a an my your his her its our their this that on over at to 's".split())
# after a subject, not a name: "Edge is coming round" (Whisper's "Edgar is ..."), unless asked ("Edge is it ...")
_VERB_AFTER = frozenset("is was has had will says said".split())
_ASKED = frozenset("it there this that".split())
_CALLING = frozenset("hey hi hello okay ok oh excuse me".split())  # "Hey Edge is it sunny", "excuse me Edge ..."


def _words(heard: str) -> list[tuple[str, bool]]:
    """Normalized words (a possessive's "'s" its own word), each with whether punctuation follows it."""
    toks = re.findall(r"[\w']+|[^\w\s']", re.sub(r"\b(\w+)'s\b", r"\1 's", heard.lower()))
    return [(t, i + 1 < len(toks) and not (toks[i + 1][0].isalnum() or toks[i + 1][0] in "'_"))
            for i, t in enumerate(toks) if t[0].isalnum() or t[0] in "'_"]


def _name_where(words: list[str], heard: str | None, fits) -> bool:
    """Was one of ``words`` (normalized words or phrases; none: True) heard at a place where
    ``fits(toks, said, i, j)`` (``_words``' tokens, the words alone, the name's span ``said[i:j]``)?"""
    if not words:
        return True
    toks = _words(heard or "")
    said = [w for w, _ in toks]
    return any(said[i : i + len(name)] == name and fits(toks, said, i, i + len(name))
               for name in (w.split() for w in words) for i in range(len(said) - len(name) + 1))


def _as_name(toks: list[tuple[str, bool]], said: list[str], i: int, j: int) -> bool:
    if i > 0 and said[i - 1] in _NOUN_BEFORE or j < len(said) and said[j] == "of":
        return False
    subject = j + 1 < len(said) and not toks[j - 1][1] and said[j] in _VERB_AFTER and said[j + 1] not in _ASKED \
        and (i == 0 or said[i - 1] not in _CALLING)
    return not subject


def heard_as_name(words: list[str], heard: str | None) -> bool:
    """Was one of ``words`` (normalized words or phrases; none: True) heard *as a name*: not after
    an article, a possessive or a preposition ("the edge", "the water's edge", "on edge"), not
    before "of" ("edge of the table") and not as the subject of a verb ("Edge is coming round",
    but "Edge, is it ...", "Edge is it ..." and "Hey Edge is ..." call it)?"""
    return _name_where(words, heard, _as_name)


def _calling(toks: list[tuple[str, bool]], said: list[str], i: int, j: int) -> bool:
    return set(said[:i]) <= _CALLING or j == len(said) or i > 0 and toks[i - 1][1] and toks[j - 1][1]


def called(words: list[str], heard: str | None) -> bool:
    """Was one of ``words`` (the assistant's name; none: True) heard where one calls someone: first
    (after a greeting: "Excuse me, Edge. Will it ..."), last ("Cut the music, Edge.") or set off by
    punctuation on both sides; not inside a sentence ("His voice can end edge too.")?"""
    return _name_where(words, heard, _calling)


def only_the_name(words: list[str], heard: str | None) -> bool:
    """Is all that was heard one of ``words`` (the assistant's name; none: False), greeted or not
    ("Hey Edge.", "Excuse me, Edge")?"""
    said = normalize(heard or "").split()
    return bool(words and said) and set(said) <= _CALLING | {w for n in words for w in n.split()} \
        and heard_as_name(words, heard)


# words that open or close a sentence before or after a comma without addressing anyone
_NOT_NAMES = frozenset("""hey hi hello okay ok alright yes yeah no well so oh and but then now right sorry thanks
    please listen look wait actually also first um uh hmm excuse""".split())


def addresses_another(name_words: list[str], heard: str | None) -> bool:
    """Did Whisper hear someone other than the assistant addressed: a capitalised word, not one
    of ``name_words`` nor an interjection, before a comma at the start ("George, crank it up.") or
    after one at the end ("..., George.")?"""
    h = (heard or "").strip()
    found = [re.match(r"([A-Z][a-z]+),", h), re.search(r",\s*([A-Z][a-z]+)[.?!]?$", h)]
    return any(m and m.group(1).lower() not in _NOT_NAMES and normalize(m.group(1)) not in name_words for m in found)


class SpeechTrail:
    """Per stream: the last ``seconds`` of 16 kHz audio and a voiced flag per 20 ms frame, so that a
    response can find the utterance it answers: the last voiced run (gaps under ``gap`` seconds
    bridged) that ended at most ``recent`` seconds before the end of the trail."""

    def __init__(self, seconds: float = 20.0, opts: SegmenterOptions = SegmenterOptions()):
        import webrtcvad

        self.vad, self.floor_dbfs = webrtcvad.Vad(opts.aggressiveness), opts.floor_dbfs
        self.max_frames = int(seconds * SR / FRAME)
        self.reset()

    def reset(self) -> None:
        # a ring of whole frames: push writes only the new frames, utterance() reads them in order
        self._audio = np.zeros((self.max_frames, FRAME), np.float32)
        self._voiced = np.zeros(self.max_frames, bool)
        self.frames = 0  # frames pushed since reset
        self.last_voiced = -1  # the index (in frames since reset) of the last voiced frame; -1: none yet
        self._pending = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> None:
        buf = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        n = len(buf) // FRAME
        self._pending = buf[n * FRAME :]
        frames = buf[: n * FRAME].reshape(n, FRAME)[-self.max_frames :]
        rms_db = 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-24)
        pcm = (np.clip(frames, -1, 1) * 32767).astype("<i2")
        slots = (self.frames + n - len(frames) + np.arange(len(frames))) % self.max_frames
        self._audio[slots] = frames
        voiced = [bool(db >= self.floor_dbfs and self.vad.is_speech(f.tobytes(), SR)) for db, f in zip(rms_db, pcm)]
        self._voiced[slots] = voiced
        if any(voiced):
            self.last_voiced = self.frames + n - len(frames) + max(i for i, v in enumerate(voiced) if v)
        self.frames += n

    def quiet_seconds(self) -> float:
        """Seconds of the trail (whole frames) since its last voiced frame (all of it when none)."""
        return (self.frames - 1 - self.last_voiced) * FRAME / SR

    def _ordered(self) -> tuple[np.ndarray, np.ndarray]:
        """(frames, voiced flags) held, oldest first."""
        held = min(self.frames, self.max_frames)
        order = (self.frames - held + np.arange(held)) % self.max_frames
        return self._audio[order], self._voiced[order]

    def _last_run(self, recent: float, gap: float) -> tuple[np.ndarray, int | None, int | None]:
        """(frames held, the first and last voiced frame of the last voiced run in them), the run's
        frames None when no speech ended in the last ``recent`` s."""
        frames, voiced = self._ordered()
        idx = np.flatnonzero(voiced)
        if not len(idx) or idx[-1] < len(voiced) - recent * SR / FRAME:
            return frames, None, None
        breaks = np.flatnonzero(np.diff(idx) > gap * SR / FRAME)
        return frames, int(idx[breaks[-1] + 1] if len(breaks) else idx[0]), int(idx[-1])

    def run_start(self, recent: float = 2.5, gap: float = 0.5) -> int | None:
        """The frame (counted since reset) where ``utterance`` would start its run, before the
        preroll; None: no speech ended in the last ``recent`` s."""
        frames, start, _ = self._last_run(recent, gap)
        return None if start is None else self.frames - len(frames) + start

    def utterance_span(self, recent: float = 2.5, gap: float = 0.5, preroll: float = 0.2, tail: float | None = 0.3,
                       since: int | None = None) -> tuple[np.ndarray, int, int] | None:
        """``utterance`` with where it lies in the trail: (audio, the frame its first sample is in,
        its last voiced frame), frames counted since reset; None as for ``utterance``."""
        frames, start, last = self._last_run(recent, gap)
        if start is None:
            return None
        first = self.frames - len(frames)  # the frame (since reset) that frames[0] holds
        if since is not None:
            start = min(start, max(0, since - first))
        start = max(0, start - int(preroll * SR / FRAME))
        end = None if tail is None else last + 1 + int(tail * SR / FRAME)
        return frames[start:end].reshape(-1), first + start, first + last

    def utterance(self, recent: float = 2.5, gap: float = 0.5, preroll: float = 0.2,
                  tail: float | None = 0.3, since: int | None = None) -> np.ndarray | None:
        """The last voiced run from ``preroll`` before it to ``tail`` after its last voiced frame
        (None: to the end of the trail), or None when no speech ended in the last ``recent`` s.
        ``since``: a frame (``run_start``) where the run starts at the latest, so that speech that
        paused for longer than ``gap`` since then is heard whole."""
        span = self.utterance_span(recent, gap, preroll, tail, since)
        return None if span is None else span[0]


def heard_after(audio: np.ndarray, first: int, last: int, after: int | None) -> np.ndarray | None:
    """The part of an utterance (``SpeechTrail.utterance_span``: its audio, first frame and last
    voiced frame) from trail frame ``after`` on, where the speech before was already answered;
    None when no voiced frame is left. A request and the words said right after it are one
    voiced run: a response to the words after must not answer the request again."""
    if after is None or after <= first:
        return audio
    if last < after:
        return None
    return audio[(after - first) * FRAME :]


class Responder:
    """Sessions, tokenizers and one LM context. Streams may share one (the utterance comes from
    each stream's SpeechTrail), but it answers one at a time: ``answer`` holds a lock.

    Manifest policy (chosen on the tuning streams, README): ``ask_below``: the responder is asked
    only when the streaming model's confidence in its own reply is under this (default: always);
    ``on_silence``: when the LM answers with silence, ``withhold`` the response or say the
    ``model``'s own reply; ``repeat_instructions``: instructions the LM was trained to answer by
    repeating what was said (transcription): under them the transcript is said without the LM, and
    the responder is asked only under ``repeat_below`` (default: ``ask_below``);
    ``asr_pad_seconds``: silence after the utterance in Whisper's window (AsrOptions.pad_seconds);
    ``asr_prompt``: what Whisper reads as said before the utterance (AsrOptions.prompt);
    ``asr_beam``: Whisper's beam size (AsrOptions.beam_size; 1, the default: greedy);
    ``asr_dereverb_taps``: Whisper hears the utterance dereverberated (AsrOptions.dereverb_taps; 0,
    the default: as it is; both recognisers); ``rescue_above``: a second chance for speech the
    model passed over narrowly: when its p(<respond>) reached this (but not its threshold) and it
    stayed silent, the utterance goes to the responder once ``rescue_wait`` seconds of the trail
    are unvoiced (or 5 s after; with ``rescue_late``, only when that is at most ``rescue_late`` s
    after; default: any), and a reply is said only
    when the LM writes one, Whisper heard one of ``name_words`` (the assistant's name; none
    listed: any) and, when ``rescue_logprob`` is set, Whisper's mean log-probability reached it
    (``rescue_above`` 0, the default: never; not under repeat instructions), or, with
    ``rescue_doubtful``, reached that and Whisper heard the name without its prompt too, where one
    calls someone (``sure_enough``); ``confirm_replies``:
    replies of the model that Whisper always hears out (the LM still only under ``ask_below``)
    and that are withheld when it did not hear one of ``name_words`` in the utterance;
    ``reply_forms``: the replies the device can act on ("Turning on the {room} lights.", a ``{slot}``
    is any words): an LM reply of no such form is replaced by ``unknown_reply`` (it cannot do
    that), so the LM never announces an action the device does not have (none listed: any reply);
    ``overrule_logprob`` / ``overrule_confidence``: a second opinion on the replies the model is
    sure of (not asked by ``ask_below``; not under repeat instructions, not passed through):
    Whisper and the LM hear the utterance out too, and the LM's reply is said instead of the
    model's when Whisper's mean log-probability and the LM's confidence reach these and the LM
    wrote a reply of the device's forms other than ``unknown_reply`` (unset, the default: the
    model's sure replies are said at once; set, every reply waits for Whisper and the LM);
    ``sorry_overrule_logprob``: over the model's ``unknown_reply`` (the words it could not place)
    Whisper's mean log-probability need only reach this, at most ``overrule_logprob`` (default:
    unset, the same bar);
    ``ground_numbers``: a reply Whisper heard out (any but a sure one of the model's without
    ``overrule``) that names a number Whisper did not hear ("Setting the temperature to 61
    degrees." to "Pay the electricity bill.") is said as ``unknown_reply``: the device never acts
    on a number nobody said (default: off); ``asr_second``: a second whisper-asr bundle (a folder
    of the responder, e.g. Whisper base) that hears the utterance again when the first one's mean
    log-probability is under ``asr_second_below`` (or it heard nothing), with
    ``asr_second_pad_seconds`` of silence after it and a beam of ``asr_second_beam`` (default:
    ``asr_beam``); the transcript of the higher mean
    log-probability is the one read (the two mishear these voices differently: README);
    ``withhold_others``: a reply Whisper heard out is withheld when Whisper heard someone else
    addressed ("George, crank it up.") and not the assistant's name (meant_for_another; default:
    off). The name in ``name_words`` counts only where it is used as a name: "the water's edge"
    confirms nothing (heard_as_name). ``asr_prompt`` says the name twice, and Whisper sometimes
    hears it where another name was said ("Ben, what time is it?" -> "Edge, what time ..."): with
    ``others_unprompted`` the first recogniser also hears the utterance without the prompt (its
    window's encoding is kept, so about a fifth of a decode) and ``withhold_others`` counts
    someone else addressed there too; with ``name_unprompted`` a second chance or a confirm reply,
    which have nothing but the name to go on, is said only when the name is heard there too
    (unprompted, named; both default: off). ``reread_below``: when the LM's confidence in its reply
    is under this, Whisper's ``reread_beam`` (default 5) likeliest readings of the utterance are
    answered too and the likeliest reading-and-reply is said (``reread``; default 0: off).
    ``silence_withholds``: when the LM, asked about an utterance in which Whisper heard words,
    writes nothing and is at least this sure of it, the model's reply is withheld too, whatever
    ``on_silence`` or ``overrule`` would keep: the LM read the words as no request ("We walked along
    the water, Edge."; default: unset, off; not under repeat instructions). ``copy_slots``: reply
    slots ("room", "duration", "genre") that the LM must copy from words it read: where its
    likeliest next token would put an unheard word into such a slot of a ``reply_forms`` form
    ("Setting a timer for one hour." to "wake me up in a minute and a half"), the likeliest one
    that keeps to heard words is taken, backing up a token where none does (``copies``; default:
    none; not when the transcript has digits, which a reply may say in words). ``answered_once``:
    speech that a reply said answered is not heard again: the next response hears only what
    follows it (a request and the words said right after it are one voiced run), and the model's
    response with nothing said since is withheld (ResponderWorker, ``heard_after``; default: off)."""

    POLICY_KEYS = ("ask_below", "repeat_below", "on_silence", "repeat_instructions", "pass_through", "asr_pad_seconds",
                   "asr_prompt", "asr_beam", "rescue_above", "rescue_wait", "name_words", "confirm_replies", "reply_forms",
                   "unknown_reply", "overrule_logprob", "overrule_confidence", "ground_numbers", "asr_second",
                   "asr_second_below", "asr_second_pad_seconds", "asr_second_beam", "withhold_others",
                   "rescue_logprob", "asr_dereverb_taps", "name_unprompted",
                   "others_unprompted", "reread_below", "reread_beam", "rescue_late", "silence_withholds", "copy_slots",
                   "rescue_doubtful", "sorry_overrule_logprob", "answered_once")

    def __init__(self, path: str | Path, session: SessionConfig = SessionConfig(), verify_hashes: bool = True):
        root = Path(path)
        mpath = root / "manifest.json"
        if not mpath.is_file():
            raise BundleError(f"{mpath}: missing (not a responder bundle)")
        try:
            raw = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise BundleError(f"{mpath}: unreadable ({e})") from None
        if raw.get("kind") != "responder":
            raise BundleError(f"{mpath}: kind: {raw.get('kind')!r} is not a responder bundle")
        for key in ("lm", "asr", "prompt", "end_token"):
            if key not in raw:
                raise BundleError(f"{mpath}: {key}: missing")
        self.root, self.raw, self.name = root, raw, raw.get("name", root.name)
        self.lm = Bundle(root / raw["lm"], session, verify_hashes=verify_hashes)
        self.asr = WhisperBundle(root / raw["asr"], session, verify_hashes=verify_hashes)
        self.prompt = raw["prompt"]
        self.end_id = self.lm.tokenizer.token_to_id(raw["end_token"])
        if self.end_id is None:
            raise BundleError(f"{mpath}: end_token: {raw['end_token']!r} is not in the LM's tokenizer")
        self.pass_through = set(raw.get("pass_through", []))
        self.max_tokens = int(raw.get("max_tokens", 32))
        self.ask_below = float(raw.get("ask_below", 1.01))
        self.repeat_instructions = set(raw.get("repeat_instructions", []))
        self.repeat_below = float(raw.get("repeat_below", self.ask_below))
        self.asr_options = AsrOptions(pad_seconds=float(raw.get("asr_pad_seconds", AsrOptions.pad_seconds)),
                                      prompt=str(raw.get("asr_prompt", "")), beam_size=int(raw.get("asr_beam", 1)),
                                      dereverb_taps=int(raw.get("asr_dereverb_taps", 0)))
        if self.asr_options.beam_size < 1:
            raise BundleError(f"{mpath}: asr_beam must be at least 1")
        if self.asr_options.dereverb_taps < 0:
            raise BundleError(f"{mpath}: asr_dereverb_taps must be 0 (off) or more")
        self.asr_second = None if not raw.get("asr_second") else \
            WhisperBundle(root / raw["asr_second"], session, verify_hashes=verify_hashes)
        self.asr_second_below = float(raw.get("asr_second_below", 0.0))
        self.asr_second_options = dataclasses.replace(
            self.asr_options, pad_seconds=float(raw.get("asr_second_pad_seconds", self.asr_options.pad_seconds)),
            beam_size=int(raw.get("asr_second_beam", self.asr_options.beam_size)))
        if self.asr_second_options.beam_size < 1:
            raise BundleError(f"{mpath}: asr_second_beam must be at least 1")
        self.rescue_above, self.rescue_wait = float(raw.get("rescue_above", 0.0)), float(raw.get("rescue_wait", 0.5))
        self.rescue_logprob = None if raw.get("rescue_logprob") is None else float(raw["rescue_logprob"])
        self.rescue_doubtful = None if raw.get("rescue_doubtful") is None else float(raw["rescue_doubtful"])
        if self.rescue_doubtful is not None and (self.rescue_logprob is None
                                                 or self.rescue_doubtful > self.rescue_logprob):
            raise BundleError(f"{mpath}: rescue_doubtful must be at most rescue_logprob (and needs it)")
        self.rescue_late = None if raw.get("rescue_late") is None else float(raw["rescue_late"])
        if self.rescue_late is not None and self.rescue_late <= 0:
            raise BundleError(f"{mpath}: rescue_late must be above 0 (or absent: any)")
        self.name_words = [normalize(w) for w in raw.get("name_words", [])]
        self.confirm_replies = set(raw.get("confirm_replies", []))
        self.reply_forms = [reply_form(f) for f in raw.get("reply_forms", [])]
        self.copy_forms = copy_forms(raw.get("reply_forms", []), list(raw.get("copy_slots", [])))
        if raw.get("copy_slots") and not self.copy_forms:
            raise BundleError(f"{mpath}: copy_slots: no reply form has one of {raw['copy_slots']} as its one slot")
        self.unknown_reply = str(raw.get("unknown_reply", ""))
        self.ground_numbers = bool(raw.get("ground_numbers", False))
        self.withhold_others = bool(raw.get("withhold_others", False))
        self.name_unprompted = bool(raw.get("name_unprompted", False))
        self.others_unprompted = bool(raw.get("others_unprompted", False))
        self.answered_once = bool(raw.get("answered_once", False))
        self.reread_below, self.reread_beam = float(raw.get("reread_below", 0.0)), int(raw.get("reread_beam", 5))
        if self.reread_beam < 2:
            raise BundleError(f"{mpath}: reread_beam must be at least 2")
        self.silence_withholds = None if raw.get("silence_withholds") is None else float(raw["silence_withholds"])
        if self.silence_withholds is not None and not 0.0 <= self.silence_withholds <= 1.0:
            raise BundleError(f"{mpath}: silence_withholds must be in [0, 1] (or absent: off)")
        if (self.reply_forms or self.ground_numbers) and not self.unknown_reply:
            raise BundleError(f"{mpath}: reply_forms and ground_numbers need an unknown_reply")
        if not 0.0 <= self.rescue_above < 1.0 or self.rescue_wait < 0:
            raise BundleError(f"{mpath}: rescue_above must be in [0, 1) and rescue_wait >= 0")
        self.overrule_logprob = None if raw.get("overrule_logprob") is None else float(raw["overrule_logprob"])
        self.overrule_confidence = float(raw.get("overrule_confidence", 0.0))
        self.sorry_overrule_logprob = None if raw.get("sorry_overrule_logprob") is None else float(raw["sorry_overrule_logprob"])
        if self.sorry_overrule_logprob is not None and (self.overrule_logprob is None
                                                       or self.sorry_overrule_logprob > self.overrule_logprob):
            raise BundleError(f"{mpath}: sorry_overrule_logprob must be at most overrule_logprob (and needs it)")
        self.on_silence = raw.get("on_silence", "withhold")
        if self.on_silence not in ("withhold", "model"):
            raise BundleError(f"{mpath}: on_silence: {self.on_silence!r} is not withhold or model")
        p = self.prompt
        if p.count("{heard}") != 1 or "{instruction}" not in p or p.index("{instruction}") > p.index("{heard}"):
            raise BundleError(f"{mpath}: prompt: needs {{instruction}} before one {{heard}}")
        self._ctx = Context(self.lm, self.lm.manifest.decoder.max_context, 0.5)
        self._sink_of: str | None = None
        self._lock = threading.Lock()

    def asks(self, instruction: str, text: str, confidence: float) -> bool:
        """Is the responder asked to write this reply of the model (of that confidence)?"""
        if text in self.pass_through:
            return False
        return confidence < (self.repeat_below if instruction in self.repeat_instructions else self.ask_below)

    def overrules(self, instruction: str, text: str, confidence: float) -> bool:
        """Do Whisper and the LM give a second opinion on this reply the model is sure of?"""
        return (self.overrule_logprob is not None and instruction not in self.repeat_instructions
                and text not in self.pass_through and not self.asks(instruction, text, confidence))

    def trusted(self, out: dict, text: str, model_text: str = "") -> bool:
        """Is the LM's reply ``text`` (after the reply forms) to say instead of ``model_text``, a sure
        reply of the model? Over the model's ``unknown_reply`` (it could not place the words) Whisper
        needs only ``sorry_overrule_logprob`` when that is set."""
        logprob = out.get("asr_logprob")
        bar = self.overrule_logprob
        if self.sorry_overrule_logprob is not None and model_text and model_text == self.unknown_reply:
            bar = self.sorry_overrule_logprob
        return bool(text) and text != self.unknown_reply and logprob is not None \
            and logprob >= bar and out.get("lm_confidence", 0.0) >= self.overrule_confidence

    def grounded(self, instruction: str, text: str, heard: str | None) -> str:
        """``text``, or ``unknown_reply`` when it names a number Whisper did not hear (``ground_numbers``;
        ``heard`` None: Whisper did not run, nothing to check against; transcripts are never checked)."""
        if not self.ground_numbers or not text or heard is None or instruction in self.repeat_instructions \
                or numbers_heard(text, heard):
            return text
        return self.unknown_reply

    def rescues(self, instruction: str) -> bool:
        """Does speech the model passed over narrowly get a second chance under this instruction?"""
        return self.rescue_above > 0 and instruction not in self.repeat_instructions

    def sure_enough(self, out: dict, audio: np.ndarray | None = None) -> bool:
        """Did Whisper hear a second chance clearly enough to say the LM's reply to it (``rescue_logprob``)?
        The speech was passed over by the model, so a name it hears in a doubtful transcript is not
        enough: with ``rescue_doubtful``, a transcript under ``rescue_logprob`` but at least that sure
        is enough when Whisper hears the name without its prompt too (``unprompted``: the name it
        makes up is the one the prompt says) and where one calls someone (``called``)."""
        logprob = out.get("asr_logprob")
        if self.rescue_logprob is None or logprob is not None and logprob >= self.rescue_logprob:
            return True
        if self.rescue_doubtful is None or logprob is None or logprob < self.rescue_doubtful:
            return False
        again = self.unprompted(audio, out)
        return again is not None and self.confirms(again) and called(self.name_words, out.get("heard"))

    def confirms(self, heard: str | None) -> bool:
        """Did Whisper hear one of ``name_words`` in the utterance, used as a name (heard_as_name)?"""
        return heard_as_name(self.name_words, heard)

    def unprompted(self, audio: np.ndarray | None, out: dict) -> str | None:
        """What the first recogniser hears in the utterance without ``asr_prompt`` (kept in
        ``out["heard_unprompted"]``, decoded once); None when there is nothing to decode again: no
        audio, no prompt, or the transcript was already decoded without it (``asr_echoed``)."""
        if "heard_unprompted" not in out:
            if audio is None or not self.asr_options.prompt or out.get("asr_echoed"):
                return None
            try:
                with self._lock:
                    out["heard_unprompted"] = self.asr.transcribe(audio, dataclasses.replace(self.asr_options, prompt=""))[0]
            except Exception:  # no second opinion rather than a lost reply
                log.exception("responder: decoding without the prompt failed")
                return None
        return out["heard_unprompted"]

    def named(self, heard: str | None, audio: np.ndarray | None, out: dict) -> bool:
        """Was the name heard (``confirms``), and with ``name_unprompted`` heard again without the
        prompt (``unprompted``)? Asked where the name is all a reply has to go on (second chances,
        ``confirm_replies``)."""
        if not self.confirms(heard):
            return False
        if not self.name_unprompted:
            return True
        again = self.unprompted(audio, out)
        return again is None or self.confirms(again)

    def meant_for_another(self, instruction: str, heard: str | None, audio: np.ndarray | None = None,
                          out: dict | None = None) -> bool:
        """With ``withhold_others``: Whisper heard someone else addressed and not the assistant's
        name (addresses_another), so a reply to it is withheld (never under repeat instructions).
        With ``others_unprompted`` (and the utterance's ``audio`` and answer ``out``) someone else
        addressed in what Whisper hears without its prompt (``unprompted``) counts too."""
        if not self.withhold_others or instruction in self.repeat_instructions:
            return False
        if addresses_another(self.name_words, heard) and not self.confirms(heard):
            return True
        again = self.unprompted(audio, out) if self.others_unprompted and out is not None else None
        return again is not None and addresses_another(self.name_words, again) and not self.confirms(again)

    def declines(self, instruction: str, text: str, out: dict) -> bool:
        """Did the LM read the words Whisper heard as no request: silent (``text`` "") and at least
        ``silence_withholds`` sure of it? Then nothing is said, not even the model's reply."""
        return (self.silence_withholds is not None and not text and instruction not in self.repeat_instructions
                and bool((out.get("heard") or "").strip()) and out.get("lm_confidence", 0.0) >= self.silence_withholds)

    def only_called(self, instruction: str, heard: str | None) -> bool:
        """Did Whisper hear nothing but the name, greeted or not ("Hey Edge.")? Then the request is
        still to come (the model answered at the pause after the name), and the model, listening
        on, answers it once it is said; a reply now is withheld (not under repeat instructions)."""
        return instruction not in self.repeat_instructions and only_the_name(self.name_words, heard)

    def reply(self, instruction: str, heard: str) -> str:
        return self.reply_with_confidence(instruction, heard)[0]

    def reply_with_confidence(self, instruction: str, heard: str) -> tuple[str, float]:
        """Greedy reply of the LM to (instruction, transcript), "" being its silence, and its
        confidence (the lowest probability of any token it chose, the end token included). The
        prompt up to the transcript is prefilled once per instruction and kept as the cache's sink."""
        head, tail = self.prompt.replace("{instruction}", instruction).split("{heard}")
        if self._sink_of != head:
            self._ctx.set_sink(self.lm.embed(self.lm.token_ids(head)))
            self._sink_of = head
        self._ctx.cache.truncate(self._ctx.sink_len)
        self._ctx.blocks.clear()
        read = normalize(heard)
        logits = self._ctx.feed(self.lm.embed(self.lm.token_ids(read + tail)))
        if self.copy_forms and not re.search(r"\d", read):  # digits: a slot may say them in words
            return self._copying(np.array(logits), read)
        ids: list[int] = []
        confidence = 1.0
        while len(ids) < self.max_tokens:
            nxt = int(np.argmax(logits))
            confidence = min(confidence, _p_top(logits))
            if nxt == self.end_id:
                break
            ids.append(nxt)
            logits = self._ctx.feed(self.lm.embed([nxt]))
        return self.lm.tokenizer.decode(ids).strip(), confidence

    def _copying(self, logits: np.ndarray, read: str) -> tuple[str, float]:
        """reply_with_confidence with ``copy_slots``: at each step the likeliest of the LM's
        ``COPY_TOP`` likeliest next tokens that keeps a copied slot to words that were heard
        (``copies``); where none does, the last token is taken back and the next likeliest tried
        there (at most ``COPY_BACKTRACK`` times; then the LM's likeliest, as it would write it). The
        confidence is the lowest probability of a token chosen once the likelier tokens ruled out
        before it are taken away (the constrained decoder's own; without a rule, the LM's)."""
        decode, cache, base = self.lm.tokenizer.decode, self._ctx.cache, self._ctx.cache.length
        ids: list[int] = []
        steps = [(logits, set())]  # per position: the LM's logits there, and the tokens tried there
        probs: list[float] = []
        backs = 0
        while len(ids) < self.max_tokens:
            logits, tried = steps[-1]
            p = np.exp(logits.astype(np.float64).ravel() - logits.max())
            p /= p.sum()
            nxt, ruled_out = None, 0.0
            top = np.argpartition(-p, COPY_TOP)[:COPY_TOP] if p.size > COPY_TOP else np.arange(p.size)
            for cand in map(int, top[np.argsort(-p[top])]):
                if cand not in tried and copies(decode(ids + ([] if cand == self.end_id else [cand])).strip(),
                                                self.copy_forms, read, done=cand == self.end_id):
                    nxt = cand
                    break
                ruled_out += p[cand]
            if nxt is None and ids and backs < COPY_BACKTRACK:
                backs += 1
                ids.pop()
                probs.pop()
                steps.pop()
                self._ctx.blocks.pop()
                cache.truncate(base + len(ids))
                continue
            if nxt is None:
                nxt, ruled_out = int(np.argmax(p)), 0.0
            tried.add(nxt)
            probs.append(float(p[nxt] / max(1.0 - ruled_out, p[nxt])))
            if nxt == self.end_id:
                break
            ids.append(nxt)
            steps.append((np.array(self._ctx.feed(self.lm.embed([nxt]))), set()))
        return decode(ids).strip(), min(probs, default=1.0)

    def written(self, instruction: str, heard: str, asked: dict | None = None) -> tuple[str, float]:
        """The LM's reply to a transcript and its confidence ("" to no words); a reply that repeats
        what was said is written as Whisper wrote it. ``asked``: the LM's replies so far, by the
        text it reads (``normalize``): transcripts that differ only in case or punctuation are
        asked once."""
        read = normalize(heard)
        if asked is not None and read in asked:
            text, confidence = asked[read]
        else:
            text, confidence = self.reply_with_confidence(instruction, heard) if heard.strip() else ("", 1.0)
            if asked is not None:
                asked[read] = text, confidence
        return (heard.strip() if text and text == read else text), confidence

    def reread(self, instruction: str, audio: np.ndarray, heard: str, info: dict, text: str,
               confidence: float) -> tuple[str, str, float, dict]:
        """The LM was unsure of its reply to ``heard`` (under ``reread_below``): the recogniser that
        heard it gives its ``reread_beam`` likeliest readings (WhisperBundle.readings), the LM
        answers each, and the reading whose mean log-probability plus the log of the LM's
        confidence is highest is the one answered (a word misheard in the first reading is often
        right in another: "the grudge lights" / "the garage lights") -> (transcript, reply,
        confidence, note: how many readings, how many the LM answered, the milliseconds, and what
        was heard and replied before when another reading won). The choice is that of asking the
        LM about every reading, for fewer replies: a confidence is at most 1, so a reading whose
        log-probability alone does not beat the best so far cannot win and is not answered (nor
        any less likely one), and readings the LM reads alike are answered once."""
        logprob = info.get("avg_logprob")
        if logprob is None or not heard.strip():
            return heard, text, confidence, {}
        t0 = time.monotonic()
        second = info.get("second", {}).get("read")
        asr, opts = (self.asr_second, self.asr_second_options) if second else (self.asr, self.asr_options)
        best = (logprob + np.log(max(confidence, 1e-6)), heard, text, confidence)
        read = normalize(heard)  # what the LM read, and (written's repeat undone) what it wrote: as written() keeps it
        asked = {read: (read if text and text == heard.strip() else text, confidence)}
        try:
            readings = asr.readings(audio, opts, self.reread_beam, prompted=not info.get("echoed"))
            for other, score in sorted(readings, key=lambda r: -r[1]):
                if score <= best[0]:
                    break
                if other != heard.strip():
                    reply, conf = self.written(instruction, other, asked)
                    best = max(best, (score + np.log(max(conf, 1e-6)), other, reply, conf), key=lambda b: b[0])
        except Exception:  # the first reading's reply rather than none
            log.exception("responder: reading the utterance again failed")
            return heard, text, confidence, {"failed": True}
        note = {"readings": len(readings), "answered": len(asked) - 1, "ms": round(1000 * (time.monotonic() - t0), 1)}
        if best[1] != heard:
            note |= {"first_heard": heard, "first_text": text, "first_confidence": round(confidence, 4)}
        return best[1], best[2], best[3], note

    def hear(self, audio: np.ndarray) -> tuple[str, dict]:
        """Whisper's transcript and info; with ``asr_second``, the second recogniser's instead when
        the first was unsure (under ``asr_second_below``) and the second is surer. info["second"]:
        what the second heard, its mean log-probability and milliseconds, and whether it was read."""
        heard, info = self.asr.transcribe(audio, self.asr_options)
        first = info.get("avg_logprob")
        if self.asr_second is None or (first is not None and first >= self.asr_second_below):
            return heard, info
        t0 = time.monotonic()
        heard2, info2 = self.asr_second.transcribe(audio, self.asr_second_options)
        second = info2.get("avg_logprob")
        read = bool(heard2.strip()) and second is not None and (first is None or second > first)
        note = {"heard": heard2, "logprob": None if second is None else round(float(second), 4),
                "ms": round(1000 * (time.monotonic() - t0), 1), "read": read}
        return (heard2, info2 | {"second": note}) if read else (heard, info | {"second": note})

    def answer(self, instruction: str, audio: np.ndarray | None, lm: bool = True) -> dict:
        """The utterance (SpeechTrail.utterance(); None: no speech to answer) ->
        {"text": what to say ("" for silence), "heard": transcript, "asr_ms", "lm_ms"}; with
        ``lm`` False only Whisper runs (its transcript is in "heard", "text" is "")."""
        if audio is None:
            return {"text": "", "heard": None, "asr_ms": 0.0, "lm_ms": 0.0}
        reread: dict = {}
        with self._lock:
            t0 = time.monotonic()
            heard, info = self.hear(audio)
            t1 = time.monotonic()
            if not lm:
                text, confidence = "", 1.0
            elif instruction in self.repeat_instructions:
                text, confidence = heard.strip(), 1.0
            else:
                text, confidence = self.written(instruction, heard)
                if confidence < self.reread_below:
                    heard, text, confidence, reread = self.reread(instruction, audio, heard, info, text, confidence)
        extra: dict = {"reread": reread} if reread else {}
        if lm and instruction not in self.repeat_instructions and text != formed(text, self.reply_forms, self.unknown_reply):
            extra["lm_text"], text = text, self.unknown_reply  # an action the device does not have
        logprob = info.get("avg_logprob")
        if "second" in info:
            extra["asr_second"] = info["second"]
        if info.get("echoed"):
            extra["asr_echoed"] = True  # Whisper read its prompt back and was asked again without it
        return {"text": text, **extra, "heard": heard, "asr_ms": round(1000 * (t1 - t0), 1),
                "lm_ms": round(1000 * (time.monotonic() - t1), 1),
                "asr_logprob": None if logprob is None else round(float(logprob), 4), "lm_confidence": round(confidence, 4)}


class ResponderWorker:
    """Per stream: one thread that answers the responses the decision loop hands it, in order, so
    that the loop never waits for Whisper and the LM (FIFO-scheduled asynchronous inference: the
    streaming model keeps deciding on every chunk meanwhile). ``say`` is DecisionLoop.say."""

    def __init__(self, responder: Responder, say, answered=lambda voiced: False, said_upto=lambda: -1):
        self.responder, self.say = responder, say
        self.answered = answered  # did the model answer the utterance that ended at this trail frame itself?
        self.said_upto = said_upto  # the trail frame after the speech the last reply said answered (DecisionLoop._said_upto)
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="edge-responder", daemon=True)
        self._thread.start()

    def submit(self, t: float, t_decided: float, model_text: str, confidence: float, tokens: int,
               instruction: str, audio: np.ndarray | None, ask: bool = True, check: bool = False,
               rescue: float | None = None, voiced: int = -1, overrule: bool = False,
               span: tuple[int, int] | None = None) -> None:
        """``ask``: the LM writes the reply (else Whisper only); ``check``: said only when Whisper
        heard the name (Responder.confirm_replies); ``overrule``: the model is sure of its reply,
        which stands unless the LM's is trusted (Responder.overrules); ``rescue``: a second chance
        (Responder.rescue_above) with this highest p(<respond>), for the utterance whose last voiced
        trail frame is ``voiced``: there is no reply of the model's, the LM's silence says nothing
        at all, and neither does its reply once the model has answered that utterance itself.
        ``span``: the audio's first and last voiced trail frames (``SpeechTrail.utterance_span``):
        a reply said to it hands ``say`` the frame after that speech (``upto``: answered), and when
        the job's turn comes the speech before the last reply said is cut off (``heard_after``):
        jobs are answered in order, so a reply said for an earlier job counts."""
        self._jobs.put((t, t_decided, model_text, confidence, tokens, instruction,
                        None if audio is None else audio.copy(), ask or overrule, check, rescue, voiced, overrule, span))

    @property
    def busy(self) -> bool:
        """Is a job waiting or being answered?"""
        return self._jobs.unfinished_tasks > 0

    def close(self, timeout: float = 60.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout)

    def _grounded(self, instruction: str, text: str, out: dict) -> str:
        """What to say of ``text`` once its numbers are checked (Responder.grounded); ``out`` keeps
        an unheard one as ``unheard_text``."""
        said = self.responder.grounded(instruction, text, out.get("heard"))
        if said != text:
            out["unheard_text"] = text
        return said

    def _withheld_because(self, instruction: str, text: str, out: dict, audio: np.ndarray | None, check: bool,
                          unheard: bool, declined: bool = False) -> str | None:
        """Which check withholds this reply (None: none does)."""
        r, heard = self.responder, out.get("heard")
        if unheard:
            return "no_speech"
        if declined and text:
            return "no_request"
        if check and not r.confirms(heard):
            return "name_not_heard"
        if check and text and not r.named(heard, audio, out):
            return "name_not_heard_unprompted"
        if text and r.meant_for_another(instruction, heard, audio, out):
            return "someone_else"
        if text and r.only_called(instruction, heard):
            return "name_alone"
        return None

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if job is None:  # closed
                    return
                self._answer(*job)
            except Exception:  # a fault in one answer must not stop the thread: the next ones still come
                log.exception("responder: answering failed")
            finally:
                self._jobs.task_done()

    def _answer(self, t: float, t_decided: float, model_text: str, confidence: float, tokens: int, instruction: str,
                audio: np.ndarray | None, ask: bool, check: bool, rescue: float | None, voiced: int, overrule: bool,
                span: tuple[int, int] | None = None) -> None:
        r = self.responder
        upto = None if span is None else span[1] + 1  # the frame after the speech a reply here answers
        if audio is not None and span is not None and r.answered_once:
            audio = heard_after(audio, *span, self.said_upto())
            if audio is None:  # nothing said since the last reply: the model answered that speech again
                if rescue is None:
                    self.say(t, "", round(1000 * (time.monotonic() - t_decided), 2), tokens, confidence, withhold=True,
                             model_text=model_text, heard=None, why="answered")
                return
        try:
            out = r.answer(instruction, audio, lm=ask)
        except Exception as e:  # say what the model said rather than lose the response
            log.exception("responder failed")
            out, check = {"text": model_text, "heard": None, "error": str(e)}, False
        text = out.pop("text")

        def total_ms() -> float:  # from the decision to what is said, every check (and its decodes) included
            return round(1000 * (time.monotonic() - t_decided), 2)

        if rescue is not None:
            heard = out.get("heard")
            if text and not r.only_called(instruction, heard) and not self.answered(voiced) and r.named(heard, audio, out) \
                    and r.sure_enough(out, audio) and not r.meant_for_another(instruction, heard, audio, out):  # the LM's reply
                text = self._grounded(instruction, text, out)
                self.say(t, text, total_ms(), 0, out.get("lm_confidence", 1.0), model_text="",
                         rescue=round(rescue, 4), said_by="responder", upto=upto, **out)
            return
        declined = ask and r.declines(instruction, text, out)  # the LM's own silence, not an untrusted reply's
        if overrule and not r.trusted(out, text, model_text):
            text = ""  # the model was sure, and the LM's reply is not trusted over it
        heard = out.get("heard")
        # under repeat instructions, Whisper heard the utterance out and found no words: nothing to write down
        unheard = ask and instruction in r.repeat_instructions and heard is not None and not heard.strip()
        keep = (overrule or r.on_silence == "model" or not ask) and not unheard  # the model's reply when the LM is silent
        out["said_by"] = "responder" if text else "model" if keep else None
        text = text or (model_text if keep else "")
        why = self._withheld_because(instruction, text, out, audio, check, unheard, declined)
        if why:
            text, out["said_by"] = "", None
        if not text:
            out["why"] = why or "silent"  # why the reply is withheld: nothing to say, or one of the checks
        text = self._grounded(instruction, text, out)
        self.say(t, text, total_ms(), tokens, confidence, withhold=not text, model_text=model_text, upto=upto, **out)

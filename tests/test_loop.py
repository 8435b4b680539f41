"""The decide-respond loop: chunk-size invariance, FIFO catch-up, bounded context with exact eviction."""

import threading

import numpy as np
import pytest

from conftest import speechlike
from edge_runtime.listener import Listener, ListenerOptions
from edge_runtime.loop import Context, LoopOptions, Repeats, ScriptedDecider, tones
from edge_runtime.model import Bundle
from edge_runtime.sessions import SessionConfig


def _run_feed(bundle, audio, piece_ms, loop_opts, decider=None, rate=16000):
    l = Listener(bundle, options=ListenerOptions(loop=loop_opts, verbose=True), decider=decider,
                 feed_rate=rate, feed_live=False)
    events = []
    collector = threading.Thread(target=lambda: events.extend(l.events(timeout=60)))
    l.start()
    collector.start()
    step = int(rate * piece_ms / 1000)
    for i in range(0, len(audio), step):
        l.feed(audio[i:i + step])
    l.close_input()
    collector.join(120)
    l.join(5)
    assert events and events[-1]["type"] == "end"
    return events


def _decisions(events):
    return [(e["t"], e["p_respond"]) for e in events if e["type"] == "decision"]


def test_chunk_size_invariance(tiny_bundle):
    audio = speechlike(8.0)
    b = Bundle(tiny_bundle[0])
    ref = _decisions(_run_feed(b, audio, 400, LoopOptions(fifo=False)))
    median = float(np.median([p for _, p in ref]))
    opts = LoopOptions(fifo=False, sensitivity=1 - median, max_response_tokens=6)  # about half respond
    runs = {ms: _run_feed(b, audio, ms, opts) for ms in (10, 37, 400)}
    base = runs[400]
    responded = [e["t"] for e in base if e["type"] == "response.start"]
    assert 0 < len(responded) < len(_decisions(base)), "the threshold should split the decisions"
    for ms, ev in runs.items():
        assert [t for t, _ in _decisions(ev)] == [t for t, _ in _decisions(base)], ms
        np.testing.assert_allclose([p for _, p in _decisions(ev)], [p for _, p in _decisions(base)], atol=1e-4)
        assert [e["t"] for e in ev if e["type"] == "response.start"] == responded, ms
        ends = lambda evs: [(e["text"], e["tokens"]) for e in evs if e["type"] == "response.end"]  # noqa: E731
        assert ends(ev) == ends(base), ms


@pytest.mark.parametrize("layout", ["shared", "concat"])
def test_eviction_equals_fresh_prefill(tiny_bundle, layout):
    b = Bundle(tiny_bundle[0], layout=layout)
    ctx = Context(b, capacity=128, evict_fraction=0.5)
    sink = b.embed(b.token_ids("Answer when someone talks to you."))
    ctx.set_sink(sink)
    ctx.log = []
    rng = np.random.default_rng(0)
    checked = 0
    for i in range(120):
        before = ctx.evictions
        n = int(rng.integers(1, 8))
        ctx.feed(0.1 * rng.standard_normal((n, b.manifest.decoder.hidden_size)).astype(np.float32))
        assert ctx.cache.length <= 128
        if ctx.evictions > before:
            kept = ctx.cache.length - ctx.sink_len
            fed = np.concatenate(ctx.log)
            fresh = Context(b, capacity=128, evict_fraction=0.5)
            fresh.set_sink(sink)
            fresh.feed(fed[len(fed) - kept:])  # the most recent tokens, at re-based positions
            assert fresh.cache.length == ctx.cache.length
            for x, y in zip(ctx.cache.numpy(), fresh.cache.numpy()):
                np.testing.assert_allclose(x, y, atol=1e-5)
            checked += 1
    assert checked >= 3
    # each eviction drops at least half the window: O(window) work at most once per eviction block
    total = sum(len(x) for x in ctx.log)
    assert ctx.evictions <= total // ((128 - ctx.sink_len) // 2) + 1


@pytest.fixture(scope="session")
def slow_bundle(tmp_path_factory):
    """A tiny encoder with a decoder ~100x larger than test-tiny's: slow enough to build a backlog."""
    pytest.importorskip("torch")
    import dataclasses

    from edge_export.pipeline import ExportOptions, export_bundle
    from edge_models.audio_interaction import build_model
    from edge_models.zoo import tiny

    model, tok, ref = tiny()
    cfg = dataclasses.replace(model.cfg, name="test-slow-decoder",
                              lm=dataclasses.replace(model.cfg.lm, hidden_size=384, n_layers=8, n_heads=6,
                                                     n_kv_heads=2, head_dim=64, intermediate_size=1536))
    big = build_model(cfg, seed=1)
    out = tmp_path_factory.mktemp("slow") / "bundle"
    export_bundle(big, tok, out, {"source": "test"}, ExportOptions(precision="fp32", layouts=("shared",), max_context=1024))
    return out


def test_fifo_catches_up_and_matches_a_run_without_backlog(slow_bundle, tmp_path):
    import soundfile as sf

    from edge_runtime.audio import FileSource

    audio = speechlike(16.0)
    wav = tmp_path / "a.wav"
    sf.write(wav, audio, 16000)
    opts = LoopOptions(max_response_tokens=40, decide_each_up_to=1)  # every backlog in one call
    b = Bundle(slow_bundle, SessionConfig(threads=1))
    # live-paced at 16x real time: a 40-token response takes longer than several 25 ms chunks
    fifo = Listener(b, FileSource(wav, speed=16.0), ListenerOptions(loop=opts, verbose=True),
                    decider=ScriptedDecider({3})).run()
    plain = _run_feed(b, audio, 400, LoopOptions(max_response_tokens=40, fifo=False), decider=ScriptedDecider({3}))
    dec_f = [e for e in fifo if e["type"] == "decision"]
    catchup = [e for e in dec_f if e["chunks"] > 1]
    assert catchup, "no backlog formed: the decoder was not slow enough"
    stats = next(e for e in fifo if e["type"] == "stats")
    assert stats["backlog_max"] >= 2
    ref = dict(_decisions(plain))
    after = [e for e in dec_f if e["t"] >= catchup[0]["t"]]
    assert len(after) >= 5
    for e in after:  # every decision from the catch-up on equals the backlog-free run's
        assert abs(e["p_respond"] - ref[e["t"]]) < 1e-4, (e, ref[e["t"]])
    # caught up: the last decisions are one chunk each again
    assert all(e["chunks"] == 1 for e in dec_f[-5:])


def test_short_backlogs_are_decided_chunk_by_chunk_so_a_due_response_is_not_passed_over(tiny_bundle):
    """A backlog of 3 chunks whose middle one is where a response is due: decided chunk by chunk
    (the default up to 4), the response comes at that chunk, with the decisions a backlog-free
    run takes; prefilled in one call (decide_each_up_to=1), it comes one chunk late."""
    from edge_runtime.loop import Chunk, DecisionLoop

    b = Bundle(tiny_bundle[0])
    m = b.manifest
    rng = np.random.default_rng(2)
    embeds = [(0.02 * rng.standard_normal((m.encoder.tokens_per_chunk, m.decoder.hidden_size))).astype(np.float32)
              for _ in range(6)]
    chunks = [Chunk(i, 0.4 * (i + 1), e, 0.0, 1.0) for i, e in enumerate(embeds)]

    def run(each_up_to, batches):
        events = []
        loop = DecisionLoop(b, LoopOptions(max_response_tokens=3, decide_each_up_to=each_up_to), events.append,
                            decider=ScriptedDecider({3}), verbose=True)
        for batch in batches:
            loop.process([chunks[i] for i in batch])
        return events

    alone = run(4, [[0], [1], [2], [3], [4], [5]])
    exact = run(4, [[0], [1], [2, 3, 4], [5]])
    fifo = run(1, [[0], [1], [2, 3, 4], [5]])
    start = lambda ev: [e["t"] for e in ev if e["type"] == "response.start"]  # noqa: E731
    assert start(alone) == start(exact) == [1.6] and start(fifo) == [2.0]
    assert [(e["t"], e["chunks"]) for e in exact if e["type"] == "decision"] == [(round(0.4 * (i + 1), 3), 1) for i in range(6)]
    for x, y in zip(_decisions(alone), _decisions(exact)):
        assert x[0] == y[0] and abs(x[1] - y[1]) < 1e-5
    assert [e["chunks"] for e in fifo if e["type"] == "decision"] == [1, 1, 3, 1]
    with pytest.raises(ValueError, match="decide_each_up_to"):
        LoopOptions(decide_each_up_to=0)


def test_backlog_stays_bounded_under_repeated_responses(slow_bundle, tmp_path):
    """Compute below real time (8x pacing) with a response every 4.8 s of audio and evictions:
    the backlog stays small, nothing is dropped, and the loop is caught up most of the time."""
    import soundfile as sf

    from edge_runtime.audio import FileSource

    wav = tmp_path / "long.wav"
    sf.write(wav, speechlike(60.0), 16000)
    decider = ScriptedDecider(range(5, 150, 12))
    ev = Listener(Bundle(slow_bundle), FileSource(wav, speed=8.0),
                  ListenerOptions(loop=LoopOptions(max_response_tokens=24, context=512, repeat_gap=0.0), verbose=True),
                  decider=decider).run()
    stats = [e for e in ev if e["type"] == "stats"][-1]
    assert stats["responses"] == len(decider.chunks)
    assert stats["chunks"] == 150 and stats["dropped_ms"] == 0 and stats["evictions"] >= 1
    assert stats["backlog_max"] <= 20, stats
    sizes = [e["chunks"] for e in ev if e["type"] == "decision"]
    assert sizes.count(1) >= 0.7 * len(sizes), sizes


def test_response_confidence_is_the_greedy_tokens_probability():
    from edge_runtime.loop import _p_top

    assert _p_top(np.log(np.array([1.0, 3.0], dtype=np.float32))) == pytest.approx(0.75)
    assert _p_top(np.array([[0.0, 50.0, 0.0]], dtype=np.float16)) == pytest.approx(1.0)


def test_min_confidence_withholds_unsure_responses_and_keeps_the_context(tiny_bundle, monkeypatch):
    from edge_runtime import loop

    p_top = loop._p_top
    monkeypatch.setattr(loop, "_p_top", lambda x: round(p_top(x), 4))  # the gate then sees what events report
    b = Bundle(tiny_bundle[0])
    audio = speechlike(8.0)
    say = [2, 5, 8, 11, 14, 17]
    free = _run_feed(b, audio, 400, LoopOptions(max_response_tokens=6, fifo=False), ScriptedDecider(say))
    ends = [e for e in free if e["type"] == "response.end"]
    conf = sorted(e["confidence"] for e in ends)
    assert len(ends) == len(say) and conf[0] < conf[-1]
    p = next(c for c in conf if c > conf[0])  # the least confident are withheld, the others said
    held = _run_feed(b, audio, 400, LoopOptions(max_response_tokens=6, fifo=False, min_confidence=p), ScriptedDecider(say))
    # every token is fed either way, so the model decides exactly as before
    np.testing.assert_allclose([q for _, q in _decisions(held)], [q for _, q in _decisions(free)], atol=1e-5)
    said = [(e["t"], e["text"]) for e in held if e["type"] == "response.end"]
    withheld = [(e["t"], e["text"], e["confidence"]) for e in held if e["type"] == "response.withheld"]
    assert said == [(e["t"], e["text"]) for e in ends if e["confidence"] >= p]
    assert withheld == [(e["t"], e["text"], e["confidence"]) for e in ends if e["confidence"] < p]
    assert said and withheld
    kinds = [e["type"] for e in held if e["type"].startswith("response.")]
    for i, k in enumerate(kinds):  # a said response arrives whole: start, one delta, end
        if k == "response.start":
            assert kinds[i + 1:i + 3] == ["response.delta", "response.end"] or kinds[i + 1] == "response.end"
    assert held[-2]["type"] == "stats" and held[-2]["withheld"] == len(withheld) and held[-2]["responses"] == len(said)
    with pytest.raises(ValueError, match="min_confidence"):
        LoopOptions(min_confidence=1.5)


def _tone(seconds: float, sr: int = 16000, seed: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.1 * np.sin(2 * np.pi * 440 * t) + 0.001 * np.random.default_rng(seed).standard_normal(len(t))).astype(np.float32)


def _floor(seconds: float, sr: int = 16000, seed: int = 2) -> np.ndarray:
    return (0.001 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


def test_a_response_said_again_while_its_sound_goes_on_is_a_repeat():
    """Repeats: the same text within 10 s with no quiet gap since is a repeat; a gap of 0.3 s of
    quiet, another text, 10 s, gap 0 or chunks without audio are not."""
    audio = np.concatenate([_floor(1.0), _tone(4.0), _floor(0.5, seed=3), _tone(12.0)])  # quiet between 5.0 and 5.5 s
    r, off, blind = Repeats(gap=0.3), Repeats(gap=0.0), Repeats(gap=0.3)
    t = 0.0

    def feed(upto: float, *reps) -> None:
        nonlocal t
        while t < upto - 1e-9:
            i = int(round(t * 16000))
            for rep in reps:
                rep.push(audio[i:i + 6400], t + 0.4)
            t = round(t + 0.4, 3)
    feed(1.6, r, off)
    for rep in (r, off, blind):
        rep.said("The doorbell is ringing.", 1.6)
    feed(3.2, r, off)
    assert r.possible(3.2) and r.is_repeat("The doorbell is ringing.", 3.2)
    assert not r.is_repeat("The phone is ringing.", 3.2)
    assert not off.possible(3.2) and not off.is_repeat("The doorbell is ringing.", 3.2)
    assert not blind.possible(3.2) and not blind.is_repeat("The doorbell is ringing.", 3.2)  # no audio: nothing judged
    feed(6.0, r)  # through the half second of quiet
    assert not r.possible(6.0) and not r.is_repeat("The doorbell is ringing.", 6.0)
    r.said("The doorbell is ringing.", 6.0)
    feed(9.6, r)
    assert r.is_repeat("The doorbell is ringing.", 9.6)  # the tone never stopped
    feed(16.0, r)
    assert not r.is_repeat("The doorbell is ringing.", 16.0)  # 10 s on


def _beeps(seconds: float, hz: float, sr: int = 16000, seed: int = 4) -> np.ndarray:
    """A smoke alarm's temporal-three pattern: three 0.5 s beeps 0.5 s apart, then 1.5 s of the floor."""
    t = np.arange(int(seconds * sr)) / sr
    on = (t % 4.0 < 2.5) & (t % 1.0 < 0.5)
    tone = np.sin(2 * np.pi * hz * t) + 0.3 * np.sin(4 * np.pi * hz * t)  # a piezo horn: a tone and its octave
    return (0.1 * on * tone + _floor(seconds, sr, seed)).astype(np.float32)


def test_an_alert_said_again_while_the_same_tones_sound_is_a_repeat_through_their_pauses():
    """``same_sound``: an alarm's pauses end nothing: an alert said again (under any alert reply)
    within 10 s while the same tones sound is a repeat; another alarm's tones, speech replies,
    ``same_sound`` 0 and 10 s later are not. ``tones`` tells two alarms apart and finds none in noise."""
    first, other = _beeps(8.0, 3130.0), _beeps(8.0, 2270.0, seed=5)
    audio = np.concatenate([_floor(1.0), first, other, first])
    smoke, timer, lights = "The smoke alarm is going off.", "The kitchen timer is beeping.", "Turning on the lights."
    sounds = frozenset({smoke, timer})
    r, off = Repeats(gap=0.3, sounds=sounds, same_sound=0.7), Repeats(gap=0.3, sounds=sounds, same_sound=0.0)
    t = 0.0

    def feed(upto: float) -> None:
        nonlocal t
        while t < upto - 1e-9:
            i = int(round(t * 16000))
            for rep in (r, off):
                rep.push(audio[i:i + 6400], t + 0.4)
            t = round(t + 0.4, 3)
    feed(2.0)
    for rep in (r, off):
        rep.said(smoke, 2.0)
        rep.said(lights, 2.0)
    feed(5.6)  # the second beep group, after a pause of 1.5 s
    assert r.possible(5.6) and r.is_repeat(smoke, 5.6) and r.is_repeat(timer, 5.6)
    assert not r.is_repeat(lights, 5.6)  # not an alert reply: the gap ends it
    assert not off.is_repeat(smoke, 5.6)
    feed(10.8)  # another alarm
    assert not r.is_repeat(smoke, 10.8)
    r.said(smoke, 10.8)
    feed(22.0)
    assert not r.is_repeat(smoke, 22.0)  # the first alarm again, but more than 10 s after it was announced
    a, b = tones(first[:19200]), tones(first[64000:83200])  # two beep groups
    assert float(a @ b) > 0.8 and float(a @ tones(other[:19200])) < 0.5
    noise = np.random.default_rng(0).standard_normal(19200)
    assert tones(noise[:1000]) is None and float(tones(noise) @ a) < 0.3


def test_an_alert_judged_then_said_reads_its_tones_once(monkeypatch):
    """The loop asks is_repeat and then says the alert on the same audio: one FFT, not two."""
    import edge_runtime.loop as loop_module

    calls = []
    monkeypatch.setattr(loop_module, "tones", lambda audio: calls.append(1) or tones(audio))
    smoke = "The smoke alarm is going off."
    r = Repeats(gap=0.3, sounds=frozenset({smoke}), same_sound=0.7)
    audio = _beeps(8.0, 3130.0)
    for i in range(0, 4 * 6400, 6400):
        r.push(audio[i:i + 6400], (i + 6400) / 16000)
    r.said(smoke, 1.6)
    r.push(audio[25600:32000], 2.0)
    assert r.is_repeat(smoke, 2.0)
    r.said(smoke, 2.0)  # as the loop would for a second alert (here one judged a repeat is not said)
    assert len(calls) == 2  # once when first said, once for the chunk at 2.0 s


def test_the_loop_withholds_a_repeated_response(slow_bundle, tmp_path):
    """Two responses during one unbroken sound: a second with the first's text is held whole and
    withheld (reason repeat) with ``repeat_gap`` on, and said with it 0."""
    import soundfile as sf

    from edge_runtime.audio import FileSource

    wav = tmp_path / "tone.wav"
    sf.write(wav, np.concatenate([_floor(1.0), _tone(6.0)]), 16000)  # a second of a quiet room, then the sound

    def run(gap):
        return Listener(Bundle(slow_bundle), FileSource(wav, fast=True),
                        ListenerOptions(loop=LoopOptions(max_response_tokens=6, fifo=False, repeat_gap=gap)),
                        decider=ScriptedDecider([5, 8, 11])).run()
    said = lambda ev: [(e["t"], e["text"]) for e in ev if e["type"] == "response.end"]  # noqa: E731
    plain, guarded = run(0.0), run(0.3)
    assert len(said(plain)) == 3 and len({x for _, x in said(plain)}) < 3, said(plain)  # the random model repeats itself
    first = [(t, x) for i, (t, x) in enumerate(said(plain)) if x not in [y for _, y in said(plain)[:i]]]
    again = [(t, x, "repeat") for t, x in said(plain) if (t, x) not in first]
    assert said(guarded) == first
    assert [(e["t"], e["text"], e["reason"]) for e in guarded if e["type"] == "response.withheld"] == again


def test_an_alert_reply_the_instruction_does_not_ask_for_is_withheld(slow_bundle, tmp_path):
    """Manifest ``alert_words``: a reply listed there is said only under an instruction that
    contains one of its words (a piece of a word counts, case aside); otherwise it is held whole
    and withheld (reason unasked). Every token is fed either way, so the model decides as before."""
    import shutil

    from conftest import edit_manifest

    bundle = tmp_path / "bundle"
    shutil.copytree(slow_bundle, bundle)
    audio, say = speechlike(8.0), [2, 5, 8, 11, 14, 17]
    opts = LoopOptions(max_response_tokens=6, fifo=False, repeat_gap=0)  # under the bundle's default instruction
    word = Bundle(bundle).manifest.default_instruction.split()[-1].strip(".").upper()

    def run(alert_words):
        edit_manifest(bundle, lambda m: m.update(alert_words=alert_words))
        return _run_feed(Bundle(bundle), audio, 400, opts, ScriptedDecider(say))
    free = run({})
    texts = [e["text"] for e in free if e["type"] == "response.end"]
    assert len(texts) == len(say) and len(set(texts)) >= 2, texts  # the random model says at least two things
    unasked, asked = texts[0], next(x for x in texts if x != texts[0])
    guarded = run({unasked: ["no such word"], asked: ["nor this", word]})
    np.testing.assert_allclose([q for _, q in _decisions(guarded)], [q for _, q in _decisions(free)], atol=1e-5)
    assert [e["text"] for e in guarded if e["type"] == "response.end"] == [x for x in texts if x != unasked]
    assert [(e["text"], e["reason"]) for e in guarded if e["type"] == "response.withheld"] == \
        [(unasked, "unasked")] * texts.count(unasked)
    named = run({unasked: [word[:3]], asked: [word]})
    assert [e["text"] for e in named if e["type"] == "response.end"] == texts

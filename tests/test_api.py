"""The Python API: synchronous Listener with a callback, the asyncio facade under a running loop,
the quiet-chunk gate, and a 2-hour stream with flat memory and a bounded cache."""

import asyncio
import threading
import time

import numpy as np

from conftest import speechlike
from edge_runtime.listener import AsyncListener, Listener, ListenerOptions
from edge_runtime.loop import LoopOptions, ScriptedDecider


def test_callback_and_context_manager(tiny_bundle):
    got = []
    done = threading.Event()

    def cb(ev):
        got.append(ev)
        if ev["type"] == "end":
            done.set()

    with Listener(tiny_bundle[0], callback=cb, feed_live=False) as l:
        l.feed((speechlike(2.0) * 32767).astype(np.int16))  # int16 PCM is accepted as is
        l.close_input()
        assert done.wait(30)
    assert got[0]["type"] == "ready" and got[-1]["type"] == "end"
    assert [e for e in got if e["type"] == "stats"][-1]["chunks"] == 5


def test_feeding_more_than_the_ring_holds_loses_nothing(tiny_bundle):
    """A non-live feed() of 5 s into a 1 s ring waits for room in parts instead of hanging or dropping."""
    got = []
    opts = ListenerOptions(ring_seconds=1.0)
    with Listener(tiny_bundle[0], callback=got.append, feed_live=False, options=opts) as li:
        li.feed(speechlike(5.0))
        li.close_input()
        li.join(30)
    stats = [e for e in got if e["type"] == "stats"][-1]
    assert got[-1]["type"] == "end" and stats["chunks"] == 13 and stats["dropped_ms"] == 0  # the last partial chunk is flushed


def test_asyncio_facade_does_not_block_the_loop(tiny_bundle):
    """A feeder task pushes 100 ms of audio every 100 ms (a live source) while another task
    iterates events and a ticker records when it runs. If waiting for an event blocked the loop,
    the feeder could not run and the ticker would show a gap of a chunk or more; the check is the
    largest gap, which does not depend on how fast the machine decodes."""
    async def main():
        stamps = []
        stop_ticking = asyncio.Event()

        async def ticker():
            while not stop_ticking.is_set():
                stamps.append(time.monotonic())
                await asyncio.sleep(0.005)

        async def feeder(al):
            audio = speechlike(2.0)
            for i in range(0, len(audio), 1600):
                al.feed(audio[i:i + 1600])
                await asyncio.sleep(0.1)
            al.close_input()

        tick_task = asyncio.create_task(ticker())
        async with AsyncListener(tiny_bundle[0],
                                 options=ListenerOptions(loop=LoopOptions(max_response_tokens=4))) as al:
            feed_task = asyncio.create_task(feeder(al))
            events = [ev async for ev in al]
            await feed_task
        stop_ticking.set()
        await tick_task
        return events, stamps

    events, stamps = asyncio.run(asyncio.wait_for(main(), 60))
    assert events[0]["type"] == "ready" and events[-1]["type"] == "end"
    assert [e for e in events if e["type"] == "stats"][-1]["chunks"] == 5
    gaps = np.diff(stamps)
    assert len(stamps) > 20 and gaps.max() < 0.3, (len(stamps), float(gaps.max()))


def test_asyncio_stop_from_the_loop(tiny_bundle):
    async def main():
        al = AsyncListener(tiny_bundle[0])  # live feed, never closed: only stop() ends it
        await al.start()
        al.feed(speechlike(1.0))
        t0 = time.monotonic()
        await al.stop()
        evs = [ev async for ev in al]
        return evs, time.monotonic() - t0

    evs, dt = asyncio.run(asyncio.wait_for(main(), 30))
    assert evs[-1]["type"] == "end" and dt < 2.0


def test_quiet_gate_skips_silence_never_loud_sound(tiny_bundle):
    sr = 16000
    silence = np.zeros(sr * 2, np.float32)
    t = np.arange(sr * 2) / sr
    alarm = (0.5 * np.sign(np.sin(2 * np.pi * 3100 * t)) * ((t * 2) % 1 < 0.5)).astype(np.float32)  # loud beeps
    l = Listener(tiny_bundle[0], options=ListenerOptions(vad_gate=True), feed_live=False)
    l.start()
    l.feed(np.concatenate([silence, alarm, silence]))
    l.close_input()
    evs = list(l.events(timeout=30))
    stats = evs[-2]
    assert stats["chunks"] == 15
    # the 5 chunks of alarm (and the first chunk after it, whose audio includes its tail) are encoded
    assert 8 <= stats["gated_chunks"] <= 10, stats


def test_two_hour_stream_flat_memory_bounded_cache(tiny_bundle):
    """2 h of audio in --fast mode through the real threads: RSS flat, cache bounded, nothing dropped."""
    hours = 2.0
    sr = 16000
    block = speechlike(10.0)
    n_blocks = int(hours * 3600 / 10)
    stats = []
    l = Listener(tiny_bundle[0], feed_live=False, callback=lambda ev: stats.append(ev) if ev["type"] == "stats" else None,
                 decider=ScriptedDecider(range(0, n_blocks * 25, 50)),
                 options=ListenerOptions(loop=LoopOptions(max_response_tokens=8, context=256), stats_interval=600.0))
    l.start()
    for _ in range(n_blocks):
        l.feed(block)
    l.close_input()
    l.join(600)
    assert l.finished
    final = stats[-1]
    assert final["t"] == hours * 3600 and final["chunks"] == hours * 9000 and final["dropped_ms"] == 0
    assert final["evictions"] > 100 and final["context_tokens"] <= 256
    rss = [s["rss_mb"] for s in stats]
    warm = rss[2]  # after 30 min
    assert max(rss[2:]) <= warm * 1.05 + 2.0, rss

"""Whole-loop measurements through the real threads: chunk compute and RTF in --fast mode,
idle CPU of the real-time daemon on silence."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def test_signal(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """Speech-like bursts (a gliding harmonic tone, on 50% of the time) over faint noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    env = (np.sin(2 * np.pi * 0.4 * t) > 0).astype(np.float32)
    f0 = 140 + 40 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(0.15 / k * np.sin(k * phase) for k in range(1, 6)) * env
    return (x + 0.005 * rng.standard_normal(len(t))).astype(np.float32)


def fast_run(bundle: str, seconds: float, threads: int = 1, decoder_threads: int | None = None,
             layout: str | None = None, fifo: bool = True, sensitivity: float = 0.0) -> dict:
    """--fast replay of ``seconds`` of test signal; the final stats event, plus wall time."""
    from edge_runtime.listener import Listener, ListenerOptions
    from edge_runtime.loop import LoopOptions
    from edge_runtime.model import Bundle
    from edge_runtime.sessions import SessionConfig

    session = SessionConfig(threads=threads)
    b = Bundle(bundle, session, layout=layout, decoder_threads=decoder_threads, verify_hashes=False)
    opts = ListenerOptions(loop=LoopOptions(fifo=fifo, sensitivity=sensitivity), session=session,
                           stats_interval=1e9)
    l = Listener(b, options=opts, feed_live=False)
    audio = test_signal(seconds)
    t0 = time.monotonic()
    l.start()
    for i in range(0, len(audio), 16000):
        l.feed(audio[i : i + 16000])
    l.close_input()
    events = list(l.events(timeout=600))
    wall = time.monotonic() - t0
    stats = [e for e in events if e["type"] == "stats"][-1]
    return {**stats, "wall_s": round(wall, 3), "rtf": round(wall / seconds, 4), "audio_s": seconds,
            "kv_layout": b.decoder_file.kv_layout, "threads": threads}


@contextlib.contextmanager
def _edge_listen(bundle: str, audio: np.ndarray, *args: str):
    """``edge-listen --jsonl`` on ``audio`` written to a WAV file, which it plays in real time, in a
    child process: yields (process, its ``ready`` event) once the bundle is loaded."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "input.wav"
        sf.write(wav, audio, 16000, subtype="PCM_16")
        p = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "--bundle", str(bundle), "--input", str(wav),
                              "--jsonl", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            yield p, json.loads(p.stdout.readline() or "{}")
        finally:
            if p.poll() is None:
                p.terminate()
            p.communicate(timeout=10)


def idle_cpu(bundle: str, seconds: float = 60.0, threads: int = 1, sensitivity: float = 0.0) -> dict:
    """CPU seconds per wall second of ``edge-listen`` replaying digital silence in real time.

    ``sensitivity`` 0 turns responses off: untrained bundles (test-tiny, the SmolLM2 one) say
    <respond> to silence at random, which would measure generation, not listening."""
    silence = np.zeros(int((seconds + 30) * 16000), np.float32)
    with _edge_listen(bundle, silence, "--threads", str(threads), "--sensitivity", str(sensitivity)) as (p, ready):
        time.sleep(2.0)  # warm-up
        c0, t0 = _cpu_seconds(p.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = _cpu_seconds(p.pid), time.monotonic()
    return {"sensitivity": sensitivity, "vad_gate": ready.get("vad_gate"), "seconds": round(t1 - t0, 1),
            "cpu_s": round(c1 - c0, 3), "idle_cpu_pct_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 2)}


def realtime_run(bundle: str, seconds: float = 60.0, threads: int = 1) -> dict:
    """``edge-listen`` on ``seconds`` of the test signal paced in real time (a file source plays at
    the audio's own rate, as a microphone delivers it): decision lag (DESIGN section 6: from a
    chunk's last sample to its decision), chunk compute, backlog and CPU, from its final ``stats``
    event and its rusage. Responses on (the default sensitivity): what a user runs."""
    t0 = time.monotonic()
    with _edge_listen(bundle, test_signal(seconds), "--threads", str(threads)) as (p, _):
        c0, t1 = _cpu_seconds(p.pid), time.monotonic()
        events = [json.loads(line) for line in p.stdout]
        _, status, usage = os.wait4(p.pid, 0)  # reap it here: its CPU time comes with it
        p.returncode = os.waitstatus_to_exitcode(status)
        t2 = time.monotonic()
    stats = [e for e in events if e["type"] == "stats"][-1]
    keep = ("chunks", "chunk_ms_p50", "chunk_ms_p99", "decision_lag_ms_p50", "decision_lag_ms_p99", "backlog_max",
            "dropped_ms", "rss_mb")
    cpu = usage.ru_utime + usage.ru_stime - c0
    return {"audio_s": seconds, "threads": threads, "wall_s": round(t2 - t0, 1),
            "responses": sum(e["type"] == "response.end" for e in events), **{k: stats.get(k) for k in keep},
            "cpu_pct_of_one_core": round(100 * cpu / (t2 - t1), 2)}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

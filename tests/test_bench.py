"""edge-bench --quick on a test-tiny bundle: the report has every section, sane numbers, a plot."""

import json
import subprocess
import sys

import pytest
from conftest import subprocess_env


def test_quick_report(tiny_bundle, tiny_bundle_fp32, tmp_path):
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "edge_bench.cli", "--bundle", str(tiny_bundle[0]), "--quick", "--out", str(out),
                        "--compare", str(tiny_bundle_fp32[0])],
                       capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["quick"] and rep["wall_s"] < 120
    assert {"platform", "cpus", "onnxruntime", "provider"} <= set(rep["machine"])
    layouts = {s["kv_layout"] for s in rep["stages"]}
    assert layouts == {"shared", "concat"} and {s["threads"] for s in rep["stages"]} == {1, 2}
    assert {s["precision"] for s in rep["stages"]} == {"int8 (weight-only)", "fp32"}  # --compare: fp32 in the same run
    assert all(s["encoder_precision"] for s in rep["stages"])
    assert [s.get("bundle") for s in rep["stages"]].count(str(tiny_bundle_fp32[0])) == 1
    for s in rep["stages"]:
        for k in ("features_ms", "encoder_ms", "prefill_decision_ms", "chunk_compute_ms", "first_token_ms"):
            assert 0 < s[k]["p50"] <= s[k]["p95"] <= s[k]["p99"], (k, s[k])
        assert s["tokens_per_s"] > 0
    assert [f["backlog"] for f in rep["fifo"]] == [2, 5, 10, 20] and all(f["speedup"] > 0 for f in rep["fifo"])
    assert {r["layout"] for r in rep["kv_steps"]} == {"shared", "concat"}
    lr = rep["long_run"]
    assert lr["final"]["dropped_ms"] == 0 and len(lr["samples"]) >= 10
    assert 0 <= rep["idle"]["idle_cpu_pct_of_one_core"] < 100
    assert {t["metric"] for t in rep["targets"]} >= {"chunk_ms_p99", "rtf", "idle_cpu_pct", "fifo_speedup_k10"}
    assert all(t["met"] is not False or len(t["why_not"]) > 20 for t in rep["targets"])  # a missed target says why
    assert isinstance(rep["idle"]["vad_gate"], bool)
    rt = rep["realtime"]  # real-time mode: decision lag from the daemon's own stats
    assert rt["chunks"] >= 20 and rt["dropped_ms"] == 0 and 0 <= rt["decision_lag_ms_p50"] <= rt["decision_lag_ms_p99"]
    assert "## Real-time mode" in (out / "report.md").read_text()
    md = (out / "report.md").read_text()
    assert "## FIFO resume" in md and "## Targets" in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_pytorch_eager_peer_on_the_same_model(tiny_bundle):
    """edge-bench decoder --torch: PyTorch eager on the bundle's reference model, same step timing."""
    from edge_bench.peers import torch_step_times

    rows = torch_step_times(str(tiny_bundle[0]), [16, 64], threads=1, steps=3)
    assert [r["context"] for r in rows] == [16, 64]
    assert all(r["layout"].startswith("pytorch eager") and r["ms_p50"] > 0 and r["steps"] == 3 for r in rows)


@pytest.mark.parametrize("layout", ["shared", "concat"])
def test_genai_drives_our_exported_graph(tiny_bundle, tmp_path, layout):
    """edge-bench decoder --genai-ours: onnxruntime-genai runs the bundle's own decoder graph (with the
    runtime's embedding lookup put in front); its logits equal our runtime's, and it is timed."""
    import numpy as np
    import onnxruntime_genai as og

    from edge_bench.peers import genai_folder_for_bundle, genai_step_times
    from edge_runtime.model import Bundle

    folder = genai_folder_for_bundle(str(tiny_bundle[0]), str(tmp_path / layout), layout)
    prompt = np.array([5, 77, 12, 200, 150, 31, 9, 42], np.int32)
    model = og.Model(folder)
    gen = og.Generator(model, og.GeneratorParams(model))
    gen.append_tokens(prompt)
    theirs = gen.get_output("logits").reshape(-1)
    b = Bundle(str(tiny_bundle[0]), layout=layout, verify_hashes=False)
    ours = b.decoder.forward(b.decoder.new_cache(), b.embed(prompt.tolist()))
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() < 1e-5
    rows = genai_step_times(folder, [16, 40], threads=1, steps=3, max_length=None)
    assert [r["context"] for r in rows] == [16, 40] and all(r["ms_p50"] > 0 and r["prefill_ms"] > 0 for r in rows)


def test_llamacpp_peer_on_the_smollm2_gguf():
    """edge-bench decoder --llamacpp smollm2: llama.cpp decode steps and prefill on SmolLM2's GGUF.
    Needs llama-cpp-python (a source build, 5-6 min on 2 cores: `pip install '.[bench]'`), which CI
    does not build; the README's numbers come from a machine that has it."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install '.[bench]')")
    from edge_bench.peers import llamacpp_step_times
    from edge_models.smollm2 import gguf_path

    rows = llamacpp_step_times(str(gguf_path()), [8, 64], threads=1, steps=3)
    assert [r["context"] for r in rows] == [8, 64]
    assert all(r["layout"].startswith("llama.cpp") and r["ms_p50"] > 0 and r["prefill_tokens_per_s"] > 0 for r in rows)


def test_wording_probe_reads_text_as_a_recogniser_writes_it_and_keeps_held_out_lines_out():
    from edge_models.responder import SILENT, as_heard, in_digits, normalize, pairs

    assert normalize("Hey Edge, play some hip-hop!") == "hey edge play some hip hop"
    assert in_digits("set a timer for twenty five minutes") == "set a timer for 25 minutes"
    assert in_digits("sixty degrees and one hour") == "60 degrees and one hour"  # "one" stays a word
    train, held = pairs(1, 300, "train++"), pairs(2, 100, "heldout")
    assert not {t for t, _, _ in train} & {t for t, _, _ in held}
    assert {k for _, _, k in held} == {"request", "unknown", "ignore"}
    assert all((r == SILENT) == (k == "ignore") for _, r, k in train + held)
    heard = as_heard(train, __import__("random").Random(0))
    assert any(any(c.isdigit() for c in t) for t, _, _ in heard) and all(t == t.lower() for t, _, _ in heard)


def test_responder_policy_replays_what_each_policy_would_have_said():
    from edge_bench.responder_policy import apply, policies

    events = [{"type": "ready"},
              {"type": "response.end", "t": 1.0, "text": "A", "model_text": "B", "confidence": 0.5, "heard": "x", "asr_logprob": -0.1},
              {"type": "response.withheld", "t": 2.0, "text": "C", "model_text": "C", "confidence": 0.9, "heard": "y", "asr_logprob": -2.0},
              {"type": "response.end", "t": 3.0, "text": "The doorbell is ringing.", "confidence": 0.99}]
    p = policies()

    def said(name):
        return [e["text"] for e in apply(events, p[name]) if e["type"] == "response.end"]

    assert said("model_only") == ["B", "C", "The doorbell is ringing."]
    assert said("responder") == ["A", "The doorbell is ringing."]  # its silence says nothing
    assert said("model_unsure<0.7_keep") == ["A", "C", "The doorbell is ringing."]
    assert said("model_unsure<0.95") == ["A", "The doorbell is ringing."]
    assert said("asr>=-0.5") == ["A", "C", "The doorbell is ringing."]  # Whisper unsure of "y": the model's reply
    assert len(p) == 3 + 5 + 2 * 8  # always one or the other, 5 Whisper thresholds, 8 confidences with and without _keep
    # second chances (no reply of the model's) count only from rescue_above up, and with name
    # words only when one was heard; a confirmed reply is dropped when the name was not heard
    sorry = "Sorry, I can't do that yet."
    events += [{"type": "response.end", "t": 4.0, "text": "D", "model_text": "", "rescue": 0.08, "heard": "Edge, do D."},
               {"type": "response.end", "t": 5.0, "text": "E", "model_text": "", "rescue": 0.2, "heard": "and do E"},
               {"type": "response.end", "t": 6.0, "text": sorry, "model_text": sorry, "confidence": 0.9, "heard": "hedge"}]
    keep = p["model_unsure<0.7_keep"]
    assert said("model_only") == ["B", "C", "The doorbell is ringing.", sorry]
    assert [e["text"] for e in apply(events, keep, 0.1) if e["type"] == "response.end"] == ["A", "C", "The doorbell is ringing.", "E", sorry]
    assert [e["text"] for e in apply(events, keep, 0.05, ("edge",), (sorry,)) if e["type"] == "response.end"] == \
        ["A", "C", "The doorbell is ringing.", "D"]
    # with reply forms, the responder's replies of no form ("A", "D") are said as the Sorry; the model's stay
    forms = ("Turning on the {room} lights.", sorry)
    assert [e["text"] for e in apply(events, keep, 0.05, ("edge",), (sorry,), forms) if e["type"] == "response.end"] == \
        [sorry, "C", "The doorbell is ringing.", sorry]
    # with name words, nothing is said to the name alone ("Hey Edge."): the request is still to come
    bare = [{"type": "response.end", "t": 7.0, "text": "F", "model_text": "G", "confidence": 0.5, "heard": "Hey Edge."},
            {"type": "response.end", "t": 8.0, "text": "H", "model_text": "", "rescue": 0.3, "heard": "Okay, Edge."}]
    assert [e["text"] for e in apply(bare, keep, 0.05, ("edge",)) if e["type"] == "response.end"] == []
    assert [e["text"] for e in apply(bare, keep, 0.05, ("edge",), called=False) if e["type"] == "response.end"] == ["F", "H"]
    assert [e["text"] for e in apply(bare, keep, 0.05) if e["type"] == "response.end"] == ["F", "H"]


def test_responder_policy_relabel_asks_another_lm_on_the_same_transcripts():
    from edge_bench.responder_policy import relabel

    class Other:  # a stand-in LM: replies to what it was told, silent to the rest
        def written(self, instruction, heard):
            return ("Checking the time.", 0.9) if "time" in heard else ("", 1.0)

    meta = {"instruction": "Answer when someone talks to you."}
    events = [{"type": "ready"},
              {"type": "response.withheld", "t": 1.0, "text": "", "model_text": "B", "confidence": 0.5, "heard": "Edge, the time"},
              {"type": "response.end", "t": 2.0, "text": "A", "model_text": "A", "confidence": 0.4, "heard": "Edge, do A"},
              {"type": "response.end", "t": 3.0, "text": "D", "model_text": "", "rescue": 0.1, "heard": "Edge, do D"},
              {"type": "response.end", "t": 4.0, "text": "T", "model_text": "", "rescue": 0.1, "heard": "Edge, the time?"},
              {"type": "response.end", "t": 5.0, "text": "The doorbell is ringing.", "confidence": 0.99}]
    dump = {"assistant": [(meta, events)], "transcribe": [(meta, events)]}
    new = relabel(dump, Other())
    assert [(e["type"], e.get("text"), e.get("lm_confidence")) for e in new["assistant"][0][1]] == [
        ("ready", None, None), ("response.end", "Checking the time.", 0.9), ("response.withheld", "", 1.0),
        ("response.end", "Checking the time.", 0.9), ("response.end", "The doorbell is ringing.", None)]
    assert new["transcribe"] is dump["transcribe"] and events[1]["type"] == "response.withheld"  # Whisper's; the run is kept


def test_responder_policy_and_train_eval_never_run_on_the_acceptance_seeds_by_seed_base(capsys):
    from edge_bench.responder_policy import main
    from edge_models.evaluate import main as train_eval
    from edge_models.evaluate import other_seeds

    for seed in ("500000", "503000", "495000"):
        for run in (lambda: main(["BUNDLE", "RESPONDER", "--out", "x.pkl", "--seed-base", seed]),
                    lambda: train_eval(["BUNDLE", "--seed-base", seed])):
            with pytest.raises(SystemExit) as e:
                run()
            assert e.value.code == 2 and "acceptance streams' seeds" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        train_eval(["BUNDLE", "--seed-base", "900000", "--tuning"])
    assert e.value.code == 2 and "not both" in capsys.readouterr().err
    assert other_seeds(900000) == 900000


def test_near_misses_counts_the_highest_p_of_each_unanswered_utterance():
    from edge_bench.near_misses import near, score

    meta = {"events": [
        {"kind": "speech", "start": 1.0, "end": 2.0, "meta": {"addressed": True}},
        {"kind": "speech", "start": 4.0, "end": 5.0, "meta": {"addressed": True}},
        {"kind": "sound", "start": 6.0, "end": 7.0, "meta": {}},
        {"kind": "speech", "start": 8.0, "end": 9.0, "meta": {"addressed": False, "intent": "near_miss"}}]}
    events = [{"type": "decision", "t": t, "p_respond": p} for t, p in
              ((1.6, 0.02), (2.4, 0.9), (4.4, 0.03), (5.2, 0.07), (6.4, 0.5), (8.8, 0.2), (10.4, 0.6))]
    events.append({"type": "response.end", "t": 2.4, "text": "Checking the time."})
    rows = near(meta, events)
    assert rows == [("addressed", True, 0.9), ("addressed", False, 0.07), ("near_miss", False, 0.2)]  # 10.4 s is too late
    s = score({"assistant": [(meta, events)]})["assistant"]
    assert s["addressed_missed"] == 1 and s["not_addressed_unanswered"] == 1
    assert s["p>=0.05"] == {"addressed_missed": 1, "not_addressed": 1} and s["p>=0.1"] == {"addressed_missed": 0, "not_addressed": 1}


def test_hearing_conditions_put_one_stream_condition_on_the_voice():
    """edge_bench.hearing: every condition keeps the voice at a stream's speech level between 0.2 s
    before and 0.3 s after it, and adds only its own sound (the quiet edges show which)."""
    import random

    import numpy as np

    from edge_bench.hearing import CONDITIONS, condition

    t = np.arange(16000) / 16000
    voice = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    edge = lambda x: float(np.sqrt(np.mean(np.square(x[:3000], dtype=np.float64))))  # noqa: E731  the 0.2 s before
    rms = {}
    for name in CONDITIONS:
        x = condition(name, random.Random(1), voice)
        assert x.dtype == np.float32 and np.isfinite(x).all()
        assert len(x) >= len(voice) + 8000 and np.abs(x[3200:3200 + 16000]).max() > 0.01, name
        rms[name] = edge(x)
    assert rms["clean"] == rms["room"] == 0.0  # silence before the voice: nothing added
    assert rms["noise"] > 0 and rms["music"] > 0
    from edge_models.synth import heard_as_in_a_stream

    both = heard_as_in_a_stream(random.Random(1), voice, noise=True, music=True)  # as edge-train-responder hears them
    alone = heard_as_in_a_stream(random.Random(1), voice, noise=True)
    assert edge(both) > edge(alone) > 0

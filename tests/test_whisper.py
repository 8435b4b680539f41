"""Whisper from shipped CTranslate2 weights: reader, loader, export, streaming transcription.

Real recordings: the Asterisk English prompts (Debian asterisk-core-sounds-en-wav, installed by
.ci/run); we do not train Whisper, so they may be used here."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import subprocess_env

torch = pytest.importorskip("torch")

from edge_bench.asr import SOUNDS, TRANSCRIPTS, asterisk_items, normalize, wer  # noqa: E402
from edge_models.ctranslate2 import CT2FormatError, read_ct2  # noqa: E402
from edge_models.whisper import WhisperASR, load_hf, model_dir  # noqa: E402

UTTERANCES = ["agent-alreadyon", "auth-thankyou", "all-circuits-busy-now", "conf-onlyperson"]


@pytest.fixture(scope="module")
def recordings():
    if not SOUNDS.is_dir() or not TRANSCRIPTS.is_file():
        pytest.fail(f"{SOUNDS} missing: apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en (.ci/run does)")
    return {k: (a, r) for k, a, r in asterisk_items() if k in UTTERANCES}


@pytest.fixture(scope="module")
def tiny():
    return load_hf("tiny.en")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, recordings):
    from edge_export.whisper_export import export_whisper

    root = tmp_path_factory.mktemp("whisper")
    audio = [recordings[k][0] for k in UTTERANCES[:3]]
    reps = {p: export_whisper("tiny.en", root / p, p, verify_audio=audio) for p in ("fp32", "int8")}
    return root, reps


def test_ct2_reader_on_the_real_file(tmp_path):
    spec, v = read_ct2(model_dir("tiny.en") / "model.bin")
    assert spec == "WhisperSpec"
    assert v["decoder/embeddings/weight"].shape == (51864, 384)
    assert v["encoder/conv1/weight"].shape == (384, 80, 3)
    assert v["encoder/layer_3/self_attention/linear_0/weight"].shape == (1152, 384)  # fused QKV
    assert int(v["decoder/num_heads"]) == 6
    bad = tmp_path / "model.bin"
    bad.write_bytes((model_dir("tiny.en") / "model.bin").read_bytes()[:100000])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2(bad)


def test_loader_every_tensor_and_parity_with_hf(tiny):
    hf, tok, info = tiny
    assert info["tensors"] == 140 and info["hf_parameters"] == len(hf.state_dict())  # 0 missing, 0 unexpected, all used
    ours = WhisperASR(hf)
    feats = torch.randn(1, 80, 3000) * 0.3
    ids = torch.tensor([[50257, 50362, 383, 3290]])
    with torch.no_grad():
        ref = hf(input_features=feats, decoder_input_ids=ids).logits[0, -1]
        cross = ours.encode(feats)
        past = [torch.zeros(1, 6, 0, 64)] * 8
        got, _ = ours.decode(ids, past, cross)
    assert (got[0, -1] - ref).abs().max() < 1e-3


def test_features_match_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    from edge_runtime.whisper_asr import whisper_log_mel

    x = (np.random.default_rng(0).standard_normal(16000 * 7) * 0.1).astype(np.float32)
    ref = WhisperFeatureExtractor(feature_size=80)(x, sampling_rate=16000, return_tensors="np").input_features[0]
    np.testing.assert_allclose(whisper_log_mel(x, 3000), ref, atol=2e-3)


def test_export_transcripts_identical_to_pytorch(bundles, recordings):
    root, reps = bundles
    fp32 = reps["fp32"]["greedy"]
    assert len(fp32) == 3 and all(c["identical"] for c in fp32), fp32
    refs = [recordings[k][1] for k in UTTERANCES[:3]]
    assert wer(refs, [c["onnx"] for c in fp32]) <= 0.1
    int8 = reps["int8"]["greedy"]
    assert wer([c["torch"] for c in int8], [c["onnx"] for c in int8]) <= 0.1  # int8 vs fp32 PyTorch
    sizes = {p: sum(f.stat().st_size for f in (root / p).iterdir()) for p in ("fp32", "int8")}
    assert sizes["fp32"] < 160e6 and sizes["int8"] < 55e6  # the 51864 x 384 embedding is stored once


def _listen(bundle, wav, *more, code=0):
    r = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "--bundle", str(bundle), "--input", str(wav),
                        "--fast", "--jsonl", *more], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert r.returncode == code, r.stderr
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()] if code == 0 else r.stderr


@pytest.mark.parametrize("beam,taps", [(1, 0), (3, 20)])
def test_edge_listen_transcribes_real_speech_with_consistent_partials(bundles, recordings, tmp_path, beam, taps):
    """Greedy, and a beam of 3 with each segment dereverberated (--dereverb-taps)."""
    root, _ = bundles
    gap = np.zeros(16000, np.float32)
    wav = tmp_path / "speech.wav"
    sf.write(wav, np.concatenate([gap] + [x for k in UTTERANCES for x in (recordings[k][0], gap)]), 16000)
    evs = _listen(root / "int8", wav, "--beam", str(beam), "--dereverb-taps", str(taps))
    if beam == 1:
        for flag, value, msg in (("--beam", "0", "--beam must be at least 1"), ("--dereverb-taps", "-1", "--dereverb-taps must be 0")):
            err = _listen(root / "int8", wav, flag, value, code=2)
            assert err.strip().count("\n") == 0 and msg in err, err
    finals = [e for e in evs if e["type"] == "transcript" and e["final"]]
    assert len(finals) == len(UTTERANCES), finals
    assert wer([recordings[k][1] for k in UTTERANCES], [e["text"] for e in finals]) <= 0.15
    # policy: a partial's words are the final's first words, except possibly its last word
    partials = [e for e in evs if e["type"] == "transcript" and not e["final"]]
    assert partials
    for p in partials:
        final = next(f for f in finals if f["t_start"] == p["t_start"])
        pw, fw = normalize(p["text"]), normalize(final["text"])
        assert pw[:-1] == fw[: len(pw) - 1], (p["text"], final["text"])
    assert evs[-2]["type"] == "stats" and evs[-1]["type"] == "end"


def _noises():
    sr, n = 16000, 16000 * 60
    rng = np.random.default_rng(0)
    white = 0.1 * rng.standard_normal(n)
    pink = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.arange(1, n // 2 + 2)), n)
    pink *= 0.1 / pink.std()
    t = np.arange(n) / sr
    notes = 220 * 2 ** (np.array([0, 4, 7, 12, 7, 4]) / 12)
    f = notes[(t * 2).astype(int) % len(notes)]
    music = 0.2 * sum(np.sin(2 * np.pi * k * np.cumsum(f) / sr) / k for k in (1, 2, 3)) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    return {"silence": np.zeros(n), "white": white, "pink": pink, "music": music}


@pytest.mark.parametrize("kind", ["silence", "white", "pink", "music"])
def test_no_text_from_silence_noise_or_tones(bundles, tmp_path, kind):
    root, _ = bundles
    wav = tmp_path / f"{kind}.wav"
    sf.write(wav, _noises()[kind].astype(np.float32), 16000)
    evs = _listen(root / "int8", wav)
    texts = [e["text"] for e in evs if e["type"] == "transcript"]
    assert texts == [], texts
    assert evs[-1]["type"] == "end" and evs[-1]["t"] == pytest.approx(60.0, abs=0.05)


def _responder_manifest(rdir, bundles, tiny_bundle, **more) -> dict:
    """A responder bundle in ``rdir`` over the test Whisper (int8) and the random test-tiny LM; its manifest."""
    rdir.mkdir()
    manifest = {"schema": "edge-bundle/1", "kind": "responder", "name": "test-responder", "lm": str(tiny_bundle[0]),
                "asr": str(bundles[0] / "int8"), "prompt": "<instr>{instruction}</instr>{heard}<reply>",
                "end_token": "<|end|>", **more}
    (rdir / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_responder_transcribes_the_utterance_and_prompts_its_lm_with_a_cached_instruction(bundles, recordings, tiny_bundle, tmp_path):
    """The real stage: trail -> Whisper -> the LM (here the random test-tiny bundle, so its words
    are noise, but they must be the words of the whole prompt fed at once)."""
    from edge_runtime.bundle import BundleError
    from edge_runtime.responder import Responder, SpeechTrail

    rdir = tmp_path / "responder"
    manifest = _responder_manifest(rdir, bundles, tiny_bundle, pass_through=["The doorbell is ringing."], max_tokens=8)
    r = Responder(rdir)
    audio, ref = recordings[UTTERANCES[0]]
    trail = SpeechTrail()
    for piece in (np.zeros(16000, np.float32), audio, np.zeros(8000, np.float32)):
        for i in range(0, len(piece), 6400):
            trail.push(piece[i : i + 6400])
    out = r.answer("Answer when someone talks to you.", trail.utterance())
    assert out["heard"] == r.asr.transcribe(trail.utterance())[0]
    assert wer([ref], [out["heard"]]) <= 0.2 and out["asr_ms"] > 0
    # the cached instruction prefix + the transcript give what the whole prompt gives at once
    for instr in ("Answer when someone talks to you.", "Transcribe what you hear.", "Answer when someone talks to you."):
        got = r.reply(instr, "turn on the lights")
        ctx = r._ctx
        whole = f"<instr>{instr}</instr>turn on the lights<reply>"
        logits = ctx.set_sink(r.lm.embed(r.lm.token_ids(whole)))
        r._sink_of = None
        ids = []
        while len(ids) < 8 and int(np.argmax(logits)) != r.end_id:
            ids.append(int(np.argmax(logits)))
            logits = ctx.feed(r.lm.embed([ids[-1]]))
        assert got == r.lm.tokenizer.decode(ids).strip()
    # reply_forms: an LM reply of no form the device acts on becomes the unknown reply
    (rdir / "manifest.json").write_text(json.dumps(manifest | {"reply_forms": ["Turning on the {room} lights.", "Checking the time."],
                                                               "unknown_reply": "Sorry, I can't do that yet.",
                                                               "repeat_instructions": ["Transcribe what you hear."]}))
    formed = Responder(rdir)
    for lm_says, said in (("Turning on the guest room lights.", "Turning on the guest room lights."),
                          ("Checking the stock price.", "Sorry, I can't do that yet."),
                          ("Checking the time. Turning on the lights.", "Sorry, I can't do that yet."), ("", "")):
        formed.reply_with_confidence = lambda instruction, heard, lm_says=lm_says: (lm_says, 0.9)
        out = formed.answer("Answer when someone talks to you.", trail.utterance())
        assert out["text"] == said and out.get("lm_text") == (lm_says if said != lm_says else None), out
    assert formed.answer("Transcribe what you hear.", trail.utterance())["text"] == out["heard"].strip()  # repeats are not forms
    trail.push(np.zeros(3 * 16000, np.float32))
    assert trail.utterance() is None
    assert r.answer("Answer when someone talks to you.", None)["heard"] is None
    from edge_export.check import format_info, info

    d = info(str(rdir))  # edge-export info: the policy and both parts
    assert d["kind"] == "responder" and set(d["parts"]) == {"lm", "asr"} and d["policy"]["pass_through"] == manifest["pass_through"]
    assert "(responder)" in format_info(d) and "(whisper-asr)" in format_info(d)
    for bad, msg in ((lambda m: m.pop("end_token"), "end_token: missing"), (lambda m: m.update(kind="whisper-asr"), "not a responder"),
                     (lambda m: m.update(prompt="{heard} then {instruction}"), "needs .instruction. before"),
                     (lambda m: m.update(end_token="<nope>"), "not in the LM"),
                     (lambda m: m.update(prompt="{heard}"), "needs .instruction. before"),
                     (lambda m: m.update(reply_forms=["Checking the time."]), "reply_forms and ground_numbers need an unknown_reply"),
                     (lambda m: m.update(ground_numbers=True), "reply_forms and ground_numbers need an unknown_reply"),
                     (lambda m: m.update(asr_beam=0), "asr_beam must be at least 1"),
                     (lambda m: m.update(asr_dereverb_taps=-1), "asr_dereverb_taps must be 0"),
                     (lambda m: m.update(rescue_doubtful=-0.5), "rescue_doubtful must be at most rescue_logprob"),
                     (lambda m: m.update(rescue_logprob=-0.3, rescue_doubtful=-0.2), "rescue_doubtful must be at most")):
        m = dict(manifest)
        bad(m)
        (rdir / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(BundleError, match=msg):
            Responder(rdir)


def test_a_second_recogniser_hears_again_only_what_the_first_was_unsure_of(bundles, recordings, tiny_bundle, tmp_path):
    """asr_second: run when the first Whisper's mean log-probability is under asr_second_below (or it
    heard nothing), with its own padding; the surer transcript is read, and the answer says what the
    second heard. Real bundles first (fp32 as the second, always asked), then scripted hearings."""
    from edge_runtime.bundle import BundleError
    from edge_runtime.responder import Responder

    root, _ = bundles
    rdir = tmp_path / "responder"
    rdir.mkdir()
    manifest = {"schema": "edge-bundle/1", "kind": "responder", "name": "test-responder", "lm": str(tiny_bundle[0]),
                "asr": str(root / "int8"), "asr_second": str(root / "fp32"), "asr_second_below": 0.0,
                "asr_second_pad_seconds": 5, "prompt": "<instr>{instruction}</instr>{heard}<reply>", "end_token": "<|end|>",
                "max_tokens": 4}
    (rdir / "manifest.json").write_text(json.dumps(manifest))
    r = Responder(rdir)
    assert r.asr_second_options.pad_seconds == 5 and r.asr_options.pad_seconds == 15
    assert r.asr_second_options.beam_size == r.asr_options.beam_size == 1
    assert r.asr_second_options.dereverb_taps == r.asr_options.dereverb_taps == 0
    (rdir / "manifest.json").write_text(json.dumps(manifest | {"asr_dereverb_taps": 20}))
    assert Responder(rdir).asr_options.dereverb_taps == Responder(rdir).asr_second_options.dereverb_taps == 20
    (rdir / "manifest.json").write_text(json.dumps(manifest | {"asr_second_beam": 5}))
    assert Responder(rdir).asr_second_options.beam_size == 5 and Responder(rdir).asr_options.beam_size == 1
    (rdir / "manifest.json").write_text(json.dumps(manifest | {"asr_second_beam": 0}))
    with pytest.raises(BundleError, match="asr_second_beam"):
        Responder(rdir)
    (rdir / "manifest.json").write_text(json.dumps(manifest))
    audio, ref = recordings[UTTERANCES[0]]
    out = r.answer("Answer when someone talks to you.", audio)
    second = out["asr_second"]
    assert second["ms"] > 0 and wer([ref], [second["heard"]]) <= 0.2 and second["logprob"] < 0
    assert out["heard"] == (second["heard"] if second["read"] else r.asr.transcribe(audio, r.asr_options)[0])

    def hears(text, logprob, calls):
        return lambda audio, opts: (calls.append(opts.pad_seconds), (text, {"avg_logprob": logprob}))[1]

    for first, second, read in (((" turn it up", -0.1), ("turn it down", -0.05), None),  # sure: never asked
                                ((" turn it up", -0.5), ("turn it down", -0.4), "turn it down"),
                                ((" turn it up", -0.5), ("turn it down", -0.6), " turn it up"),
                                (("", None), ("turn it down", -0.9), "turn it down"),  # the first heard nothing
                                ((" turn it up", -0.5), ("", None), " turn it up")):
        calls1, calls2 = [], []
        r.asr_second_below = -0.3
        r.asr.transcribe, r.asr_second.transcribe = hears(*first, calls1), hears(*second, calls2)
        heard, info = r.hear(audio)
        assert calls1 == [15] and calls2 == ([] if read is None else [5])
        assert heard == (first[0] if read is None else read) and ("second" in info) == (read is not None)
        if read is not None:
            assert info["second"]["read"] == (read == second[0]) and info["avg_logprob"] == (second[1] if read == second[0] else first[1])
    (rdir / "manifest.json").write_text(json.dumps(manifest | {"asr_second": "nowhere"}))
    with pytest.raises(BundleError):
        Responder(rdir)


def test_prompt_context_decodes_as_pytorch_and_keeps_the_transcript(tiny, bundles, recordings):
    """AsrOptions.prompt: ``<|startofprev|>`` + the prompt's tokens before ``<|startoftranscript|>``,
    decoded greedily by the fp32 bundle exactly as the PyTorch model decodes the same ids. The
    context is read: a lower-case prompt without punctuation makes Whisper write in that style."""
    from edge_runtime.whisper_asr import AsrOptions, WhisperBundle, whisper_log_mel

    model, _, _ = tiny
    root, _ = bundles
    b = WhisperBundle(root / "fp32")
    audio, ref = recordings[UTTERANCES[2]]
    prompt = "hey edge turn on the kitchen lights"
    ctx = b.context_ids(prompt)
    assert ctx[0] == b.tokenizer.token_to_id("<|startofprev|>") and b.tokenizer.decode(ctx[1:]).strip() == prompt
    assert b.context_ids("  ") == []
    feats = whisper_log_mel(audio, 3000)  # the whole window: the PyTorch encoder takes no other
    got, _ = b.greedy(feats, 40, context=ctx)
    ids = ctx + b.prompt_ids
    with torch.no_grad():
        enc = model.model.encoder(torch.from_numpy(feats[None])).last_hidden_state
        want = []
        while len(want) < 40:
            logits = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([ids + want])).logits[0, -1].double()
            logits[b.suppress] = -float("inf")
            if not want:
                logits[b.begin_suppress] = -float("inf")
            nxt = int(logits.argmax())
            if nxt == b.eot:
                break
            want.append(nxt)
    assert got == want
    plain, styled = b.transcribe(audio)[0], b.transcribe(audio, AsrOptions(prompt=prompt))[0]
    assert styled != plain and normalize(styled) == normalize(plain), (plain, styled)
    assert wer([ref], [styled]) <= 0.2, styled


def test_a_transcript_that_reads_the_prompt_back_is_decoded_again_without_it(bundles, recordings):
    """Prompted Whisper sometimes writes the prompt itself over a doorbell or a mumble ("Hey Edge,
    turn on the kitchen lights."): a transcript that is a piece of the prompt (3 words or more) is
    decoded again without it, and that is what was heard (info["echoed"]), unless it says the same
    words (then they were said: "ten" or "10" alike)."""
    from edge_runtime.whisper_asr import AsrOptions, WhisperBundle, echoes

    prompt = "Hey Edge, turn on the kitchen lights. Edge, set a timer for ten minutes."
    assert echoes("Edge, set a timer for ten minutes.", prompt) and echoes("turn on the kitchen", prompt)
    for text in ("Hey Edge.", "Edge, set a timer for five minutes.", "turn on the kitchen lights please", "kitchen light"):
        assert not echoes(text, prompt), text
    root, _ = bundles
    b = WhisperBundle(root / "int8")
    audio, _ = recordings[UTTERANCES[2]]
    plain, info = b.transcribe(audio)
    assert info["echoed"] is False
    # prompted with exactly what it says, Whisper writes the prompt back; heard again without it, the words are the same
    again, info = b.transcribe(audio, AsrOptions(prompt=plain))
    assert info["echoed"] is False and normalize(again) == normalize(plain), (plain, again)
    # the decoder itself stood in for: the prompt comes back, and without it something else (or the same in digits)
    real = b.decode
    for without, kept in (("The doorbell rang.", "The doorbell rang."), ("Edge, set a timer for 10 minutes.", None)):
        def decode(mel, budget, context, beam_size=1, without=without):
            ids, info = real(mel, budget, context, beam_size)
            text = "Edge, set a timer for ten minutes." if context else without
            return b.tokenizer.encode(" " + text, add_special_tokens=False).ids, info
        b.decode = decode
        heard, info = b.transcribe(audio, AsrOptions(prompt=prompt))
        assert heard == (kept or "Edge, set a timer for ten minutes.") and info["echoed"] is (kept is not None), heard
    b.decode = real


def _toy_lm(seed: int, vocab: int = 6):
    """A toy decoder over ``vocab`` tokens (the last is the end): next-token logits are a fixed
    random function of the whole prefix, and the state is the prefix itself. As in speech, the
    end is unlikely until the prefix is 4 tokens long and likely after."""
    eot = vocab - 1

    def logits_of(prefix: tuple) -> np.ndarray:
        lg = np.random.default_rng([seed, *prefix]).normal(0, 2.5, vocab)
        lg[eot] += 5.0 if len(prefix) >= 4 else -5.0
        return lg

    def step(ids, state):
        state = state + tuple(ids)
        return logits_of(state), state

    def log_probs(logits, first):
        lp = logits - logits.max()
        return lp - np.log(np.exp(lp).sum())

    return logits_of, step, log_probs, eot


def test_beam_search_keeps_each_hypothesis_on_its_own_state():
    """Beam 1 is greedy; a wider beam returns a hypothesis whose reported log-probability is
    that of its own tokens, each read on its own prefix (no state crossed between hypotheses)."""
    from edge_runtime.whisper_asr import beam_search

    differs = 0
    for seed in range(40):
        logits_of, step, log_probs, eot = _toy_lm(seed)
        greedy = []
        while len(greedy) < 8:  # greedy, by hand
            t = int(log_probs(logits_of(tuple(greedy)), not greedy).argmax())
            if t == eot:
                break
            greedy.append(t)
        one, _ = beam_search(step, logits_of(()), (), log_probs, eot, 1, 8, stop_on_loop=False)
        assert one == greedy
        toks, info = beam_search(step, logits_of(()), (), log_probs, eot, 4, 8, stop_on_loop=False)
        path = [log_probs(logits_of(tuple(toks[:i])), i == 0)[t] for i, t in enumerate(toks)]
        assert info["stopped"] in ("eot", "budget") and info["avg_logprob"] == pytest.approx(np.mean(path))
        differs += toks != greedy
        # every finished hypothesis, best first, scored by the mean of its own path (the end token counted)
        finished = info["finished"]
        assert finished[0][0] == toks and len(finished) >= 4
        assert [f[1] for f in finished] == sorted((f[1] for f in finished), reverse=True)
        for hyp, score in finished:
            ended = len(hyp) < 8
            path = [log_probs(logits_of(tuple(hyp[:i])), i == 0)[t] for i, t in enumerate(hyp + [eot] * ended)]
            assert score == pytest.approx(np.mean(path))
    assert differs >= 5  # the search is not greedy in disguise


def test_beam_decode_matches_the_same_search_driven_by_pytorch(tiny, bundles, recordings):
    """The bundle's beam (sharing ONNX caches between hypotheses) against the same search over the
    PyTorch model without a cache; beam 1 is the greedy decode; the transcripts read right."""
    from edge_runtime.whisper_asr import AsrOptions, WhisperBundle, beam_search, whisper_log_mel

    model, _, _ = tiny
    root, _ = bundles
    b = WhisperBundle(root / "fp32")
    audio, ref = recordings[UTTERANCES[2]]
    feats = whisper_log_mel(audio, 3000)
    got, info = b.beam(feats, 4, 40)
    assert b.beam(feats, 1, 40)[0] == b.greedy(feats, 40)[0]
    with torch.no_grad():
        enc = model.model.encoder(torch.from_numpy(feats[None])).last_hidden_state

        def step(ids, state):
            state = state + tuple(ids)
            out = model(encoder_outputs=(enc,), decoder_input_ids=torch.tensor([list(state)])).logits[0, -1]
            return out.double().numpy(), state

        start = tuple(b.prompt_ids)
        want, want_info = beam_search(step, step([], start)[0], start, b._log_probs, b.eot, 4, 40)
    assert got == want and info["avg_logprob"] == pytest.approx(want_info["avg_logprob"], abs=1e-3)
    assert wer([ref], [b.tokenizer.decode(got)]) <= 0.2
    text, info = b.transcribe(audio, AsrOptions(beam_size=4))
    assert normalize(text) == normalize(b.tokenizer.decode(got)) and info["dropped"] is None


def test_audio_longer_than_the_window_is_transcribed_in_pieces_not_cut(bundles, recordings):
    """Whisper sees 30 s at most: a longer clip is cut at its pauses and every piece is heard."""
    from edge_runtime.whisper_asr import MAX_PIECE_SECONDS, WhisperBundle, split_long

    root, _ = bundles
    b = WhisperBundle(root / "int8")
    gap = np.zeros(16000, np.float32)
    order = UTTERANCES * 3  # 46 s
    clip = np.concatenate([x for k in order for x in (recordings[k][0], gap)])
    assert len(clip) > 30 * 16000
    pieces = split_long(clip)
    assert np.array_equal(np.concatenate(pieces), clip) and all(len(p) <= MAX_PIECE_SECONDS * 16000 for p in pieces)
    edges = np.cumsum([len(p) for p in pieces])[:-1]
    assert all(np.abs(clip[e - 160 : e + 160]).max() == 0 for e in edges)  # cut in a pause
    text, info = b.transcribe(clip)
    assert info["pieces"] == len(pieces) >= 2 and info["dropped"] is None
    assert wer([" ".join(recordings[k][1] for k in order)], [text]) <= 0.15, text


def test_responder_training_hears_its_pairs_clean_or_as_the_streams_have_them(bundles):
    """edge-train-responder --asr-conditions: the same training-voice utterances heard by the real
    Whisper clean and under the streams' conditions (echo, noise, a music bed): both give a
    transcript of every one, reported with its WER."""
    from edge_models.responder import speak_and_transcribe

    texts = ["Edge, turn on the kitchen lights", "set a timer for ten minutes, Edge", "what time is it, Edge"]
    path = str(bundles[0] / "int8")
    clean, rep = speak_and_transcribe(texts, path, 7, voices="train")
    echoed, rep_s = speak_and_transcribe(texts, path, 7, voices="train", conditions="stream")
    assert len(clean) == len(echoed) == 3 and all(clean) and all(echoed)
    assert rep["utterances"] == rep_s["utterances"] == 3 and 0 <= rep["wer"] <= 0.5 and 0 <= rep_s["wer"] <= 1.5
    assert rep["heard_by"] == "whisper-asr"


def test_hearing_recipe_trains_a_delta_that_the_export_merges_and_verifies(recordings, tmp_path):
    """edge-train-hearing (a smoke run: 6 training-voice utterances under the streams' conditions, 3
    from each of two synthesis seeds (--more-lines), each seed's encodings kept apart; 3 steps) writes a LoRA delta on tiny.en's top encoder layers and decoder; edge-export whisper
    --lora merges it: the fp32 ONNX transcripts equal the merged PyTorch model's (the export raises
    otherwise), and the manifest records the delta. A missing delta is a one-line error."""
    from edge_export.whisper_export import export_whisper
    from edge_models import whisper_tune
    from edge_models.responder import merge_lora

    assert whisper_tune.main(["--work", str(tmp_path / "h"), "--utterances", "3", "--more-lines", "7", "--steps", "3",
                              "--batch", "2", "--rank", "2", "--dereverb-taps", "20"]) == 0
    assert sorted(f.name for f in (tmp_path / "h").glob("encoded-*.pt")) == ["encoded-3-k2-s1-d20.pt", "encoded-3-k2-s7-d20.pt"]
    delta = tmp_path / "h" / "hearing-lora.npz"
    d = np.load(delta)
    names = {k.rsplit(".", 1)[0] for k in d.files if k != "meta"}
    assert any(n.startswith("encoder.layers.3.") for n in names) and not any(n.startswith("encoder.layers.1.") for n in names)
    assert {"xk.0", "xv.3", "layers.0.q", "layers.3.fc2"} <= names
    assert any(np.abs(d[f"{n}.B"]).max() > 0 for n in names)  # trained: B starts at zero
    base, merged = WhisperASR(load_hf("tiny.en")[0]), WhisperASR(load_hf("tiny.en")[0])
    meta = merge_lora(merged, delta)
    assert meta["frozen_layers"] == 2 and meta["voices"].startswith("train")
    assert meta["utterances"] == 6 and meta["line_seeds"] == [1, 7]  # --more-lines: both seeds' lines
    assert meta["dereverb_taps"] == 20  # heard dereverberated: edge-export responder hears so too
    assert not torch.equal(base.layers[0].q.weight, merged.layers[0].q.weight)
    assert torch.equal(base.encoder.layers[1].fc1.weight, merged.encoder.layers[1].fc1.weight)

    audio = [recordings[UTTERANCES[0]][0]]
    rep = export_whisper("tiny.en", tmp_path / "asr", "fp32", verify_audio=audio, lora=delta)
    assert rep["greedy"][0]["identical"]
    manifest = json.loads((tmp_path / "asr" / "manifest.json").read_text())
    assert manifest["provenance"]["adapter"]["file"] == "hearing-lora.npz"
    assert "LoRA delta trained here" in manifest["license"]
    with pytest.raises(FileNotFoundError, match="edge-train-hearing"):
        export_whisper("tiny.en", tmp_path / "x", "fp32", lora=tmp_path / "missing.npz")
    # --no-decoder: the encoder's top layers and cross K/V only (the decoder writes as tiny.en does)
    acoustic = whisper_tune.trainable(2, decoder=False)
    assert acoustic("encoder.layers.3.fc1") and acoustic("xk.0") and acoustic("xv.3")
    assert not acoustic("layers.0.q") and not acoustic("encoder.layers.1.fc1")


def test_hearing_bench_reports_wer_and_the_name_heard_in_speech_to_ignore(bundles):
    """edge_bench.hearing: held-out requests and speech to ignore, in held-out voices, under each
    stream condition alone; WER per condition and the share of the speech to ignore in which
    Whisper heard the assistant's name as a name (with what it heard)."""
    from edge_bench import hearing
    from edge_runtime.responder import heard_as_name

    rep = hearing.run(str(bundles[0] / "int8"), n=2, ignored=4)
    assert list(rep["conditions"]) == list(hearing.CONDITIONS)
    for c in rep["conditions"].values():
        assert 0 <= c["wer"] <= 1.0 and len(c["name_heard_examples"]) == round(c["name_heard"] * 4)
        assert all(heard_as_name(["edge"], e["heard"]) for e in c["name_heard_examples"])
    assert rep["conditions"]["clean"]["wer"] <= 0.5, rep["conditions"]["clean"]


def test_a_dereverberated_segment_is_what_whisper_hears(bundles, recordings, monkeypatch):
    """AsrOptions.dereverb_taps: the segment goes through dereverb (WPE) before the log-mel, and
    clean speech is still heard right."""
    import edge_runtime.whisper_asr as wa

    root, _ = bundles
    b = wa.WhisperBundle(root / "int8")
    audio, ref = recordings[UTTERANCES[0]]
    calls, real = [], wa.dereverb
    monkeypatch.setattr(wa, "dereverb", lambda a, taps: (calls.append((len(a), taps)), real(a, taps))[1])
    b.transcribe(audio)
    assert calls == []
    text = b.transcribe(audio, wa.AsrOptions(dereverb_taps=20))[0]
    assert calls == [(len(audio), 20)] and wer([ref], [text]) <= 0.2, text


def test_the_asr_bench_hears_each_recording_in_its_own_room_every_run(recordings):
    """edge-bench asr --room: a room drawn from the recording's name (the same every run), its echo
    in the recording, at the recording's peak; an unknown kind of room is refused."""
    from edge_bench.asr import in_a_room

    items = [(k, recordings[k][0], recordings[k][1]) for k in UTTERANCES[:2]]
    a, b = in_a_room(items), in_a_room(items, "synthetic")
    for (name, dry, ref), (_, wet, ref_a), (_, again, _) in zip(items, a, b):
        assert ref_a == ref and np.array_equal(wet, again) and len(wet) > len(dry)
        assert np.abs(wet).max() == pytest.approx(np.abs(dry).max(), rel=1e-3)
        assert np.corrcoef(wet[: len(dry)], dry)[0, 1] < 0.95  # the room's echo is in it
    assert not np.array_equal(a[0][1][:1000], a[1][1][:1000])
    with pytest.raises(ValueError, match="not one of"):
        in_a_room(items, "cathedral")


def test_a_window_decoded_again_is_encoded_once(bundles, recordings, monkeypatch):
    """The last window's encoder output is kept: the same utterance decoded again without the
    prompt (a responder's name check, name_unprompted) reads it instead of encoding again, and
    hears what a bundle that encodes it afresh hears; another window is encoded."""
    import edge_runtime.whisper_asr as wa

    root, _ = bundles
    b, fresh = wa.WhisperBundle(root / "int8"), wa.WhisperBundle(root / "int8")
    runs, real = [], b.encoder.run
    monkeypatch.setattr(b.encoder, "run", lambda feeds: (runs.append(feeds["input_features"].shape), real(feeds))[1])
    audio = recordings[UTTERANCES[0]][0]
    prompted = b.transcribe(audio, wa.AsrOptions(prompt="Hey Edge, turn on the kitchen lights."))[0]
    again = b.transcribe(audio, wa.AsrOptions())[0]
    assert len(runs) == 1, runs
    assert again == fresh.transcribe(audio, wa.AsrOptions())[0] and prompted
    b.transcribe(recordings[UTTERANCES[1]][0])
    assert len(runs) == 2


def test_readings_are_a_beam_over_the_kept_window(bundles, recordings, monkeypatch):
    """WhisperBundle.readings: the n likeliest distinct readings of an utterance just transcribed,
    from its kept encoding (no second encode), the first being what a beam of n transcribes."""
    import edge_runtime.whisper_asr as wa

    root, _ = bundles
    b = wa.WhisperBundle(root / "int8")
    runs, real = [], b.encoder.run
    monkeypatch.setattr(b.encoder, "run", lambda feeds: (runs.append(1), real(feeds))[1])
    audio, ref = recordings[UTTERANCES[0]]
    opts = wa.AsrOptions(prompt="Hey Edge, turn on the kitchen lights.")
    b.transcribe(audio, opts)
    got = b.readings(audio, opts, 4)
    assert len(runs) == 1
    texts = [t for t, _ in got]
    assert len(got) >= 2 and len(set(texts)) == len(texts) and all(texts)
    assert [s for _, s in got] == sorted((s for _, s in got), reverse=True) and all(s < 0 for _, s in got)
    assert texts[0] == b.transcribe(audio, dataclasses.replace(opts, beam_size=4))[0]
    assert wer([ref], [texts[0]]) <= 0.2
    assert b.readings(np.zeros(int(26 * 16000), np.float32), opts, 4) == []  # longer than one window


def test_an_unsure_reply_is_read_again_over_whisper_s_other_readings(bundles, tiny_bundle, tmp_path):
    """reread_below: when the LM's confidence is under it, each of Whisper's reread_beam readings is
    answered and the reading with the highest mean log-probability + log(LM confidence) is said;
    off by default, never under repeat instructions, never for a sure reply."""
    from edge_runtime.bundle import BundleError
    from edge_runtime.responder import Responder

    rdir = tmp_path / "responder"
    manifest = _responder_manifest(rdir, bundles, tiny_bundle, repeat_instructions=["Transcribe what you hear."], max_tokens=4)
    assert Responder(rdir).reread_below == 0.0
    (rdir / "manifest.json").write_text(json.dumps(manifest | {"reread_below": 0.7, "reread_beam": 1}))
    with pytest.raises(BundleError, match="reread_beam must be at least 2"):
        Responder(rdir)
    for bad in ({"sorry_overrule_logprob": -0.6}, {"sorry_overrule_logprob": -0.2, "overrule_logprob": -0.3}):
        (rdir / "manifest.json").write_text(json.dumps(manifest | bad))  # no overrule, or a higher bar than its
        with pytest.raises(BundleError, match="sorry_overrule_logprob must be at most overrule_logprob"):
            Responder(rdir)
    (rdir / "manifest.json").write_text(json.dumps(manifest | {"sorry_overrule_logprob": -0.6, "overrule_logprob": -0.3}))
    assert Responder(rdir).sorry_overrule_logprob == -0.6
    (rdir / "manifest.json").write_text(json.dumps(manifest | {"reread_below": 0.7}))
    r = Responder(rdir)
    assert r.reread_beam == 5 and r.sorry_overrule_logprob is None
    replies = {"Turn on the grudge lights.": ("Turning on the grudge lights.", 0.2),
               "Turn on the garage lights.": ("Turning on the garage lights.", 0.9),
               "Turn on the grudge light.": ("Turning on the grudge light.", 0.95),
               "Turn on the lights.": ("Turning on the lights.", 0.99)}
    read, beams = [], []
    r.asr.transcribe = lambda audio, opts: ("Turn on the grudge lights.", {"avg_logprob": -0.2})
    r.asr.readings = lambda audio, opts, n, prompted=True: (beams.append(n), [
        ("Turn on the grudge lights.", -0.25), ("Turn on the garage lights.", -0.4), ("Turn on the grudge light.", -2.5),
        ("turn on the grudge lights", -0.3)])[1]
    r.reply_with_confidence = lambda instruction, heard: (read.append(heard), replies[heard])[1]
    audio = np.zeros(16000, np.float32)
    out = r.answer("Answer when someone talks to you.", audio)
    # -0.4 + log 0.9 beats -0.2 + log 0.2; -2.5 cannot beat -0.4 + log 0.9 whatever the LM's
    # confidence, so that reading is not answered; nor is the first reading, nor one the LM reads alike
    assert out["text"] == "Turning on the garage lights." and out["heard"] == "Turn on the garage lights."
    assert out["lm_confidence"] == 0.9 and beams == [5]
    assert read == ["Turn on the grudge lights.", "Turn on the garage lights."]
    assert out["reread"]["readings"] == 4 and out["reread"]["answered"] == 1
    assert out["reread"]["first_text"] == "Turning on the grudge lights."
    assert out["reread"]["first_heard"] == "Turn on the grudge lights." and out["reread"]["ms"] >= 0
    assert r.answer("Transcribe what you hear.", audio)["text"] == "Turn on the grudge lights." and beams == [5]
    r.asr.transcribe = lambda audio, opts: ("Turn on the lights.", {"avg_logprob": -0.1})
    out = r.answer("Answer when someone talks to you.", audio)
    assert out["text"] == "Turning on the lights." and "reread" not in out and beams == [5]
    r.asr.transcribe = lambda audio, opts: ("Turn on the grudge lights.", {"avg_logprob": -0.2})
    r.asr.readings = lambda audio, opts, n, prompted=True: [("Turn on the grudge lights.", -0.25)]
    out = r.answer("Answer when someone talks to you.", audio)  # no other reading: the first reply stands
    assert out["text"] == "Turning on the grudge lights." and out["reread"] == {"readings": 1, "answered": 0, "ms": out["reread"]["ms"]}
    r.asr.readings = lambda audio, opts, n, prompted=True: 1 / 0
    out = r.answer("Answer when someone talks to you.", audio)  # a failed reading: the first reply, not none
    assert out["text"] == "Turning on the grudge lights." and out["reread"] == {"failed": True}

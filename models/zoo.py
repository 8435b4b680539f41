"""Rebuilding a bundle's PyTorch reference from the recipe recorded in its manifest
(``reference``), so that ``edge-export verify`` can re-run parity wherever torch is installed."""

from __future__ import annotations

import dataclasses

from tokenizers import Tokenizer

from .audio_interaction import AudioInteractionModel, build_model
from .config import ModelConfig, preset
from .tokenizer import TINY_CORPUS, add_control_tokens, train_bpe


def tiny(seed: int = 0, vocab: int = 300) -> tuple[AudioInteractionModel, Tokenizer, dict]:
    """The test-tiny model: random weights, a BPE trained on a built-in corpus."""
    tok = train_bpe(TINY_CORPUS, vocab)
    model = build_model(preset("test-tiny", tok.get_vocab_size()), seed=seed)
    return model, tok, {"source": "preset", "preset": "test-tiny", "seed": seed, "vocab": vocab}


def smollm2(seed: int = 0, encoder_preset: str = "small", lora: str | None = None) -> tuple[AudioInteractionModel, Tokenizer, dict]:
    """SmolLM2-135M-Instruct as the decoder (control tokens added, their rows set to the mean
    embedding), with a randomly initialised encoder of the ``encoder_preset`` size in front of it.
    The decoder is real; the audio path is untrained. For benchmarks and as a base to train from.
    ``lora``: a delta saved by ``edge-train-responder``, merged into the weights first."""
    import torch

    from .smollm2 import load_smollm2

    lm, tok, info = load_smollm2()
    if lora is not None:
        from .responder import merge_lora

        merge_lora(info["hf_model"], lora)
        lm.load_hf(info["hf_model"])
    n_before = lm.cfg.vocab_size
    add_control_tokens(tok)
    n_after = tok.get_vocab_size()
    base = preset(encoder_preset, n_after)
    cfg = dataclasses.replace(base, name="smollm2-135m", lm=dataclasses.replace(lm.cfg, vocab_size=n_after))
    model = build_model(cfg, seed=seed)
    with torch.no_grad():
        old = lm.model.embed_tokens.weight
        new = torch.cat([old, old.mean(0, keepdim=True).expand(n_after - n_before, -1)])
        sd = {k: v for k, v in lm.state_dict().items()}
        sd["model.embed_tokens.weight"] = new
        sd["lm_head.weight"] = new
        model.lm.load_state_dict(sd, strict=True)
    ref = {"source": "smollm2", "seed": seed, "encoder_preset": encoder_preset}
    return model.eval(), tok, ref | ({"lora": str(lora)} if lora is not None else {})


def from_reference(ref: dict) -> tuple[AudioInteractionModel, Tokenizer, dict]:
    src = ref.get("source")
    if src == "preset" and ref.get("preset") == "test-tiny":
        return tiny(ref.get("seed", 0), ref.get("vocab", 300))
    if src == "smollm2":
        return smollm2(ref.get("seed", 0), ref.get("encoder_preset", "small"), ref.get("lora"))
    if src == "checkpoint":
        from .checkpoint import load_checkpoint

        return load_checkpoint(ref["path"])
    if src == "bundle":
        from .from_bundle import load_bundle_model

        return load_bundle_model(ref["path"])
    raise ValueError(f"cannot rebuild reference {ref!r}")


def config_of(model: AudioInteractionModel) -> ModelConfig:
    return model.cfg

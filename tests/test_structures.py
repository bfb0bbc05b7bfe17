"""Structures, GQA export plans, honest parameter counting."""

import torch

from gisp.adapters import adapter_for
from gisp.structures import Masks, attention_plan, decoder_params, layer_shape, protected_layers

from conftest import tiny_model


def _shape(name):
    model = tiny_model(name)
    return layer_shape(model, adapter_for(model.config))


def test_plan_keeps_regular_groups_without_duplicates():
    shape = _shape("llama-gqa")  # 6 heads over 2 KV heads
    plan = attention_plan(torch.tensor([1, 1, 0, 0, 1, 1], dtype=torch.bool), shape)
    assert plan.q_sources == (0, 1, 4, 5) and plan.kv_sources == (0, 1)


def test_plan_drops_kv_head_whose_queries_are_all_pruned():
    shape = _shape("llama-gqa")
    plan = attention_plan(torch.tensor([0, 0, 0, 1, 0, 1], dtype=torch.bool), shape)
    assert plan.q_sources == (3, 5) and plan.kv_sources == (1,)


def test_plan_uneven_groups_picks_cheapest_layout():
    shape = _shape("llama-gqa")
    # Groups keep 3 and 1 heads. In units of hd*d (q+o = 2 per head, k+v = 2 per KV head):
    # s=1: 4 heads, 4 KV copies -> 16; s=2: 6 heads (2 dummies), 3 KV -> 18; s=3: 6 heads, 2 KV -> 16.
    # Tie between s=1 and s=3: the larger group wins (smaller KV cache).
    plan = attention_plan(torch.tensor([1, 1, 1, 0, 1, 0], dtype=torch.bool), shape)
    assert plan.q_sources == (0, 1, 2, 4, None, None)
    assert plan.kv_sources == (0, 1)
    # Groups keep 3 and 2: s=1 -> 5*2 + 5*2 = 20; s=2 -> 6*2 + 3*2 = 18; s=3 -> 6*2 + 2*2 = 16.
    plan = attention_plan(torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool), shape)
    assert plan.q_sources == (0, 1, 2, 3, 5, None) and plan.kv_sources == (0, 1)
    # Groups keep 1 and 1 of 6 heads over 3 KV (mistral): s=1, no padding, K/V of the two groups.
    plan = attention_plan(torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.bool), _shape("mistral"))
    assert plan.q_sources == (1, 4) and plan.kv_sources == (0, 2)


def test_plan_never_has_more_kv_heads_than_dense():
    # mistral: 6 heads over 3 KV (groups of 2), groups keep 2, 1 and 1 heads. In units of hd*d:
    # s=1 -> 4 heads + 4 KV copies = 16 (cheapest, but 4 KV heads: a larger KV cache than dense);
    # s=2 -> 6 heads (2 zero) + 3 KV = 18: chosen, one KV head per kept group.
    plan = attention_plan(torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool), _shape("mistral"))
    assert plan.q_sources == (0, 1, 2, None, 5, None) and plan.kv_sources == (0, 1, 2)
    # every mask of the 6-head, 2-KV layer: never more than 2 KV heads, never fewer than the kept groups
    shape = _shape("llama-gqa")
    for bits in range(1, 64):
        kept = torch.tensor([bool(bits >> i & 1) for i in range(6)])
        plan = attention_plan(kept, shape)
        groups = int(kept[:3].any()) + int(kept[3:].any())
        assert groups <= plan.num_kv_heads <= 2
        assert sorted(h for h in plan.q_sources if h is not None) == kept.nonzero()[:, 0].tolist()


def test_empty_attention_becomes_one_zero_head():
    shape = _shape("llama-gqa")
    plan = attention_plan(torch.zeros(6, dtype=torch.bool), shape)
    assert plan.q_sources == (None,) and plan.kv_sources == (None,)


def test_decoder_params_count_biases_and_dense_total():
    model = tiny_model("qwen2")
    adapter = adapter_for(model.config)
    shape = layer_shape(model, adapter)
    linears = [l for mods in adapter.all_layer_modules(model) for l in mods.linears().values()]
    total = sum(p.numel() for l in linears for p in l.parameters())
    assert decoder_params(Masks.dense(shape.geometry), shape) == total


def test_protected_layers_reference_default():
    assert protected_layers(32, 0.1, 1) == [0, 1, 2, 31]
    assert protected_layers(30, 0.1, 1) == [0, 1, 2, 29]
    assert protected_layers(4, 0.0, 0) == []

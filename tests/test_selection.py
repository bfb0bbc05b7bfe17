"""gisp.selection: ranking scopes and removal under a parameter budget, on hand-made scores."""

from __future__ import annotations

import math

import torch
from conftest import tiny_model

from gisp.adapters import adapter_for
from gisp.selection import (
    block_fractions,
    depth_ranking,
    global_ranking,
    head_multiple,
    layer_ranking,
    select_under_budget,
)
from gisp.structures import Masks, Structure, decoder_params, dense_layer_params, layer_shape


def _shape():
    model = tiny_model("llama-gqa", layers=3)
    return layer_shape(model, adapter_for(model.config))


def test_global_ranking_is_ascending_skips_protected_and_dead_and_breaks_ties_heads_first():
    g = _shape().geometry
    masks = Masks.dense(g)
    heads = torch.arange(g.num_layers * g.num_heads, dtype=torch.float32).reshape(g.num_layers, g.num_heads)
    channels = torch.full((g.num_layers, g.intermediate_size), 100.0)
    heads[2, 4] = 100.0  # a tie with every channel
    masks.heads[1, 0] = False
    ranking = [u[0] for u in global_ranking(heads, channels, masks, protected=[0])]
    assert all(s.layer != 0 for s in ranking) and Structure("head", 1, 0) not in ranking
    assert ranking[:3] == [Structure("head", 1, 1), Structure("head", 1, 2), Structure("head", 1, 3)]
    assert ranking.index(Structure("head", 2, 4)) < ranking.index(Structure("channel", 1, 0))  # heads first on ties
    assert len(ranking) == 2 * (g.num_heads + g.intermediate_size) - 1


def test_block_fractions_count_what_is_already_gone():
    alive = torch.tensor([True, False, True, True])
    frac = block_fractions(torch.tensor([0.3, 0.0, 0.1, 0.2]), alive)
    assert frac.tolist() == [1.0, math.inf, 0.5, 0.75]  # one gone: the weakest alive takes the block to 2/4


def test_layer_ranking_takes_the_same_fraction_of_every_layer():
    """Units come in order of the fraction of their block removed: with 40 channels and 6 heads a
    layer, six channels of every layer (6/40 < 1/6) go before the first head of any layer."""
    g = _shape().geometry
    assert (g.num_heads, g.intermediate_size) == (6, 40)
    gen = torch.Generator().manual_seed(0)
    heads, channels = torch.rand(g.num_layers, g.num_heads, generator=gen), torch.rand(g.num_layers, g.intermediate_size, generator=gen)
    ranking = [u[0] for u in layer_ranking(heads, channels, Masks.dense(g), protected=[])]
    assert [(s.kind, s.layer) for s in ranking[:3]] == [("channel", 0), ("channel", 1), ("channel", 2)]
    assert all(s.kind == "channel" for s in ranking[:18])
    assert [(s.kind, s.layer) for s in ranking[18:21]] == [("head", 0), ("head", 1), ("head", 2)]
    assert all(channels[s.layer, s.index] == channels[s.layer].min() for s in ranking[:3])  # the weakest first
    kv = layer_ranking(heads, channels, Masks.dense(g), protected=[], head_unit=g.group_size)
    assert all(len(u) == g.group_size for u in kv if u[0].kind == "head")  # whole KV groups


def test_depth_ranking_gives_whole_layers_lowest_first():
    g = _shape().geometry
    ranking = depth_ranking(torch.tensor([0.5, 0.1, 0.9]), Masks.dense(g), protected=[2])
    assert [u[0].layer for u in ranking] == [1, 0]
    assert len(ranking[0]) == g.num_heads + g.intermediate_size


def test_select_under_budget_lands_within_one_channel_below_the_target():
    shape = _shape()
    g = shape.geometry
    total = dense_layer_params(shape) * g.num_layers
    gen = torch.Generator().manual_seed(1)
    ranking = global_ranking(torch.rand(g.num_layers, g.num_heads, generator=gen),
                             torch.rand(g.num_layers, g.intermediate_size, generator=gen), Masks.dense(g), [])
    masks = Masks.dense(g)
    chosen = select_under_budget(ranking, masks, shape, 0, 0.3 * total)
    removed = total - decoder_params(masks, shape)
    assert 0.3 * total - shape.channel_params <= removed <= 0.3 * total + 0.5
    assert len(chosen) == int((~masks.heads).sum() + (~masks.channels).sum())


def test_head_multiple_rounds_widths_not_counts():
    assert head_multiple(32, 64) == 1 and head_multiple(32, 8) == 4 and head_multiple(16, 24) == 2


def test_block_fractions_order_units_and_count_removed_ones():
    from gisp.selection import block_fractions

    scores = torch.tensor([5.0, 1.0, 3.0, 2.0])
    assert block_fractions(scores, torch.ones(4, dtype=torch.bool)).tolist() == [1.0, 0.25, 0.75, 0.5]
    alive = torch.tensor([True, False, True, True])  # one of four already removed
    assert block_fractions(scores, alive).tolist() == [1.0, float("inf"), 0.75, 0.5]
    # units of two (KV groups): unit scores 3 and 2.5 -> the second unit goes first
    assert block_fractions(scores, torch.ones(4, dtype=torch.bool), unit=2).tolist() == [1.0, 1.0, 0.5, 0.5]


def test_layer_ranking_interleaves_layers_by_fraction_and_skips_protected():
    from gisp.selection import layer_ranking

    masks = Masks(torch.ones(3, 2, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool))
    heads = torch.tensor([[1.0, 2.0], [2.0, 1.0], [0.0, 0.0]])
    channels = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    ranking = layer_ranking(heads, channels, masks, protected=[2])
    first = [(s.kind, s.layer, s.index) for unit in ranking[:6] for s in unit]
    # fraction 1/4: channel 0 of layers 0 and 1; 2/4: heads (1/2) first, then channel 1 of each layer
    assert first == [("channel", 0, 0), ("channel", 1, 0), ("head", 0, 0), ("head", 1, 1), ("channel", 0, 1), ("channel", 1, 1)]
    assert all(s.layer != 2 for unit in ranking for s in unit)


def test_budget_walk_removes_whole_units_or_none():
    from gisp.selection import select_under_budget
    from gisp.structures import Structure

    model = tiny_model("llama-mha")
    shape = layer_shape(model, adapter_for(model.config))
    masks = Masks.dense(shape.geometry)
    big = tuple(Structure("channel", 0, i) for i in range(10))
    small = (Structure("channel", 1, 0),)
    chosen = select_under_budget([big, small], masks, shape, 0, 5 * shape.channel_params)
    assert chosen == [small[0]] and masks.channels[0].all()  # the group of 10 overshoots: skipped, restored

"""gisp.ranking: the normaliser a run gets, what each selects, rounding, the search's subset."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from gisp.adapters import adapter_for
from gisp.errors import GispError
from gisp.importance import Scores
from gisp.methods import method_for
from gisp.ranking import (
    NORMALIZATIONS,
    Budget,
    ExchangeRateSearch,
    FixedNormaliser,
    normaliser_for,
    rank,
    rounded,
    search_batches,
)
from gisp.selection import select_under_budget
from gisp.structures import Masks, decoder_params, dense_layer_params, layer_shape


def _setup(name: str = "llama-gqa"):
    model = tiny_model(name, layers=3)
    adapter = adapter_for(model.config)
    shape = layer_shape(model, adapter)
    g = shape.geometry
    gen = torch.Generator().manual_seed(1)
    scores = Scores(torch.rand(g.num_layers, g.num_heads, generator=gen),
                    torch.rand(g.num_layers, g.intermediate_size, generator=gen))
    return model, adapter, shape, scores


def test_normalisations_are_the_search_and_the_fixed_rules():
    assert NORMALIZATIONS == ("search", "params", "reference", "zscore", "none")


def test_a_run_gets_the_search_only_where_heads_can_be_pruned():
    _, _, shape, _ = _setup()
    gisp = method_for("gisp")
    assert isinstance(normaliser_for(gisp, "search", None, True, [0], shape, loss=lambda m: 0.0), ExchangeRateSearch)
    assert isinstance(normaliser_for(gisp, "params", None, True, [0], shape, loss=None), FixedNormaliser)
    no_heads = type(shape)(**{**shape.__dict__, "head_pruning": False})
    fixed = normaliser_for(gisp, "search", None, True, [0], no_heads, loss=lambda m: 0.0)
    assert isinstance(fixed, FixedNormaliser) and fixed.how == "search"  # ranks by params, where the search starts
    with pytest.raises(GispError, match="--normalize search needs a calibration loss"):
        normaliser_for(gisp, "search", None, True, [0], shape, loss=None)


@pytest.mark.parametrize("method, how", [("gisp", "params"), ("magnitude", "reference"), ("wanda-sp", "none"),
                                         ("llm-pruner", "none")])
def test_fixed_normaliser_is_rank_then_select_under_budget(method, how):
    model, adapter, shape, scores = _setup()
    m = method_for(method)
    total = dense_layer_params(shape) * shape.geometry.num_layers
    budget = Budget(0, 0.3 * total, 0.5 * total)
    ours, theirs = Masks.dense(shape.geometry), Masks.dense(shape.geometry)
    got = FixedNormaliser(m, how, None, [0], shape).select(model, adapter, scores, ours, budget)
    want = select_under_budget(rank(m, scores, theirs, [0], shape.geometry, how), theirs, shape, 0, budget.step)
    assert got.chosen == want and got.rate is None and got.candidates is None
    assert torch.equal(ours.heads, theirs.heads) and torch.equal(ours.channels, theirs.channels)
    assert total - decoder_params(ours, shape) <= budget.step


def test_search_measures_candidates_and_records_its_rate():
    model, adapter, shape, scores = _setup()
    total = dense_layer_params(shape) * shape.geometry.num_layers
    calls = []
    search = ExchangeRateSearch([0], shape, loss=lambda m: calls.append(1) or float(len(calls)), compensate=False)
    masks = Masks.dense(shape.geometry)
    got = search.select(model, adapter, scores, masks, Budget(0, 0.2 * total, 0.4 * total))
    assert got.rate is not None and len(got.candidates) == len(calls) > 1
    assert got.rate in {r for c in got.candidates for r in c.rates}
    assert not masks.heads.all() or not masks.channels.all()


def test_rounding_keeps_whole_multiples_of_channels():
    model, adapter, shape, scores = _setup()
    total = dense_layer_params(shape) * shape.geometry.num_layers
    masks = Masks.dense(shape.geometry)
    before = masks.clone()
    chosen = FixedNormaliser(method_for("gisp"), "params", None, [0], shape).select(
        model, adapter, scores, masks, Budget(0, 0.3 * total, 0.3 * total)).chosen
    chosen = rounded(chosen, masks, before, scores, 4, [0], shape)
    kept = masks.channels.sum(dim=1)
    assert all(int(k) % 4 == 0 for k in kept[1:]), kept  # layer 0 is protected (dense)
    removed = int((~masks.heads).sum() + (~masks.channels).sum())
    assert len(chosen) == len(set(chosen)) == removed  # the record names exactly what the masks lost


def test_search_batches_is_every_fourth_and_never_empty():
    batches = [{"i": i} for i in range(9)]
    assert [b["i"] for b in search_batches(batches)] == [0, 4, 8]
    assert [b["i"] for b in search_batches(batches[:3])] == [0]
    assert [b["i"] for b in search_batches(batches, 1)] == list(range(9))  # --search-every 1: all of them
    assert [b["i"] for b in search_batches(batches, 3)] == [0, 3, 6]

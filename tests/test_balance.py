"""The head/channel exchange-rate search: hook views, candidates, choice, and the run record."""

import copy

import torch
from conftest import tiny_model
from test_methods import BATCHES, IDS, _prune

from gisp import balance
from gisp.adapters import adapter_for
from gisp.gradients import TaylorImportance
from gisp.ranking import normalized
from gisp.report import info_text
from gisp.structures import (
    Masks,
    decoder_params,
    dense_layer_params,
    layer_shape,
    protected_layers,
)


def test_candidates_meet_the_budget_merge_duplicates_and_order_heads_by_rate():
    model = tiny_model("llama-gqa", layers=4)
    shape = layer_shape(model, adapter_for(model.config))
    masks = Masks.dense(shape.geometry)
    gen = torch.Generator().manual_seed(0)
    heads, channels = torch.rand(4, 6, generator=gen), torch.rand(4, 40, generator=gen)
    total = dense_layer_params(shape) * 4
    options = balance.candidates(heads, channels, masks, [0], shape, 0, 0.3 * total)
    rates = [r for o in options for r in o.rates]
    assert sorted(rates) == sorted(balance.EXCHANGE_RATES) and len(options) <= len(rates)
    for o in options:
        removed = total - decoder_params(o.masks, shape)
        assert 0.3 * total - shape.channel_params <= removed <= 0.3 * total + 0.5
        assert o.heads == int((~o.masks.heads).sum())
    by_rate = sorted(options, key=lambda o: o.rates[0])
    assert [o.heads for o in by_rate] == sorted((o.heads for o in by_rate), reverse=True)  # higher rate, fewer heads
    assert masks.heads.all() and masks.channels.all()  # the masks passed in are not touched


def test_choose_takes_the_lowest_loss_and_skips_the_forward_for_one_candidate():
    model = tiny_model("llama-gqa", layers=2)
    adapter = adapter_for(model.config)
    geo = layer_shape(model, adapter).geometry
    a, b = Masks.dense(geo), Masks.dense(geo)
    b.channels[1, :5] = False
    options = [balance.Candidate([1.0], 0, a), balance.Candidate([2.0, 4.0], 0, b)]
    losses = iter([3.0, 2.0])
    assert balance.choose(model, adapter, options, lambda m: next(losses)) is options[1]
    assert [o.loss for o in options] == [3.0, 2.0]
    calls = []
    assert balance.choose(model, adapter, options[:1], lambda m: calls.append(1) or 0.0) is options[0] and not calls


def test_search_run_records_its_choice_and_exports_its_masked_model():
    from gisp.slicing import build_pruned_model

    dense = tiny_model("llama-gqa", layers=6)
    work = copy.deepcopy(dense)
    traj = _prune(work, "gisp", sparsity=0.5, steps=3, normalize="search")
    for record in traj.steps[1:]:
        assert record.exchange_rate in balance.EXCHANGE_RATES
        best = min(record.candidates, key=lambda c: c["loss"])
        assert record.exchange_rate in best["rates"] or len(record.candidates) == 1
    rows = info_text(traj).splitlines()
    assert "normalize: search  search-every: 4  scope: global" in info_text(traj)
    header = next(i for i, line in enumerate(rows) if line.startswith("step"))
    assert rows[header].endswith("head/channel rate")
    assert [float(rows[header + 2 + s].split()[-1]) for s in (1, 2, 3)] == [r.exchange_rate for r in traj.steps[1:]]
    pruned, _ = build_pruned_model(dense, traj.masks_at_step(3), traj.input_means)
    with torch.no_grad():
        assert torch.allclose(pruned(IDS).logits, work(IDS).logits, atol=1e-4)


def test_search_compares_look_aheads_at_the_final_sparsity_and_takes_the_steps_share_at_that_rate():
    dense = tiny_model("llama-gqa", layers=6)
    traj = _prune(copy.deepcopy(dense), "gisp", sparsity=0.5, steps=3, normalize="search")
    shape = layer_shape(dense, adapter_for(dense.config), compensate=True)
    total = dense_layer_params(shape) * 6
    for record in traj.steps[1:]:
        assert all({"rates", "heads_at_target", "loss"} <= set(c) for c in record.candidates)
    # replaying step 1: scores of the dense model, look-aheads to 50%, then 1/3 of it at the chosen rate
    model = copy.deepcopy(dense)
    scores = TaylorImportance(BATCHES, progress=False, weights="output", compensate=True, saliency="fisher")(
        model, adapter_for(model.config))
    heads, channels = normalized(scores, Masks.dense(shape.geometry), shape.geometry, "search")
    protected = protected_layers(6, 0.2, 1)
    options = balance.candidates(heads, channels, Masks.dense(shape.geometry), protected, shape, 0, 0.5 * total)
    assert sorted(o.heads for o in options) == sorted(c["heads_at_target"] for c in traj.steps[1].candidates)
    rate = traj.steps[1].exchange_rate
    step1 = Masks.dense(shape.geometry)
    balance.select_at_rate(heads, channels, step1, protected, shape, 0, 0.5 / 3 * total, rate)
    assert torch.equal(step1.heads, traj.masks_at_step(1).heads) and torch.equal(step1.channels, traj.masks_at_step(1).channels)

"""Progressive compaction (--compact-every): the sliced copy computes what the masked model
computes, its scores land at the dense indices, and a run removes exactly what the masked run
removes."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import gisp
from gisp.adapters import adapter_for
from gisp.compaction import CompactedImportance, compact, expand, refresh
from gisp.compensation import InputMeans, compensate
from gisp.errors import GispError
from gisp.gradients import TaylorImportance
from gisp.masking import apply_masks
from gisp.structures import Masks


def _masked(family: str):
    """A tiny model with uneven removals (a GQA group split, an emptied MLP), compensated."""
    model = tiny_model(family)
    adapter = adapter_for(model.config)
    g = adapter.geometry()
    dense, masks = Masks.dense(g), Masks.dense(g)
    masks.heads[1, [0, 3]] = False  # under GQA (6 heads, 2 groups): groups keep 2 and 2 of 3
    masks.heads[1, -1] = False  # and then 2 and 1: uneven, a padding head
    masks.heads[2, :] = False  # attention emptied: the layer keeps its MLP
    masks.channels[2, :9] = False
    masks.channels[3, :] = False  # MLP emptied
    gen = torch.Generator().manual_seed(1)
    means = InputMeans(torch.randn(g.num_layers, g.num_heads * g.head_dim, generator=gen),
                       torch.randn(g.num_layers, g.intermediate_size, generator=gen))
    compensate(model, adapter, dense, masks, means)
    apply_masks(model, adapter, masks)
    return model, adapter, masks


def _ids() -> torch.Tensor:
    return torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2", "phi3", "llama-mha"])
@torch.no_grad()
def test_the_compact_copy_computes_the_masked_model(family):
    model, adapter, masks = _masked(family)
    small = compact(model, adapter, masks)
    assert sum(p.numel() for p in small.model.parameters()) < sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(small.model(_ids()).logits, model(_ids()).logits, rtol=1e-5, atol=1e-5)
    # where each compact structure came from
    assert [h for h in small.heads[1] if h is not None] == masks.heads[1].nonzero()[:, 0].tolist()
    assert small.channels[2].tolist() == list(range(9, masks.channels.shape[1]))
    assert small.channels[3].numel() == 0


@torch.no_grad()
def test_refresh_follows_later_removals_and_their_compensation():
    model, adapter, masks = _masked("llama-gqa")
    small = compact(model, adapter, masks)
    later = masks.clone()
    later.heads[0, 1] = False
    later.channels[1, 5:12] = False
    g = adapter.geometry()
    means = InputMeans(torch.randn(g.num_layers, g.num_heads * g.head_dim), torch.randn(g.num_layers, g.intermediate_size))
    compensate(model, adapter, masks, later, means)  # layer 0 and 1 gain output biases now
    apply_masks(model, adapter, later)
    refresh(small, model, adapter, later)
    torch.testing.assert_close(small.model(_ids()).logits, model(_ids()).logits, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_candidates_measured_on_the_copy_match_the_masked_view():
    """--normalize search measures candidate masks on the copy: same logits as the masked model
    under the same candidate, compensated."""
    from gisp.compaction import compact_view
    from gisp.masking import masked_view

    model, adapter, masks = _masked("llama-gqa")
    small = compact(model, adapter, masks)
    candidate = masks.clone()
    candidate.heads[1, 1] = False
    candidate.channels[0, :10] = False
    g = adapter.geometry()
    gen = torch.Generator().manual_seed(3)
    means = InputMeans(torch.randn(g.num_layers, g.num_heads * g.head_dim, generator=gen),
                       torch.randn(g.num_layers, g.intermediate_size, generator=gen))
    with masked_view(model, adapter, candidate, means) as full:
        expected = full(_ids()).logits
    with compact_view(small, candidate, means) as copy:
        got = copy(_ids()).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not any(m._forward_pre_hooks for m in small.model.modules())  # hooks removed


def test_compact_scores_land_at_the_dense_indices():
    """Scores of the copy, expanded, equal the masked model's (removed structures score 0 either
    way); so do the input means of kept features."""
    model, adapter, masks = _masked("llama-gqa")
    batches = [{"input_ids": _ids()}]
    inner = TaylorImportance(batches, progress=False, weights="output", compensate=True, saliency="fisher")
    masked = inner(model, adapter)
    small = compact(model, adapter, masks)
    expanded = expand(inner.layer_scores(small.model, small.adapter), small, masks, adapter.geometry().head_dim)
    torch.testing.assert_close(expanded.heads, masked.heads * masks.heads, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(expanded.channels, masked.channels * masks.channels, rtol=1e-4, atol=1e-9)
    assert torch.equal(masked.heads[~masks.heads], torch.zeros(int((~masks.heads).sum())))  # 0 on the masked path too
    kept = masks.channels
    torch.testing.assert_close(expanded.input_means.mlp[kept], masked.input_means.mlp[kept], rtol=1e-5, atol=1e-6)
    assert expanded.loss == pytest.approx(masked.loss, rel=1e-6)


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("family", ["llama-gqa", "qwen2"])
def test_a_compacted_run_removes_exactly_what_the_masked_run_removes(family, every, tiny_dir, corpus_file, tmp_path):
    common = dict(model=str(tiny_dir(family)), data=f"text:{corpus_file}", sparsity=0.6, steps=5, samples=6,
                  seq_len=24, batch_size=3, protect_first=0.0)
    masked = gisp.prune(out=tmp_path / "masked", progress=False, **common)
    compacted = gisp.prune(out=tmp_path / "compact", progress=False, compact_every=every, **common)
    for name in ("head_order", "channel_order", "head_step", "channel_step"):
        assert torch.equal(getattr(masked, name), getattr(compacted, name)), name
    assert masked.steps[-1].sparsity > 0.55  # most of the model was sliced out by the last steps
    losses = [(a.loss, b.loss) for a, b in zip(masked.steps, compacted.steps)]
    assert all(b == pytest.approx(a, rel=1e-5) for a, b in losses)
    # an execution setting: the run resumes without it
    again = gisp.prune(out=tmp_path / "compact", progress=False, **common)
    assert torch.equal(again.head_order, masked.head_order)


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_first_order_scores_compact_the_same(tiny_dir, corpus_file, tmp_path):
    common = dict(model=str(tiny_dir("llama-gqa")), data=f"text:{corpus_file}", sparsity=0.5, steps=4, samples=6,
                  seq_len=24, batch_size=3, protect_first=0.0, saliency="first-order")
    masked = gisp.prune(out=tmp_path / "masked", progress=False, **common)
    compacted = gisp.prune(out=tmp_path / "compact", progress=False, compact_every=1, **common)
    assert torch.equal(masked.head_order, compacted.head_order)
    assert torch.equal(masked.channel_order, compacted.channel_order)


@pytest.mark.parametrize("settings, message", [
    (dict(method="wanda-sp"), "--compact-every applies to gradient scoring"),
    (dict(method="llm-pruner"), "--compact-every applies to gradient scoring"),
    (dict(taylor_weights="all", compensate=False), "--compact-every applies to gradient scoring"),
])
def test_compaction_is_refused_where_it_does_not_apply(settings, message):
    with pytest.raises(GispError, match=message):
        gisp.PruneConfig(model="m", data="text:x", compact_every=1, **settings)


def test_negative_compact_every_and_other_importances_are_refused():
    with pytest.raises(GispError, match="compact-every must be >= 0"):
        gisp.PruneConfig(model="m", data="text:x", compact_every=-1)
    with pytest.raises(GispError, match="gradient scoring of o/down columns per head"):
        CompactedImportance(TaylorImportance([], weights="all"), 1)

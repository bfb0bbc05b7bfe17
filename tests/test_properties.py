"""Property tests (hypothesis, 200 examples each) of ranking, budget and nestedness.

For random geometries (MHA/GQA, biases, compensation), random scores, budgets, schedules and
protected layers: the ranking puts the least important first, the walk takes it in order, meets
the budget within one structure, never goes over it, never touches a protected layer, never
re-adds or re-removes a structure, and every step's kept set is a subset of the step before.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gisp.adapters.base import AttentionGeometry
from gisp.selection import global_ranking, layer_ranking, round_blocks, select_under_budget
from gisp.structures import LayerShape, Masks, decoder_params, dense_layer_params, max_sparsity

EXAMPLES = settings(max_examples=200, deadline=None)


@st.composite
def shapes(draw) -> LayerShape:
    kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    geometry = AttentionGeometry(
        num_layers=draw(st.integers(2, 6)), hidden_size=draw(st.sampled_from([8, 16, 24])), num_heads=kv * group,
        num_kv_heads=kv, head_dim=draw(st.sampled_from([2, 4])), intermediate_size=draw(st.integers(2, 20)),
        gated_mlp=draw(st.booleans()))
    bias = lambda: int(draw(st.booleans()))  # noqa: E731
    return LayerShape(geometry, bias(), bias(), bias(), bias(), bias(), bias(), bias(), compensate=draw(st.booleans()))


@st.composite
def problems(draw):
    shape = draw(shapes())
    g = shape.geometry
    protected = sorted(draw(st.sets(st.integers(0, g.num_layers - 1), max_size=g.num_layers - 1)))
    seed = draw(st.integers(0, 2**31 - 1))
    steps = draw(st.integers(1, 4))
    reach = max_sparsity(shape, protected)
    target = draw(st.floats(0.05, 0.95)) * reach
    return shape, protected, seed, steps, target


def _scores(g: AttentionGeometry, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(g.num_layers, g.num_heads, generator=gen), torch.rand(g.num_layers, g.intermediate_size, generator=gen)


def _largest_unit(shape: LayerShape) -> int:
    """The most one removal can save: a channel, or a head whose removal shrinks the layer's GQA
    layout by a query head in every group (uneven groups are padded with zero query heads, never
    laid out with more KV heads than dense) and empties a KV head."""
    g = shape.geometry
    head = 2 * g.head_dim * (g.hidden_size + 1)  # q rows (and bias) + o columns
    return max(shape.channel_params, g.num_kv_heads * head + head + 2 * g.hidden_size)


@EXAMPLES
@given(problems(), st.sampled_from(["global", "layer"]))
def test_budget_walk_is_safe_and_nested(problem, scope):
    shape, protected, seed, steps, final = problem
    g = shape.geometry
    gen = torch.Generator().manual_seed(seed)
    dense = dense_layer_params(shape) * g.num_layers
    masks = Masks.dense(g)
    removed_ever: set = set()
    for step in range(1, steps + 1):
        before = masks.clone()
        heads, channels = _scores(g, gen)
        ranking = (global_ranking(heads, channels, masks, protected) if scope == "global"
                   else layer_ranking(heads, channels, masks, protected))
        removed = dense - decoder_params(masks, shape)
        target = final * step / steps * dense
        chosen = select_under_budget(ranking, masks, shape, removed, target)
        after = dense - decoder_params(masks, shape)
        if scope == "global":  # least important first: scores ascend along the ranking, over every alive structure
            ranked = [heads[s.layer, s.index] if s.kind == "head" else channels[s.layer, s.index] for (s,) in ranking]
            assert all(a <= b for a, b in zip(ranked, ranked[1:]))
            alive = int(before.heads[[l for l in range(g.num_layers) if l not in protected]].sum()
                        + before.channels[[l for l in range(g.num_layers) if l not in protected]].sum())
            assert len(ranking) == alive
        # the walk takes the ranking in order (it skips what would overshoot; how much a removal saves
        # depends on the masks: a layer's last head or channel can free its zero head, so no simpler
        # rule says which structures may be skipped)
        position = {s: i for i, unit in enumerate(ranking) for s in unit}
        assert [position[s] for s in chosen] == sorted(position[s] for s in chosen)
        assert after <= target + 0.5  # never over the budget
        assert masks.is_subset_of(before)  # nested: nothing comes back
        assert all(s.layer not in protected for s in chosen)
        assert not (set(chosen) & removed_ever) and len(set(chosen)) == len(chosen)  # each removed once
        removed_ever |= set(chosen)
        for s in chosen:
            assert before.is_kept(s) and not masks.is_kept(s)
        # within one structure of the target, unless nothing removable is left in the ranking
        left = [u for u in ranking if all(masks.is_kept(s) for s in u)]
        if left and scope == "global":
            assert target - after < _largest_unit(shape) + shape.channel_params
    assert torch.equal(masks.heads[protected], torch.ones_like(masks.heads[protected]))
    assert torch.equal(masks.channels[protected], torch.ones_like(masks.channels[protected]))


@EXAMPLES
@given(problems(), st.integers(2, 4), st.integers(1, 3))
def test_rounding_keeps_multiples_stays_nested_and_spares_protected_layers(problem, multiple, heads_by):
    shape, protected, seed, _, final = problem
    g = shape.geometry
    gen = torch.Generator().manual_seed(seed)
    masks = Masks.dense(g)
    before = masks.clone()
    heads, channels = _scores(g, gen)
    dense = dense_layer_params(shape) * g.num_layers
    select_under_budget(global_ranking(heads, channels, masks, protected), masks, shape, 0, final * dense)
    walked = masks.clone()
    back, extra = round_blocks(masks, before, heads, channels, multiple, protected, head_multiple=heads_by)
    assert masks.is_subset_of(before)
    for layer in range(g.num_layers):
        if layer in protected:
            assert masks.heads[layer].all() and masks.channels[layer].all()
        else:
            assert int(masks.heads[layer].sum()) % heads_by == 0 and int(masks.channels[layer].sum()) % multiple == 0
    assert all(walked.is_kept(s) is False and masks.is_kept(s) for s in back)  # restored: removed this step
    assert all(walked.is_kept(s) and not masks.is_kept(s) for s in extra)


@st.composite
def tiny_models(draw):
    from transformers import AutoConfig, AutoModelForCausalLM

    family = draw(st.sampled_from(["llama", "qwen2", "qwen3", "mistral", "granite", "phi3"]))
    kv = draw(st.integers(1, 3))
    heads = kv * draw(st.integers(1, 2))  # 1, 2, 3, 4 or 6: stock configs want hidden_size % heads == 0
    head_dim = draw(st.sampled_from([4, 8]))
    config = AutoConfig.for_model(
        family, vocab_size=64, hidden_size=24, intermediate_size=draw(st.integers(2, 12)), head_dim=head_dim,
        num_hidden_layers=draw(st.integers(1, 3)), num_attention_heads=heads, num_key_value_heads=kv,
        max_position_embeddings=64, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        **({"attention_bias": draw(st.booleans()), "mlp_bias": draw(st.booleans())} if family == "llama" else {}))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    g = config.num_hidden_layers
    masks = Masks(torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=heads, max_size=heads), min_size=g, max_size=g))),
                  torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=config.intermediate_size,
                                                      max_size=config.intermediate_size), min_size=g, max_size=g))))
    return model, masks


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
@EXAMPLES
@given(tiny_models())
def test_any_export_equals_its_masked_model(case):
    """Random tiny configs (MHA/GQA, biases, q/k norms, fused projections) and random masks:
    the sliced export computes exactly what the masked model does."""
    import copy

    from gisp.adapters import adapter_for
    from gisp.slicing import build_pruned_model
    from gisp.masking import apply_masks

    model, masks = case
    ids = torch.arange(1, 13)[None] % 64
    pruned, _ = build_pruned_model(model, masks)
    masked = copy.deepcopy(model)
    apply_masks(masked, adapter_for(model.config), masks)
    with torch.no_grad():
        assert torch.allclose(pruned(ids).logits, masked(ids).logits, atol=1e-4)

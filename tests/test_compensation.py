"""gisp.compensation: a removed feature's mean contribution moves into the output bias (FLAP)."""

import torch
from conftest import tiny_model

from gisp.adapters import adapter_for
from gisp.compensation import InputMeans, compensate, output_bias, removed_features
from gisp.masking import apply_masks
from gisp.structures import Masks, layer_shape


def test_output_bias_is_the_removed_columns_times_their_means():
    gen = torch.Generator().manual_seed(0)
    weight, means = torch.randn(5, 7, generator=gen), torch.randn(7, generator=gen)
    removed = torch.tensor([0, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    expected = weight[:, 1] * means[1] + weight[:, 4] * means[4] + weight[:, 5] * means[5]
    assert torch.allclose(output_bias(weight, removed, means), expected, atol=1e-6)
    assert output_bias(weight, torch.zeros(7, dtype=torch.bool), means).abs().max() == 0
    assert output_bias(weight.bfloat16(), removed, means).dtype == torch.bfloat16


def test_removed_features_spread_heads_over_their_head_dim_and_count_only_new_removals():
    before = Masks(torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))
    before.heads[0, 2] = False  # removed at an earlier step: not this step's
    after = before.clone()
    after.heads[0, 0] = after.heads[1, 1] = False
    after.channels[1, 3] = False
    attention, mlp = removed_features(before, after, head_dim=2)
    assert attention.tolist() == [[True, True, False, False, False, False], [False, False, True, True, False, False]]
    assert mlp.tolist() == [[False] * 4, [False, False, False, True]]


def test_a_compensated_layer_gives_the_dense_output_when_removed_inputs_sit_at_their_means():
    model = tiny_model("llama-gqa", layers=2)  # o_proj / down_proj without biases: compensation adds them
    adapter = adapter_for(model.config)
    shape = layer_shape(model, adapter)
    mods = adapter.all_layer_modules(model)[1]
    gen = torch.Generator().manual_seed(1)
    means = InputMeans(torch.randn(2, mods.o.in_features, generator=gen), torch.randn(2, mods.down.in_features, generator=gen))
    before = Masks.dense(shape.geometry)
    after = before.clone()
    after.heads[1, 4] = False  # o_proj inputs 32..39
    after.channels[1, [2, 5]] = False
    x_o, x_down = torch.randn(3, mods.o.in_features, generator=gen), torch.randn(3, mods.down.in_features, generator=gen)
    x_o[:, 32:40] = means.attention[1, 32:40]
    x_down[:, [2, 5]] = means.mlp[1, [2, 5]]
    moved = x_down.clone()
    moved[:, 2] += 1.0  # a removed input one unit above its mean
    with torch.no_grad():
        dense_o, dense_down, dense_moved = mods.o(x_o), mods.down(x_down), mods.down(moved)
    column = mods.down.weight[:, 2].detach().clone()
    assert mods.o.bias is None and mods.down.bias is None
    compensate(model, adapter, before, after, means)
    apply_masks(model, adapter, after)
    with torch.no_grad():
        assert torch.allclose(mods.o(x_o), dense_o, atol=1e-5)
        assert torch.allclose(mods.down(x_down), dense_down, atol=1e-5)
        other = adapter.all_layer_modules(model)[0]  # nothing removed in layer 0: no bias change
        assert other.o.bias is None or other.o.bias.abs().max() == 0
        # away from its mean, exactly the deviation's contribution is lost: 1.0 * the dense column
        assert torch.allclose(dense_moved - mods.down(moved), column.expand(3, -1), atol=1e-5)


def test_input_means_take_copies_only_the_selected_features():
    mine = InputMeans.unmeasured(2, 4, 3)
    assert mine.attention.isnan().all() and mine.mlp.shape == (2, 3)
    other = InputMeans(torch.arange(8.0).reshape(2, 4), torch.arange(6.0).reshape(2, 3))
    pick_a = torch.zeros(2, 4, dtype=torch.bool)
    pick_a[1, 2] = True
    pick_m = torch.zeros(2, 3, dtype=torch.bool)
    pick_m[0, 0] = True
    mine.take(other, pick_a, pick_m)
    assert mine.attention[1, 2] == 6.0 and mine.attention.isnan().sum() == 7
    assert mine.mlp[0, 0] == 0.0 and mine.mlp.isnan().sum() == 5

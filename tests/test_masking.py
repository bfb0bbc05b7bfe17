"""gisp.masking: masks applied by zeroing weights, and as a removable hook view of the same model."""

import copy

import torch
from conftest import tiny_model
from test_methods import BATCHES, IDS

from gisp.adapters import adapter_for
from gisp.masking import apply_masks, masked_view
from gisp.structures import Masks, layer_shape


def test_apply_masks_zeroes_exactly_the_removed_rows_and_columns_and_is_idempotent():
    model = tiny_model("llama-gqa", layers=3)  # 6 query heads of 8 over 2 KV heads
    adapter = adapter_for(model.config)
    masks = Masks.dense(layer_shape(model, adapter).geometry)
    masks.heads[1, [0, 4]] = False
    masks.channels[2, [1, 7]] = False
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_masks(model, adapter, masks)
    once = {k: v.clone() for k, v in model.state_dict().items()}
    apply_masks(model, adapter, masks)
    assert all(torch.equal(once[k], v) for k, v in model.state_dict().items())  # idempotent
    mods = adapter.all_layer_modules(model)
    rows = torch.zeros(48, dtype=torch.bool)
    rows[0:8] = rows[32:40] = True
    assert (mods[1].q.weight[rows] == 0).all() and (mods[1].o.weight[:, rows] == 0).all()
    assert torch.equal(mods[1].q.weight[~rows], before["model.layers.1.self_attn.q_proj.weight"][~rows])
    assert (mods[2].gate.weight[[1, 7]] == 0).all() and (mods[2].up.weight[[1, 7]] == 0).all()
    assert (mods[2].down.weight[:, [1, 7]] == 0).all()
    changed = {k for k in before if not torch.equal(before[k], once[k])}
    assert changed == {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.o_proj.weight",
                       "model.layers.2.mlp.gate_proj.weight", "model.layers.2.mlp.up_proj.weight",
                       "model.layers.2.mlp.down_proj.weight"}  # k/v stay: their KV heads keep other queries
    kept = [k for k in before if k not in changed]
    assert all(torch.equal(before[k], once[k]) for k in kept)

def test_masked_view_equals_zeroed_weights_and_leaves_nothing_behind():
    model = tiny_model("qwen2", layers=3)
    adapter = adapter_for(model.config)
    masks = Masks.dense(layer_shape(model, adapter).geometry)
    masks.heads[1, [0, 3, 4]] = False
    masks.channels[2, ::3] = False
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), masked_view(model, adapter, masks):
        viewed = model(IDS).logits
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())
    masked = copy.deepcopy(model)
    apply_masks(masked, adapter, masks)
    with torch.no_grad():
        assert torch.allclose(viewed, masked(IDS).logits, atol=1e-5)


def test_masked_view_with_means_equals_compensated_weights():
    from gisp.compensation import compensate
    from gisp.methods.flap import FlapImportance
    from test_methods import _context

    model = tiny_model("llama-gqa", layers=3)
    adapter = adapter_for(model.config)
    means = FlapImportance(BATCHES, progress=False)(model, adapter, _context(model)).input_means
    before = Masks.dense(layer_shape(model, adapter).geometry)
    before.heads[2, 1] = False  # removed earlier: zero weights already
    apply_masks(model, adapter, before)
    masks = before.clone()
    masks.heads[1, [0, 5]] = False
    masks.channels[2, ::4] = False
    with torch.no_grad(), masked_view(model, adapter, masks, means):
        viewed = model(IDS).logits
    assert not any(m._forward_pre_hooks for m in model.modules())
    compensated = copy.deepcopy(model)
    compensate(compensated, adapter, before, masks, means)
    apply_masks(compensated, adapter, masks)
    with torch.no_grad():
        assert torch.allclose(viewed, compensated(IDS).logits, atol=1e-5)
        with masked_view(model, adapter, masks):  # without means: plain zeroing, a different model
            assert not torch.allclose(viewed, model(IDS).logits, atol=1e-3)

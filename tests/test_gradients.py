"""gisp.gradients: the Taylor gradient pass against gradients taken by hand."""

import pytest
import torch

from gisp.adapters import adapter_for
from gisp.gradients import TaylorImportance, mean_objective
from gisp.objectives import lm_loss

from conftest import tiny_model


def test_mean_objective_weights_batches_by_their_sequences_and_leaves_no_gradient():
    model = tiny_model("llama-gqa")
    ids = torch.randint(0, 320, (5, 12), generator=torch.Generator().manual_seed(3))
    batches = [{"input_ids": ids[:2]}, {"input_ids": ids[2:]}]
    with torch.no_grad():
        per_sequence = [float(lm_loss(model, {"input_ids": s[None]})) for s in ids]
    assert mean_objective(model, batches) == pytest.approx(sum(per_sequence) / 5, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())

def test_taylor_importance_matches_hand_computation_on_tiny_model():
    """Scores equal sum |W * mean-gradient| computed by hand, with uneven micro-batches."""
    model = tiny_model("llama-gqa")
    adapter = adapter_for(model.config)
    torch.manual_seed(1)
    ids = torch.randint(0, 320, (5, 12))
    batches = [{"input_ids": ids[:2]}, {"input_ids": ids[2:]}]
    scores = TaylorImportance(batches, progress=False)(model, adapter)

    # Hand: mean over sequences of per-sequence gradients (each sequence has equal token count).
    layer = adapter.layer_modules(adapter.layers(model)[1])
    params = [layer.q.weight, layer.o.weight, layer.gate.weight, layer.up.weight, layer.down.weight]
    grads = [torch.zeros_like(p) for p in params]
    for seq in ids:
        loss = lm_loss(model, {"input_ids": seq[None]})
        for acc, g in zip(grads, torch.autograd.grad(loss, params)):
            acc += g / len(ids)
    q, o, gate, up, down = [(p * g).abs() for p, g in zip(params, grads)]
    hd = 8
    head0 = q[:hd].sum() + o[:, :hd].sum()
    chan3 = gate[3].sum() + up[3].sum() + down[:, 3].sum()
    assert torch.allclose(scores.heads[1, 0], head0, rtol=1e-4)
    assert torch.allclose(scores.channels[1, 3], chan3, rtol=1e-4)
    assert scores.loss == pytest.approx(sum(float(lm_loss(model, {"input_ids": s[None]}).detach()) for s in ids) / 5, rel=1e-5)


def test_importance_leaves_requires_grad_as_it_found_it():
    model = tiny_model("qwen2")
    before = [p.requires_grad for p in model.parameters()]
    TaylorImportance([{"input_ids": torch.randint(0, 320, (2, 8))}], progress=False)(model, adapter_for(model.config))
    assert [p.requires_grad for p in model.parameters()] == before
    assert all(p.grad is None for p in model.parameters())


def test_output_weights_scores_sum_o_and_down_columns_only():
    model = tiny_model("llama-gqa")
    adapter = adapter_for(model.config)
    batches = [{"input_ids": torch.randint(0, 320, (3, 12), generator=torch.Generator().manual_seed(2))}]
    full = TaylorImportance(batches, progress=False)(model, adapter)
    out = TaylorImportance(batches, progress=False, weights="output")(model, adapter)
    mods = adapter.all_layer_modules(model)[1]
    for w in (mods.o.weight, mods.down.weight):
        w.requires_grad_(True)
    loss = model(input_ids=batches[0]["input_ids"], labels=batches[0]["input_ids"]).loss
    g_o, g_down = torch.autograd.grad(loss, [mods.o.weight, mods.down.weight])
    o = (mods.o.weight.detach() * g_o).abs()
    assert torch.allclose(out.heads[1, 4], o[:, 32:40].sum(), rtol=1e-4)
    assert torch.allclose(out.channels[1, 9], (mods.down.weight.detach()[:, 9] * g_down[:, 9]).abs().sum(), rtol=1e-4)
    assert (full.heads > out.heads).all() and (full.channels > out.channels).all()

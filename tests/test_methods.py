"""Every pruning method: scores against hand computations, rankings, budgets, exports."""

import copy
import json

import pytest
import torch
from test_export import reload_without_gisp

import gisp
from gisp.adapters import adapter_for
from gisp.compensation import compensate
from gisp.errors import GispError
from gisp.export import export, save_export, ExportInfo
from gisp.slicing import build_pruned_model
from gisp.importance import StepContext
from gisp.objectives import lm_loss
from gisp.masking import apply_masks
from gisp.methods import Method, method_for, method_names, register_method
from gisp.methods.flap import FlapImportance
from gisp.methods.magnitude import MagnitudeImportance
from gisp.methods.shortgpt import BlockInfluenceImportance
from gisp.methods.wanda_sp import WandaSPImportance
from gisp.importance import Scores
from gisp.gradients import TaylorImportance
from gisp.selection import block_fractions
from gisp.structures import (Masks, Structure, decoder_params, dense_layer_params, layer_shape, protected_layers,
                             removal_saving, uniform_ratio)

from conftest import tiny_model

IDS = torch.randint(0, 320, (6, 16), generator=torch.Generator().manual_seed(0))
BATCHES = [{"input_ids": chunk} for chunk in IDS.split(4)]  # uneven micro-batches: 4 + 2
METHODS = ["gisp", "wanda-sp", "flap", "llm-pruner", "shortgpt", "magnitude", "random"]


def _context(model, target=0.3, masks=None, protected=(0,), compensate_=False):
    adapter = adapter_for(model.config)
    shape = layer_shape(model, adapter, compensate=compensate_)
    return StepContext(1, target, masks or Masks.dense(shape.geometry), tuple(protected), shape)


def _prune(model, method, sparsity=0.5, **kw):
    return gisp.prune(model=model, batches=BATCHES, data="unused", method=method, sparsity=sparsity,
                      protect_first=0.2, progress=False, **kw)


def _inputs(model, layer: int, role: str, ids=IDS) -> torch.Tensor:
    """All tokens' inputs of ``o_proj`` / ``down_proj`` of ``layer`` -> [N, n] (dense forward)."""
    mods = adapter_for(model.config).all_layer_modules(model)[layer]
    seen = []
    handle = getattr(mods, role).register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(ids)
    handle.remove()
    return torch.cat(seen).double()


# --- registry -------------------------------------------------------------------------------

def test_registry_names_every_method_and_takes_new_ones():
    assert method_names()[0] == "gisp" and set(METHODS) <= set(method_names())
    with pytest.raises(GispError) as err:
        method_for("obs")
    for name in method_names():
        assert name in str(err.value)

    class Everything:
        """A method defined here, in the test module: every structure scores its layer index."""

        def __call__(self, model, adapter, context):
            g = adapter.geometry()
            layer = torch.arange(g.num_layers, dtype=torch.float32)[:, None]
            return Scores(layer.expand(-1, g.num_heads).clone(), layer.expand(-1, g.intermediate_size).clone())

    register_method(Method(name="test-shallow-first", summary="test", build=lambda inputs: Everything(), uses_data=False))
    try:
        traj = _prune(tiny_model("llama-gqa", layers=6), "test-shallow-first", sparsity=0.3)
        final = traj.masks_at_step(1)
        assert not final.channels[1].any()  # the first unprotected layer goes first
        assert final.channels[5].all()
    finally:
        from gisp.methods import base
        base._METHODS.pop("test-shallow-first")


def test_config_resolves_method_defaults_and_refuses_bad_combinations():
    default = gisp.PruneConfig(model="m", data="d")
    assert (default.steps, default.taylor_weights, default.normalize, default.scope, default.compensate) == (
        8, "output", "search", "global", True)
    assert gisp.PruneConfig(model="m", data="d", taylor_weights="all").compensate is False  # reference scoring
    config = gisp.PruneConfig(model="m", data="d", method="wanda-sp")
    assert (config.steps, config.normalize) == (1, "none")
    assert gisp.PruneConfig(model="m", data="d", method="magnitude").normalize == "params"
    with pytest.raises(GispError, match="--normalize params does not apply to method wanda-sp with scope layer"):
        gisp.PruneConfig(model="m", data="d", method="wanda-sp", normalize="params")
    assert gisp.PruneConfig(model="m", data="d", scope="layer").normalize == "none"
    assert gisp.PruneConfig(model="m", data="d", method="wanda-sp", scope="global", normalize="zscore").scope == "global"
    assert gisp.PruneConfig(model="m", data="d", method="flap").taylor_weights is None
    with pytest.raises(GispError, match="--normalize search rescales nonnegative scores per parameter; flap's are standardised"):
        gisp.PruneConfig(model="m", data="d", method="flap", normalize="search")
    assert gisp.PruneConfig(model="m", data="d", method="flap").compensate is True
    assert gisp.PruneConfig(model="m", data="d", method="flap", compensate=False).compensate is False
    assert gisp.PruneConfig(model="m", data="d", compensate=False).compensate is False
    with pytest.raises(GispError, match=r"--compensate needs a method that measures input means \(gisp, flap\), not wanda-sp"):
        gisp.PruneConfig(model="m", data="d", method="wanda-sp", compensate=True)
    with pytest.raises(GispError, match="--compensate scores o_proj/down_proj columns; use it with --taylor-weights output"):
        gisp.PruneConfig(model="m", data="d", compensate=True, taylor_weights="all")
    with pytest.raises(GispError, match="--normalize search does not apply to method gisp with scope layer"):
        gisp.PruneConfig(model="m", data="d", scope="layer", normalize="search")
    with pytest.raises(GispError, match="--taylor-weights applies to Taylor methods .* not flap"):
        gisp.PruneConfig(model="m", data="d", method="flap", taylor_weights="output")
    with pytest.raises(GispError, match="unknown taylor-weights 'rows'"):
        gisp.PruneConfig(model="m", data="d", taylor_weights="rows")
    with pytest.raises(GispError, match="unknown method 'obs'; choose from gisp, "):
        gisp.PruneConfig(model="m", data="d", method="obs")
    assert default.saliency == "fisher"
    assert gisp.PruneConfig(model="m", data="d", taylor_weights="all").saliency == "first-order"
    assert gisp.PruneConfig(model="m", data="d", method="llm-pruner").saliency == "first-order"
    assert gisp.PruneConfig(model="m", data="d", method="flap").saliency is None
    assert gisp.PruneConfig(model="m", data="d", saliency="fisher").saliency == "fisher"
    with pytest.raises(GispError, match="--saliency fisher scores o_proj/down_proj columns; use it with --taylor-weights output"):
        gisp.PruneConfig(model="m", data="d", saliency="fisher", taylor_weights="all")
    with pytest.raises(GispError, match="--saliency applies to Taylor methods .* not wanda-sp"):
        gisp.PruneConfig(model="m", data="d", method="wanda-sp", saliency="fisher")
    with pytest.raises(GispError, match="unknown saliency 'hessian'; choose from first-order, fisher"):
        gisp.PruneConfig(model="m", data="d", saliency="hessian")


# --- importances against hand computations ---------------------------------------------------

def test_wanda_sp_scores_by_hand_with_earlier_layers_pruned():
    model = tiny_model("llama-gqa", layers=4)
    adapter = adapter_for(model.config)
    hd = 8
    context = _context(model, target=0.4, protected=(0,))
    scores = WandaSPImportance(BATCHES, progress=False)(model, adapter, context)
    ratio = uniform_ratio(0.4, context.shape, [0])

    def by_hand(m, layer):
        mods = adapter.all_layer_modules(m)[layer]
        norm_o = _inputs(m, layer, "o").pow(2).sum(0).sqrt()
        columns = mods.o.weight.double().abs().mean(0) * norm_o
        heads = columns.reshape(6, hd).sum(1)
        channels = mods.down.weight.double().abs().mean(0) * _inputs(m, layer, "down").pow(2).sum(0).sqrt()
        return heads, channels

    # layer 0 is protected: nothing removed there, so layer 1 sees the dense model
    for layer in (0, 1):
        heads, channels = by_hand(model, layer)
        assert torch.allclose(scores.heads[layer].double(), heads, rtol=1e-4)
        assert torch.allclose(scores.channels[layer].double(), channels, rtol=1e-4)
    # layer 2 sees layer 1 pruned to the uniform ratio by its own scores
    masked = copy.deepcopy(model)
    masks = Masks.dense(context.shape.geometry)
    masks.heads[1] = block_fractions(scores.heads[1], masks.heads[1]) > ratio
    masks.channels[1] = block_fractions(scores.channels[1], masks.channels[1]) > ratio
    assert (~masks.heads[1]).sum() == int(ratio * 6) and (~masks.channels[1]).sum() == int(ratio * 40)
    apply_masks(masked, adapter, masks)
    heads, channels = by_hand(masked, 2)
    assert torch.allclose(scores.heads[2].double(), heads, rtol=1e-4)
    assert torch.allclose(scores.channels[2].double(), channels, rtol=1e-4)
    dense_heads, _ = by_hand(model, 2)
    assert not torch.allclose(dense_heads, heads, rtol=1e-3)  # the sequential setting matters


def test_flap_scores_and_means_by_hand():
    model = tiny_model("qwen2", layers=3)
    adapter = adapter_for(model.config)
    scores = FlapImportance(BATCHES, progress=False)(model, adapter, _context(model))
    mods = adapter.all_layer_modules(model)[1]
    x_o, x_down = _inputs(model, 1, "o"), _inputs(model, 1, "down")
    v_o = (x_o.var(0, unbiased=True) * mods.o.weight.double().pow(2).sum(0)).pow(2)
    z_o = (v_o - v_o.mean()) / v_o.std()
    assert torch.allclose(scores.heads[1].double(), z_o.reshape(6, 8).mean(1), atol=1e-4)
    v_down = x_down.var(0, unbiased=True) * mods.down.weight.double().pow(2).sum(0)
    assert torch.allclose(scores.channels[1].double(), (v_down - v_down.mean()) / v_down.std(), atol=1e-4)
    assert torch.allclose(scores.input_means.attention[1].double(), x_o.mean(0), atol=1e-5)
    assert torch.allclose(scores.input_means.mlp[1].double(), x_down.mean(0), atol=1e-5)


def test_flap_compensation_keeps_the_mean_output():
    """After compensation, o_proj's mean output over the calibration tokens equals the dense one."""
    model = tiny_model("llama-gqa", layers=3)
    adapter = adapter_for(model.config)
    scores = FlapImportance(BATCHES, progress=False)(model, adapter, _context(model))
    dense_out = _inputs(model, 1, "o") @ adapter.all_layer_modules(model)[1].o.weight.double().T  # [N, d]
    geometry = layer_shape(model, adapter).geometry
    masks = Masks.dense(geometry)
    masks.heads[1, [0, 4]] = False
    masked = copy.deepcopy(model)
    compensate(masked, adapter, Masks.dense(geometry), masks, scores.input_means)
    apply_masks(masked, adapter, masks)
    o = adapter.all_layer_modules(masked)[1].o
    x = _inputs(model, 1, "o")  # layer 1's attention input is unchanged: layer 0 is untouched
    pruned_out = x @ o.weight.double().T + o.bias.double()
    assert torch.allclose(pruned_out.mean(0), dense_out.mean(0), atol=1e-5)
    assert adapter.all_layer_modules(masked)[0].o.bias is None  # untouched layers gain nothing


def test_compensated_taylor_scores_by_hand():
    """gisp --compensate: o/down columns scored as removals that keep their mean, from the mean
    weight gradient, the mean output gradient (a zero bias's gradient) and the mean input."""
    model = tiny_model("llama-gqa", layers=3)
    adapter = adapter_for(model.config)
    scores = TaylorImportance(BATCHES, progress=False, weights="output", compensate=True)(model, adapter, _context(model))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    probe = copy.deepcopy(model)
    mods = adapter.all_layer_modules(probe)[1]
    for m in (mods.o, mods.down):
        m.bias = torch.nn.Parameter(torch.zeros(48))
    params = [mods.o.weight, mods.o.bias, mods.down.weight, mods.down.bias]
    loss = sum(lm_loss(probe, b) * b["input_ids"].shape[0] / IDS.shape[0] for b in BATCHES)  # shares 4/6, 2/6
    g_o, b_o, g_down, b_down = torch.autograd.grad(loss, params)
    mu_o, mu_down = _inputs(model, 1, "o").mean(0), _inputs(model, 1, "down").mean(0)
    heads = (mods.o.weight * (g_o - b_o[:, None] * mu_o[None, :].float())).abs().sum(0).reshape(6, 8).sum(1)
    channels = (mods.down.weight * (g_down - b_down[:, None] * mu_down[None, :].float())).abs().sum(0)
    assert torch.allclose(scores.heads[1], heads, rtol=1e-4, atol=1e-7)
    assert torch.allclose(scores.channels[1], channels, rtol=1e-4, atol=1e-7)
    assert torch.allclose(scores.input_means.attention[1].double(), mu_o, atol=1e-5)
    assert torch.allclose(scores.input_means.mlp[1].double(), mu_down, atol=1e-5)
    assert scores.heads.grad_fn is None and scores.channels.grad_fn is None
    plain = TaylorImportance(BATCHES, progress=False, weights="output")(model, adapter, _context(model))
    assert plain.input_means is None and not torch.allclose(plain.channels[1], scores.channels[1])


def _per_token_input_grads(model, layer: int, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every token's input ``x`` of ``o_proj`` / ``down_proj`` of ``layer`` and ``dL/dx`` of the
    share-weighted calibration loss -> ([N, n], [N, n]), by autograd on the inputs themselves."""
    probe = copy.deepcopy(model)
    for p in probe.parameters():
        p.requires_grad_(True)
    mod = getattr(adapter_for(probe.config).all_layer_modules(probe)[layer], role)
    xs, grads = [], []

    def keep(module, args):
        args[0].retain_grad()
        xs.append(args[0])

    handle = mod.register_forward_pre_hook(keep)
    for b in BATCHES:
        (lm_loss(probe, b) * b["input_ids"].shape[0] / IDS.shape[0]).backward()
        grads.append(xs[-1].grad.reshape(-1, xs[-1].shape[-1]))
    handle.remove()
    return torch.cat([x.detach().reshape(-1, x.shape[-1]) for x in xs]).double(), torch.cat(grads).double()


@pytest.mark.parametrize("compensate_", [True, False])
def test_fisher_scores_by_hand(compensate_):
    """--saliency fisher: each head / channel scores sum_t (sum_j dL/dx_j(t) (x_j(t) - mu_j))^2, mu the
    calibration mean (compensated) or 0, from per-token input gradients taken by autograd."""
    model = tiny_model("llama-gqa", layers=3)
    adapter = adapter_for(model.config)
    scores = TaylorImportance(BATCHES, progress=False, weights="output", compensate=compensate_,
                              saliency="fisher")(model, adapter, _context(model))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    # activation gradients only: no weight gradient was taken, and every parameter is left as it was
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    for role, got, group in (("o", scores.heads[1], 8), ("down", scores.channels[1], 1)):
        x, gx = _per_token_input_grads(model, 1, role)
        mu = x.mean(0) if compensate_ else torch.zeros(x.shape[1], dtype=torch.float64)
        want = (gx * (x - mu)).reshape(x.shape[0], -1, group).sum(-1).pow(2).sum(0)  # [N, G, g] -> [G]
        assert torch.allclose(got.double(), want, rtol=1e-3, atol=1e-9), role
    assert (scores.input_means is not None) == compensate_
    first = TaylorImportance(BATCHES, progress=False, weights="output", compensate=compensate_)(model, adapter, _context(model))
    assert not torch.allclose(first.heads[1], scores.heads[1])


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_compensated_gisp_run_exports_its_masked_model_with_biases(tmp_path):
    dense = tiny_model("llama-gqa", layers=6)
    work = copy.deepcopy(dense)
    traj = _prune(work, "gisp", sparsity=0.5, steps=3, compensate=True, out=tmp_path / "run")
    assert traj.compensated and traj.config["compensate"] is True
    from gisp.report import info_text
    assert "compensate: yes" in info_text(traj) and "saliency: fisher" in info_text(traj)
    assert adapter_for(work.config).all_layer_modules(work)[3].down.bias is not None
    export(tmp_path / "run", 0.5, tmp_path / "out", model=dense, tokenizer=None)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["gisp_remote"]["added_biases"]
    with torch.no_grad():
        expected = work(IDS).logits
    reload_without_gisp(tmp_path / "out", expected, tmp_path, IDS)
    # a nested level between steps recomputes its biases from the dense weights
    shape = layer_shape(dense, adapter_for(dense.config), compensate=True)
    masks, _ = traj.masks_at_sparsity(0.3, shape)
    masked = copy.deepcopy(dense)
    compensate(masked, adapter_for(dense.config), Masks.dense(shape.geometry), masks, traj.input_means)
    apply_masks(masked, adapter_for(dense.config), masks)
    pruned, _ = build_pruned_model(dense, masks, traj.input_means)
    with torch.no_grad():
        assert torch.allclose(pruned(IDS).logits, masked(IDS).logits, atol=1e-4)
    # resuming a compensated run needs the same setting
    with pytest.raises(GispError, match="compensate: True there vs False here"):
        _prune(copy.deepcopy(dense), "gisp", sparsity=0.5, steps=3, compensate=False, out=tmp_path / "run")


def test_llm_pruner_scores_whole_kv_groups_by_hand():
    model = tiny_model("llama-gqa", layers=3)  # 6 query heads over 2 KV heads, hd 8
    adapter = adapter_for(model.config)
    scores = TaylorImportance(BATCHES, progress=False, aggregate="kv-group")(model, adapter)
    mods = adapter.all_layer_modules(model)[2]
    weights = [mods.q.weight, mods.k.weight, mods.v.weight, mods.o.weight]
    for w in weights:
        w.requires_grad_(True)
    grads = [torch.zeros_like(w) for w in weights]
    for batch in BATCHES:
        loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss * batch["input_ids"].shape[0] / 6
        for acc, g in zip(grads, torch.autograd.grad(loss, weights)):
            acc += g
    q, k, v, o = [(w.detach() * g).abs().double() for w, g in zip(weights, grads)]
    group1 = q[24:48].sum() + k[8:16].sum() + v[8:16].sum() + o[:, 24:48].sum()  # heads 3-5 read KV head 1
    assert torch.allclose(scores.heads[2, 3:].double(), group1.expand(3), rtol=1e-4)
    assert scores.heads[2, 0] == scores.heads[2, 1] == scores.heads[2, 2] != scores.heads[2, 3]


def test_llm_pruner_removes_whole_groups_at_the_same_ratio_per_layer():
    model = tiny_model("llama-gqa", layers=6)
    traj = _prune(model, "llm-pruner", sparsity=0.3)
    final = traj.masks_at_step(1)
    for layer in range(1, 5):  # 0 and 5 are protected
        removed = (~final.heads[layer]).reshape(2, 3)  # [H] -> [KV, group]
        assert bool((removed.all(1) | ~removed.any(1)).all()), "a KV group was split"
    per_layer = (~final.channels[1:5]).sum(1)
    assert per_layer.min() > 0 and final.channels[5].all()
    assert int(per_layer.max() - per_layer.min()) <= 1


def test_wanda_sp_prunes_the_same_fraction_of_every_unprotected_layer():
    model = tiny_model("llama-mha", layers=6)
    traj = _prune(model, "wanda-sp", sparsity=0.4)
    final = traj.masks_at_step(1)
    assert final.heads[0].all() and final.channels[0].all() and final.channels[5].all()
    heads, channels = (~final.heads[1:5]).sum(1), (~final.channels[1:5]).sum(1)
    assert heads.min() > 0 and channels.min() > 0
    assert int(heads.max() - heads.min()) <= 1 and int(channels.max() - channels.min()) <= 1


def test_block_influence_by_hand():
    model = tiny_model("mistral", layers=3)
    adapter = adapter_for(model.config)
    scores = BlockInfluenceImportance(BATCHES, progress=False)(model, adapter, _context(model))
    with torch.no_grad():
        hidden = model(IDS, output_hidden_states=True).hidden_states  # embeddings, after layer 0, 1, 2 (normed)
    for layer in (0, 1):  # the last entry of hidden_states has the final norm applied
        cos = torch.nn.functional.cosine_similarity(hidden[layer].double(), hidden[layer + 1].double(), dim=-1)
        assert scores.layers[layer] == pytest.approx(float((1 - cos).mean()), rel=1e-4)


def test_magnitude_scores_by_hand():
    model = tiny_model("llama-gqa", layers=2)
    adapter = adapter_for(model.config)
    scores = MagnitudeImportance()(model, adapter, _context(model))
    mods = adapter.all_layer_modules(model)[1]
    head2 = (mods.q.weight[16:24].pow(2).sum() + mods.o.weight[:, 16:24].pow(2).sum()).detach()
    assert scores.heads[1, 2] == pytest.approx(float(head2), rel=1e-5)
    channel7 = (mods.gate.weight[7].pow(2).sum() + mods.up.weight[7].pow(2).sum() + mods.down.weight[:, 7].pow(2).sum()).detach()
    assert scores.channels[1, 7] == pytest.approx(float(channel7), rel=1e-5)


def test_scope_override_ranks_gisp_scores_within_each_layer():
    traj = _prune(tiny_model("llama-gqa", layers=6), "gisp", sparsity=0.4, steps=2, scope="layer")
    final = traj.masks_at_step(2)
    channels = (~final.channels[1:5]).sum(1)
    assert int(channels.max() - channels.min()) <= 1 and traj.config["scope"] == "layer"


def test_taylor_weights_reach_the_importance_and_the_record(tmp_path):
    traj = _prune(tiny_model("qwen2", layers=6), "gisp", sparsity=0.3, steps=2, taylor_weights="all",
                  normalize="reference", out=tmp_path / "run")
    assert (traj.config["taylor_weights"], traj.config["normalize"]) == ("all", "reference") and traj.completed_steps == 2
    with pytest.raises(GispError, match="other settings .*taylor_weights: 'all' there vs 'output' here"):
        _prune(tiny_model("qwen2", layers=6), "gisp", sparsity=0.3, steps=2, normalize="reference", out=tmp_path / "run")


def test_random_is_seeded():
    a = _prune(tiny_model("llama-gqa", layers=6), "random", sparsity=0.3, seed=1)
    b = _prune(tiny_model("llama-gqa", layers=6), "random", sparsity=0.3, seed=1)
    c = _prune(tiny_model("llama-gqa", layers=6), "random", sparsity=0.3, seed=2)
    assert torch.equal(a.channel_order, b.channel_order) and not torch.equal(a.channel_order, c.channel_order)


# --- every method: budget, protection, nesting, exports --------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["llama-gqa", "qwen2"])
def test_every_method_meets_the_budget_and_exports_its_masked_model(method, name):
    dense = tiny_model(name, layers=6)
    work = copy.deepcopy(dense)
    traj = _prune(work, method, sparsity=0.5)
    adapter = adapter_for(dense.config)
    shape = layer_shape(dense, adapter, compensate=traj.compensated)
    total = dense_layer_params(shape) * 6
    final = traj.masks_at_step(traj.completed_steps)
    achieved = 1 - decoder_params(final, shape) / total
    unit = {"shortgpt": dense_layer_params(shape), "llm-pruner": 3 * 8 * 48 * 2 + 2 * 8 * 48}.get(method, 0)
    # the walk stops short by less than the cheapest structure it could still remove (a channel, unless
    # channels ran out or the last one would drop a whole layer)
    alive = [Structure(kind, layer, int(i)) for layer in range(6) if layer not in protected_layers(6, 0.2, 1)
             for kind, mask in (("head", final.heads), ("channel", final.channels)) for i in mask[layer].nonzero()[:, 0]]
    unit = max(unit, min((removal_saving(s, final, shape) for s in alive), default=0))
    assert 0.5 - max(unit, shape.channel_params) / total <= achieved <= 0.5 + 1e-9
    for layer in protected_layers(6, 0.2, 1):
        assert final.heads[layer].all() and final.channels[layer].all()
    previous = Masks.dense(shape.geometry)
    for level in (0.1, 0.25, 0.4, 0.5):  # every level is nested in the ones before
        masks, _ = traj.masks_at_sparsity(level, shape)
        assert masks.is_subset_of(previous) and final.is_subset_of(masks)
        previous = masks
    pruned, _ = build_pruned_model(dense, final, traj.input_means)
    with torch.no_grad():
        assert torch.allclose(pruned(IDS).logits, work(IDS).logits, atol=1e-4)


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_flap_export_carries_its_biases_and_loads_without_gisp(tmp_path):
    dense = tiny_model("llama-gqa", layers=6)
    work = copy.deepcopy(dense)
    traj = _prune(work, "flap", sparsity=0.4, out=tmp_path / "run")
    info = export(tmp_path / "run", 0.4, tmp_path / "out", model=dense, tokenizer=None)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["gisp_remote"]["added_biases"] and all(n.endswith(("o_proj", "down_proj")) for n in config["gisp_remote"]["added_biases"])
    with torch.no_grad():
        expected = work(IDS).logits
    assert reload_without_gisp(tmp_path / "out", expected, tmp_path, IDS).startswith("Gisp")
    # the count includes the compensation biases: the file holds exactly what was counted
    shape = layer_shape(dense, adapter_for(dense.config), compensate=True)
    assert info.decoder_parameters == decoder_params(traj.masks_at_step(1), shape)
    from safetensors.torch import load_file
    state = load_file(tmp_path / "out" / "model.safetensors")
    biases = sum(state[f"{n}.bias"].numel() for n in config["gisp_remote"]["added_biases"])
    assert biases == 48 * len(config["gisp_remote"]["added_biases"])


def test_flap_nested_level_recomputes_its_biases_from_the_dense_weights():
    """A level below the run's target: biases only for what that level removed."""
    dense = tiny_model("qwen2", layers=6)
    traj = _prune(copy.deepcopy(dense), "flap", sparsity=0.5)
    adapter = adapter_for(dense.config)
    shape = layer_shape(dense, adapter, compensate=True)
    masks, _ = traj.masks_at_sparsity(0.2, shape)
    masked = copy.deepcopy(dense)
    compensate(masked, adapter, Masks.dense(shape.geometry), masks, traj.input_means)
    apply_masks(masked, adapter, masks)
    pruned, _ = build_pruned_model(dense, masks, traj.input_means)
    with torch.no_grad():
        assert torch.allclose(pruned(IDS).logits, masked(IDS).logits, atol=1e-4)


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_shortgpt_export_drops_layers_and_is_a_stock_checkpoint(tmp_path):
    dense = tiny_model("qwen2", layers=6)
    work = copy.deepcopy(dense)
    traj = _prune(work, "shortgpt", sparsity=0.5, out=tmp_path / "run")
    removed = traj.masks_at_step(1).empty_layers()
    assert len(removed) == 3 and not set(removed) & {0, 5}
    export(tmp_path / "run", 0.5, tmp_path / "out", model=dense, tokenizer=None)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["num_hidden_layers"] == 3 and "auto_map" not in config
    assert len(config["layer_types"]) == 3
    with torch.no_grad():
        expected = work(IDS).logits
    assert reload_without_gisp(tmp_path / "out", expected, tmp_path, IDS) == "Qwen2ForCausalLM"


def test_dropped_layers_keep_the_kv_cache_consistent():
    """Greedy generation with the KV cache equals the masked model's after layers are dropped."""
    dense = tiny_model("llama-gqa", layers=6)
    masks = Masks.dense(layer_shape(dense, adapter_for(dense.config)).geometry)
    masks.heads[[2, 4]] = False
    masks.channels[[2, 4]] = False
    masks.heads[3, :2] = False  # a partly pruned layer between the dropped ones
    masks.channels[3, :10] = False
    pruned, remote = build_pruned_model(dense, masks)
    assert pruned.config.num_hidden_layers == 4 and remote
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2, 3]
    masked = copy.deepcopy(dense)
    apply_masks(masked, adapter_for(masked.config), masks)
    prompt = IDS[:2, :5]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(pruned.generate(prompt, **kw), masked.generate(prompt, **kw))


def test_emptied_layer_costs_nothing_unless_it_keeps_a_bias():
    model = tiny_model("llama-gqa", layers=3)
    adapter = adapter_for(model.config)
    masks = Masks.dense(layer_shape(model, adapter).geometry)
    masks.heads[1] = False
    masks.channels[1] = False
    plain = layer_shape(model, adapter)
    assert decoder_params(masks, plain) == 2 * dense_layer_params(plain)
    compensated = layer_shape(model, adapter, compensate=True)
    one_head = 8 * 48 * 2 + 2 * 8 * 48  # q row block + o columns + one K and one V head
    assert decoder_params(masks, compensated) == 2 * dense_layer_params(plain) + one_head + 2 * 48


def test_cli_prunes_with_a_method_and_refuses_unknown_ones(tiny_dir, corpus_file, tmp_path, capsys):
    from gisp.cli import main

    model = tiny_dir("llama-gqa")
    args = ["prune", "--model", str(model), "--data", f"text:{corpus_file}", "--sparsity", "0.3", "--samples", "6",
            "--seq-len", "24", "--protect-first", "0", "--out", str(tmp_path / "run")]
    assert main(args + ["--method", "wanda-sp"]) == 0
    out = capsys.readouterr().out
    assert "method: wanda-sp" in out and "steps: 1/1" in out
    assert main(args[:-1] + [str(tmp_path / "run2"), "--method", "sparsegpt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gisp: error: unknown method 'sparsegpt'; choose from gisp,") and "Traceback" not in err
    assert not (tmp_path / "run2").exists()

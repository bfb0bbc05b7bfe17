"""The GISP driver on tiny models: nestedness, protection, budgets, resume, no leftovers."""

import pytest
import torch

from gisp import PruneConfig
from gisp.adapters import adapter_for
from gisp.errors import GispError
from gisp.gradients import TaylorImportance
from gisp.methods import MethodInputs, method_for
from gisp.objectives import lm_loss
from gisp.pruner import run_schedule
from gisp.structures import decoder_params, dense_layer_params, layer_shape, protected_layers
from gisp.trajectory import Trajectory

from conftest import tiny_model


def _batches(n=6, seq=16, seed=0):
    ids = torch.randint(0, 320, (n, seq), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": chunk} for chunk in ids.split(4)]


def config_importance(config: PruneConfig, batches: list[dict]):
    """The importance ``gisp prune`` builds for ``config`` (its method, weights and compensation)."""
    return method_for(config.method).build(
        MethodInputs(batches, lm_loss, config.seed, False, config.taylor_weights, bool(config.compensate)))


def _prune(name="llama-gqa", run_dir=None, importance=None, layers=6, **cfg):
    model = tiny_model(name, layers=layers)
    config = PruneConfig(model=name, data="unused", **({"sparsity": 0.5, "steps": 4, "protect_first": 0.2} | cfg))
    importance = importance or config_importance(config, _batches())
    traj = run_schedule(model, config, importance, identity={"spec": name, "fingerprint": "x"}, run_dir=run_dir, progress=False)
    return model, traj


@pytest.mark.parametrize("name", ["llama-mha", "llama-gqa", "qwen2"])
@pytest.mark.parametrize("normalize", ["reference", "params", "zscore"])
def test_masks_are_nested_and_budgets_met(name, normalize):
    model, traj = _prune(name, normalize=normalize)
    shape = layer_shape(tiny_model(name, layers=6), adapter_for(model.config), compensate=traj.compensated)  # dense shape
    dense = dense_layer_params(shape) * shape.geometry.num_layers
    assert traj.completed_steps == 4
    for step in range(1, 5):
        earlier, later = traj.masks_at_step(step - 1), traj.masks_at_step(step)
        assert later.is_subset_of(earlier)
        record = traj.steps[step]
        achieved = 1 - decoder_params(later, shape) / dense
        assert record.sparsity == pytest.approx(achieved)
        gap = (record.target_sparsity - achieved) * dense
        assert 0 <= gap < shape.channel_params, (step, gap)


def test_protected_layers_are_untouched():
    model, traj = _prune(layers=10, protect_first=0.2, protect_last=2, sparsity=0.45)
    final = traj.masks_at_step(traj.completed_steps)
    for layer in protected_layers(10, 0.2, 2):
        assert layer in (0, 1, 8, 9)
        assert final.heads[layer].all() and final.channels[layer].all()
    assert not final.channels[2:8].all()


def test_model_is_left_masked_and_without_hooks():
    model, traj = _prune()
    final = traj.masks_at_step(traj.completed_steps)
    adapter = adapter_for(model.config)
    for layer, mods in enumerate(adapter.all_layer_modules(model)):
        dead = ~final.channels[layer]
        assert mods.down.weight[:, dead].abs().sum() == 0
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


def test_losses_recorded_for_every_level():
    _, traj = _prune()
    assert [r.step for r in traj.steps] == [0, 1, 2, 3, 4]
    assert all(r.loss is not None and r.loss > 0 for r in traj.steps)


class _Crash:
    """Wraps an importance and raises on its n-th call (a simulated kill mid-run)."""

    def __init__(self, inner, at):
        self.inner, self.at, self.calls = inner, at, 0

    def __call__(self, model, adapter, context):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner(model, adapter, context)

    def mean_loss(self, model):
        return self.inner.mean_loss(model)


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_interrupted_run_resumes_to_the_same_trajectory(tmp_path):
    _, full = _prune(run_dir=tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _prune(run_dir=tmp_path / "resumed", importance=_Crash(TaylorImportance(_batches(), progress=False, weights="output", compensate=True), 3))
    assert Trajectory.load(tmp_path / "resumed").completed_steps == 2
    _, resumed = _prune(run_dir=tmp_path / "resumed")
    for name in ("head_step", "head_order", "channel_step", "channel_order"):
        assert torch.equal(getattr(full, name), getattr(resumed, name))
    assert [r.sparsity for r in full.steps] == [r.sparsity for r in resumed.steps]


def test_resume_refuses_other_settings_or_model(tmp_path):
    _prune(run_dir=tmp_path / "run")
    with pytest.raises(GispError, match="other settings .*sparsity"):
        _prune(run_dir=tmp_path / "run", sparsity=0.4)
    model = tiny_model("llama-gqa", layers=6)
    config = PruneConfig(model="x", data="unused", sparsity=0.5, steps=4, protect_first=0.2)
    with pytest.raises(GispError, match="belongs to another model"):
        run_schedule(model, config, config_importance(config, _batches()),
                     identity={"spec": "x", "fingerprint": "other"}, run_dir=tmp_path / "run", progress=False)


def test_a_run_from_before_search_every_resumes_as_every_fourth(tmp_path):
    """Runs saved before ``search_every`` existed searched on every fourth batch: they resume with
    that value and are refused with another."""
    _prune(run_dir=tmp_path / "run", steps=2, normalize="search")
    saved = Trajectory.load(tmp_path / "run")
    assert saved.config.pop("search_every") == 4
    saved.save(tmp_path / "run")  # as an older version wrote it (checksums included)
    _, traj = _prune(run_dir=tmp_path / "run", steps=2, normalize="search")  # resumes: nothing to do
    assert traj.completed_steps == 2
    with pytest.raises(GispError, match="search_every: 4 there vs 1 here"):
        _prune(run_dir=tmp_path / "run", steps=2, normalize="search", search_every=1)


def test_non_run_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GispError, match="not empty and holds no gisp run"):
        _prune(run_dir=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(GispError, match="unknown config keys: sparsty"):
        PruneConfig.from_dict({"model": "m", "data": "d", "sparsty": 0.3})
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(GispError, match=r"sparsity must be in \(0, 1\)"):
            PruneConfig(model="m", data="d", sparsity=bad)
    with pytest.raises(GispError, match="unknown normalize 'l2'"):
        PruneConfig(model="m", data="d", normalize="l2")


def test_unreachable_sparsity_is_refused_before_any_work():
    # 4 of 6 layers prunable; emptied layers are dropped from exports, so at most 4/6 is reachable
    # (without compensation: a compensated layer keeps its output bias, and with it the layer)
    with pytest.raises(GispError, match=r"out of reach with 2 protected layers \(at most 0\.6667"):
        _prune("llama-mha", sparsity=0.7, compensate=False, importance=_Crash(None, 1))


def test_public_api_takes_a_user_loss(tmp_path):
    """gisp.prune with an in-memory model, a custom objective and custom batches."""
    import gisp

    calls = []

    def first_token_loss(model, batch):
        calls.append(batch["input_ids"].shape[0])
        return model(input_ids=batch["input_ids"]).logits[:, 0].logsumexp(-1).mean()

    model = tiny_model("qwen3", layers=6)
    traj = gisp.prune(model=model, objective=first_token_loss, batches=_batches(), data="custom", sparsity=0.3,
                      steps=2, protect_first=0.2, out=tmp_path / "run", progress=False, normalize="params")
    assert calls == [4, 2] * 2 + [4, 2]  # two gradient passes, then the final loss
    assert traj.completed_steps == 2 and traj.steps[-1].sparsity > 0.29
    calls.clear()  # the search compares its candidates with the same objective, on every 4th batch only
    searched = gisp.prune(model=tiny_model("qwen3", layers=6), objective=first_token_loss, batches=_batches(),
                          data="custom", sparsity=0.3, steps=2, protect_first=0.2, progress=False)
    looked = [len(r.candidates) if len(r.candidates) > 1 else 0 for r in searched.steps[1:]]
    assert calls == [4, 2] + [4] * looked[0] + [4, 2] + [4] * looked[1] + [4, 2]
    assert Trajectory.load(tmp_path / "run").model["spec"] == "in-memory model"
    with pytest.raises(GispError, match="pass either a PruneConfig or its fields"):
        gisp.prune(PruneConfig(model="m", data="d"), sparsity=0.2)
    with pytest.raises(GispError, match="needs its tokenizer"):
        gisp.prune(model=tiny_model("qwen3"), data="gsm8k", sparsity=0.2)


def test_round_to_keeps_whole_multiples_at_every_step_and_exports_whole_steps(tmp_path):
    """--round-to 16 with head_dim 8: every pruned layer keeps 0/16/32 channels and an even number
    of heads (attention widths of 0/16/32/48) after every step; the steps stay nested; a level
    between steps exports the last whole step."""
    import gisp
    from gisp.adapters import adapter_for
    from gisp.structures import layer_shape

    from conftest import tiny_model

    ids = torch.randint(0, 320, (6, 16), generator=torch.Generator().manual_seed(0))
    model = tiny_model("llama-gqa", layers=4)
    traj = gisp.prune(model=model, batches=[{"input_ids": c} for c in ids.split(3)], data="unused", sparsity=0.35,
                      steps=3, round_to=16, protect_first=0.25, protect_last=1, progress=False, out=tmp_path / "run")
    assert traj.config["round_to"] == 16
    previous = None
    for record in traj.steps[1:]:
        masks = traj.masks_at_step(record.step)
        for layer in (1, 2):  # the unprotected layers
            assert int(masks.heads[layer].sum()) % 2 == 0 and int(masks.channels[layer].sum()) % 16 == 0, record.step
        assert masks.heads[[0, 3]].all() and masks.channels[[0, 3]].all()
        assert previous is None or masks.is_subset_of(previous)
        previous = masks
    assert abs(traj.steps[-1].sparsity - 0.35) < 0.08
    assert traj.steps[1].heads_removed < 12  # heads round by width (pairs); by count (16) all 12 would go at once
    shape = layer_shape(model, adapter_for(model.config))
    middle = (traj.steps[1].sparsity + traj.steps[2].sparsity) / 2
    masks, step = traj.masks_at_sparsity(middle, shape)
    assert step == 1 and torch.equal(masks.channels, traj.masks_at_step(1).channels)


def test_heads_round_by_attention_width():
    from gisp.selection import head_multiple

    # 9 heads of 64 (SmolLM2) under --round-to 32: any count is 32-wide already; counting heads by 32 would remove all 9
    assert head_multiple(32, 64) == 1 and head_multiple(128, 64) == 2 and head_multiple(16, 8) == 2
    assert head_multiple(32, 8) == 4 and head_multiple(8, 96) == 1 and head_multiple(64, 80) == 4

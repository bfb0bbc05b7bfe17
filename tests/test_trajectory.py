"""Trajectory persistence and level selection."""

import pytest
import torch

from gisp.adapters import adapter_for
from gisp.errors import GispError
from gisp.structures import layer_shape, parameter_sparsity
from gisp.trajectory import Trajectory

from conftest import tiny_model
from test_pruner import _prune


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    _, traj = _prune(run_dir=run_dir)
    # levels are counted on the dense model's shape (the pruned one carries compensation biases)
    return tiny_model("llama-gqa", layers=6), traj, run_dir


def test_roundtrip(pruned):
    _, traj, run_dir = pruned
    loaded = Trajectory.load(run_dir)
    for name in ("head_step", "head_order", "channel_step", "channel_order"):
        assert torch.equal(getattr(traj, name), getattr(loaded, name))
    assert loaded.steps == traj.steps and loaded.config == traj.config
    assert not list(run_dir.glob(".*tmp"))


def test_level_at_step_target_is_exactly_that_step(pruned):
    model, traj, _ = pruned
    shape = layer_shape(model, adapter_for(model.config), compensate=traj.compensated)
    for record in traj.steps[1:]:
        masks, step = traj.masks_at_sparsity(record.target_sparsity, shape)
        expected = traj.masks_at_step(record.step)
        assert step == record.step
        assert torch.equal(masks.heads, expected.heads) and torch.equal(masks.channels, expected.channels)


def test_level_between_steps_is_nested_and_within_budget(pruned):
    model, traj, _ = pruned
    shape = layer_shape(model, adapter_for(model.config), compensate=traj.compensated)
    previous = traj.masks_at_step(0)
    for sparsity in (0.05, 0.2, 0.22, 0.35, 0.45, 0.5):
        masks, step = traj.masks_at_sparsity(sparsity, shape)
        assert masks.is_subset_of(previous)
        # the level contains all of `step` and lies before the end of the next step
        assert masks.is_subset_of(traj.masks_at_step(step))
        if step < traj.completed_steps:
            assert traj.masks_at_step(step + 1).is_subset_of(masks)
        assert parameter_sparsity(masks, shape) <= sparsity + 1e-9
        previous = masks


def test_level_beyond_run_is_refused(pruned):
    model, traj, _ = pruned
    with pytest.raises(GispError, match="never reached"):
        traj.masks_at_sparsity(0.51, layer_shape(model, adapter_for(model.config), compensate=traj.compensated))


def test_steps_after_completed_steps_are_ignored(pruned, tmp_path):
    """A crash between writing the tensors and run.json leaves the previous state."""
    _, traj, run_dir = pruned
    partial = Trajectory.load(run_dir)
    partial.steps = partial.steps[:3]
    partial.save(tmp_path)
    # tensors still hold steps 3 and 4; run.json says 2 steps
    from safetensors.torch import save_file
    tensors = {k: getattr(traj, k).contiguous() for k in ("head_step", "head_order", "channel_step", "channel_order")}
    tensors |= {"attention_input_mean": traj.input_means.attention, "mlp_input_mean": traj.input_means.mlp}
    save_file(tensors, str(tmp_path / "trajectory.safetensors"))
    loaded = Trajectory.load(tmp_path)
    assert loaded.completed_steps == 2
    assert int(loaded.channel_step.max()) <= 2 and not loaded.is_complete
    # the means of structures removed after step 2 are dropped with them (resume records them again)
    late = (traj.channel_step > 2) | (traj.channel_step < 0)
    assert loaded.input_means.mlp[late].isnan().all() and not loaded.input_means.mlp[~late].isnan().any()


def test_not_a_run_directory(tmp_path):
    with pytest.raises(GispError, match="not a gisp run directory"):
        Trajectory.load(tmp_path)


def test_corrupted_run_files_are_refused_not_resumed(pruned, tmp_path):
    """run.json and the removal order carry checksums: an edited run.json, a changed order and a
    truncated tensor file are each refused with a one-line message."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    _, traj, run_dir = pruned
    assert traj.compensated  # the input means are part of what is checked
    for damage, message in (("edit", "run.json does not match its checksum"),
                            ("order", "does not match the checksum in run.json"),
                            ("means", "input means do not match the checksum in run.json"),
                            ("unchecked", "run.json has no sha256, order_sha256, means_sha256"),
                            ("truncate", "truncated or corrupted")):
        copy_dir = tmp_path / damage
        shutil.copytree(run_dir, copy_dir)
        if damage == "edit":
            meta = json.loads((copy_dir / "run.json").read_text())
            meta["config"]["sparsity"] = 0.1
            (copy_dir / "run.json").write_text(json.dumps(meta))
        elif damage == "order":
            tensors = load_file(str(copy_dir / "trajectory.safetensors"))
            order = tensors["channel_order"]
            first, second = (order == 0).nonzero()[0].tolist(), (order == 1).nonzero()[0].tolist()
            order[first[0], first[1]], order[second[0], second[1]] = 1, 0  # two removals swapped
            save_file(tensors, str(copy_dir / "trajectory.safetensors"))
        elif damage == "means":
            tensors = load_file(str(copy_dir / "trajectory.safetensors"))
            recorded = ~tensors["mlp_input_mean"].isnan()
            tensors["mlp_input_mean"][recorded.nonzero()[0].tolist()[0], recorded.nonzero()[0].tolist()[1]] += 1e-3
            save_file(tensors, str(copy_dir / "trajectory.safetensors"))
        elif damage == "unchecked":  # checksums deleted: not a way around them
            meta = json.loads((copy_dir / "run.json").read_text())
            for key in ("sha256", "order_sha256", "means_sha256"):
                del meta[key]
            (copy_dir / "run.json").write_text(json.dumps(meta))
        else:
            data = (copy_dir / "trajectory.safetensors").read_bytes()
            (copy_dir / "trajectory.safetensors").write_bytes(data[: len(data) // 2])
        with pytest.raises(GispError, match=message):
            Trajectory.load(copy_dir)

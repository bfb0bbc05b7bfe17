"""The GISP driver: score, rank globally, remove to the step's target, repeat.

This file only orchestrates; the math is in :mod:`gisp.saliency`, :mod:`gisp.selection` and
:mod:`gisp.structures`, the schedule in :mod:`gisp.schedule`, the record in
:mod:`gisp.trajectory`.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from gisp.adapters import ModelAdapter, adapter_for
from gisp.config import PruneConfig
from gisp.errors import GispError
from gisp.importance import Importance
from gisp.masking import apply_masks
from gisp.saliency import normalize
from gisp.schedule import target_sparsity
from gisp.selection import global_ranking, select_under_budget
from gisp.structures import (
    LayerShape,
    Masks,
    decoder_params,
    dense_layer_params,
    max_sparsity,
    protected_layers,
)
from gisp.trajectory import RUN_FILE, StepRecord, Trajectory


def layer_shape(model: nn.Module, adapter: ModelAdapter) -> LayerShape:
    """Dense geometry and bias flags of ``model``."""
    return LayerShape.from_modules(adapter.geometry(), adapter.layer_modules(adapter.layers(model)[0]))


def model_parameters(model: nn.Module) -> int:
    """All parameters, tied weights counted once."""
    return sum(p.numel() for p in model.parameters())


def open_run(run_dir: str | Path | None, config: PruneConfig, identity: dict) -> Trajectory | None:
    """The trajectory to resume from ``run_dir``, or None for a fresh run.

    Refuses a directory that holds something else, a run of another model, or a run with other
    settings, so nothing the user has is overwritten.
    """
    if run_dir is None:
        return None
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise GispError(f"--out {run_dir} exists and is not a directory")
    if not (run_dir / RUN_FILE).is_file():
        if run_dir.is_dir() and any(run_dir.iterdir()):
            raise GispError(f"--out {run_dir} is not empty and holds no gisp run; choose a new directory")
        return None
    traj = Trajectory.load(run_dir)
    if traj.model.get("fingerprint") != identity.get("fingerprint"):
        raise GispError(f"run directory {run_dir} belongs to another model ({traj.model.get('spec')})")
    ours = config.trajectory_keys()
    # Settings a run predates take their defaults, so runs of older versions still resume.
    defaults = {f.name: f.default for f in fields(PruneConfig)}
    theirs = {k: traj.config.get(k, defaults.get(k)) for k in ours}
    if theirs != ours:
        diff = ", ".join(f"{k}: {theirs.get(k)!r} there vs {v!r} here" for k, v in ours.items() if theirs.get(k) != v)
        raise GispError(f"run directory {run_dir} was made with other settings ({diff}); choose a new --out")
    return traj


def run_schedule(
    model: nn.Module, config: PruneConfig, importance: Importance, *,
    identity: dict, run_dir: str | Path | None = None, progress: bool = True,
) -> Trajectory:
    """Prune ``model`` in place over ``config.steps`` steps and return the trajectory.

    After every step the trajectory is saved to ``run_dir`` (if given); calling again with the same
    arguments resumes after the last saved step and reproduces the same result.
    """
    adapter = adapter_for(model.config)
    shape = layer_shape(model, adapter)
    geo = shape.geometry
    protected = protected_layers(geo.num_layers, config.protect_first, config.protect_last)
    if len(protected) >= geo.num_layers:
        raise GispError(f"all {geo.num_layers} layers are protected; lower --protect-first/--protect-last")
    reachable = max_sparsity(shape, protected)
    if config.sparsity > reachable:
        raise GispError(
            f"sparsity {config.sparsity:g} is out of reach with {len(protected)} protected layers "
            f"(at most {reachable:.4f}); lower --sparsity or --protect-first/--protect-last"
        )
    dense_total = dense_layer_params(shape) * geo.num_layers
    model_total = model_parameters(model)
    traj = open_run(run_dir, config, identity) or Trajectory.empty(geo.num_layers, geo.num_heads, geo.intermediate_size)
    traj.config, traj.model = config.to_dict(), identity
    masks = traj.masks_at_step(traj.completed_steps)
    apply_masks(model, adapter, masks)
    first = traj.completed_steps + 1
    for step in tqdm(range(first, config.steps + 1), desc="GISP steps", initial=first - 1,
                     total=config.steps, disable=not progress):
        scores = importance(model, adapter)
        _record_loss(traj, step - 1, scores.loss)
        heads, channels = normalize(
            scores.heads, scores.channels, config.normalize,
            hidden_size=geo.hidden_size, head_dim=geo.head_dim, intermediate_size=geo.intermediate_size,
            mha=geo.num_kv_heads == geo.num_heads, heads_alive=masks.heads, channels_alive=masks.channels,
        )
        ranking = global_ranking(heads, channels, masks, protected)
        target = target_sparsity(step, config.steps, config.sparsity, config.schedule)
        removed = dense_total - decoder_params(masks, shape)
        chosen = select_under_budget(ranking, masks, shape, removed, target * dense_total)
        traj.record(step, chosen)
        apply_masks(model, adapter, masks)
        traj.steps.append(_step_record(step, target, masks, shape, dense_total, model_total))
        if run_dir is not None:
            traj.save(run_dir)
    if traj.steps and traj.steps[-1].loss is None and hasattr(importance, "mean_loss"):
        traj.steps[-1].loss = importance.mean_loss(model)
        if run_dir is not None:
            traj.save(run_dir)
    return traj


def _record_loss(traj: Trajectory, step: int, loss: float) -> None:
    """Attach the loss measured on the model at ``step``'s level (creating the dense record)."""
    if step == 0 and not traj.steps:
        traj.steps.append(StepRecord(0, 0.0, 0.0, 0.0, 0, 0, loss))
    for record in traj.steps:
        if record.step == step:
            record.loss = loss


def _step_record(step: int, target: float, masks: Masks, shape: LayerShape, dense_total: int, model_total: int) -> StepRecord:
    removed = dense_total - decoder_params(masks, shape)
    return StepRecord(
        step=step, target_sparsity=target, sparsity=removed / dense_total, model_sparsity=removed / model_total,
        heads_removed=int((~masks.heads).sum()), channels_removed=int((~masks.channels).sum()),
    )

"""The driver: score, rank, remove to the step's target, repeat.

This file only orchestrates; the math is in :mod:`gisp.saliency`, :mod:`gisp.selection` and
:mod:`gisp.structures`, the importances in :mod:`gisp.importance` / :mod:`gisp.statistics`, the
methods in :mod:`gisp.methods`, the schedule in :mod:`gisp.schedule`, the record in
:mod:`gisp.trajectory`. Every method runs through the same loop.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from gisp import distributed
from gisp.adapters import adapter_for
from gisp.adapters.base import ModelAdapter
from gisp.compaction import CompactedImportance
from gisp.compensation import compensate
from gisp.config import PruneConfig
from gisp.errors import GispError
from gisp.importance import Importance, StepContext
from gisp.masking import apply_masks
from gisp.runtime import progress_bar
from gisp.methods import LEGACY_METHOD, method_for
from gisp.ranking import Budget, Normaliser, normaliser_for, rounded
from gisp.schedule import target_sparsity
from gisp.structures import (
    LayerShape,
    Masks,
    decoder_params,
    dense_layer_params,
    layer_shape,
    max_sparsity,
    model_parameters,
    protected_layers,
)
from gisp.trajectory import RUN_FILE, StepRecord, Trajectory

logger = logging.getLogger(__name__)


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
    # Settings a run predates take the values that version used, so older runs still resume.
    defaults = {f.name: f.default for f in fields(PruneConfig)} | {"method": LEGACY_METHOD, "steps": 8, "normalize": "reference", "scope": "global",
                                                                "taylor_weights": "all", "compensate": traj.compensated,
                                                                "saliency": ours["saliency"] and "first-order",
                                                                "search_every": 4 if traj.config.get("normalize") == "search" else None}
    theirs = {k: traj.config.get(k, defaults.get(k)) for k in ours}
    if theirs != ours:
        diff = ", ".join(f"{k}: {theirs.get(k)!r} there vs {v!r} here" for k, v in ours.items() if theirs.get(k) != v)
        raise GispError(f"run directory {run_dir} was made with other settings ({diff}); choose a new --out")
    return traj


def run_schedule(
    model: nn.Module, config: PruneConfig, importance: Importance, *,
    identity: dict, run_dir: str | Path | None = None, progress: bool = True,
    loss: Callable[[nn.Module], float] | None = None, calibration: dict | None = None,
    candidate_loss: Callable[[nn.Module], float] | None = None,
    on_step: Callable[[Trajectory], None] | None = None,
    shape: LayerShape | None = None,
    model_total: int | None = None,
) -> Trajectory:
    """Prune ``model`` in place over ``config.steps`` steps with ``config.method`` and return the trajectory.

    After every step the trajectory is saved to ``run_dir`` (if given); calling again with the same
    arguments resumes after the last saved step and reproduces the same result. ``loss`` measures
    the calibration objective of a level when the importance does not report it; ``candidate_loss``
    (default: ``loss``) is what a normaliser that measures candidate removals compares them by
    (:mod:`gisp.ranking`); ``calibration``
    (sequences, tokens) is recorded as given; ``on_step`` is called with the trajectory after every
    saved step (e.g. to rewrite the run report). ``shape`` and ``model_total``: the dense model's
    bias flags, geometry and parameter count when ``model`` no longer shows them (read before FSDP
    gave it zero output biases). Under
    ``torchrun`` every rank runs this loop on the same all-reduced scores and only rank 0 saves.
    """
    method = method_for(config.method)
    loss = loss or getattr(importance, "mean_loss", None)
    if config.compact_every:  # the gradient pass runs on a sliced copy; everything else stays here
        importance = CompactedImportance(importance, config.compact_every)
    adapter = adapter_for(model.config)
    shape = shape or layer_shape(model, adapter, compensate=bool(config.compensate))
    protected = _protected(shape, config)
    normaliser = normaliser_for(method, config.normalize, config.scope, bool(config.compensate), protected, shape,
                                candidate_loss or loss, importance.view if isinstance(importance, CompactedImportance) else None)
    run = _Run(method.name, model, adapter, config, importance, normaliser, shape, protected, loss,
               dense_layer_params(shape) * shape.geometry.num_layers, model_total or model_parameters(model),
               str(next(model.parameters()).device), run_dir, on_step)
    traj = _open(run, identity, calibration)
    masks = traj.masks_at_step(traj.completed_steps)
    apply_masks(model, adapter, masks)
    for step in progress_bar(range(traj.completed_steps + 1, config.steps + 1), desc=f"{method.name} steps",
                             initial=traj.completed_steps, total=config.steps, enabled=progress):
        _prune_step(run, traj, masks, step)
        run.saved(traj)
    if traj.steps and traj.steps[-1].loss is None and loss is not None:  # the final level's loss
        traj.steps[-1].loss = loss(model)
        run.saved(traj)
    return traj


@dataclass
class _Run:
    """What every step of one run shares."""

    method: str
    model: nn.Module
    adapter: ModelAdapter
    config: PruneConfig
    importance: Importance
    normaliser: Normaliser
    shape: LayerShape
    protected: list[int]
    loss: Callable[[nn.Module], float] | None
    dense_total: int
    model_total: int
    device: str
    run_dir: str | Path | None
    on_step: Callable[[Trajectory], None] | None

    def saved(self, traj: Trajectory) -> None:
        """Save (rank 0 only) and tell the caller."""
        if self.run_dir is not None and distributed.is_main():
            traj.save(self.run_dir)
        if self.on_step is not None:
            self.on_step(traj)


def _protected(shape: LayerShape, config: PruneConfig) -> list[int]:
    """The protected layers, refusing settings that leave nothing to prune or the target out of reach."""
    layers = shape.geometry.num_layers
    protected = protected_layers(layers, config.protect_first, config.protect_last)
    if len(protected) >= layers:
        raise GispError(f"all {layers} layers are protected; lower --protect-first/--protect-last")
    reachable = max_sparsity(shape, protected)
    if config.sparsity > reachable:
        raise GispError(
            f"sparsity {config.sparsity:g} is out of reach with {len(protected)} protected layers "
            f"(at most {reachable:.4f}{'' if shape.head_pruning else ', attention heads kept'}); "
            "lower --sparsity or --protect-first/--protect-last"
        )
    return protected


def _open(run: _Run, identity: dict, calibration: dict | None) -> Trajectory:
    """A fresh trajectory, or the saved one with the model brought to its last step (compensation
    biases added step by step, as the run added them, so the resumed model is bit-identical)."""
    geo, config = run.shape.geometry, run.config
    traj = open_run(run.run_dir, config, identity) or Trajectory.empty(
        geo.num_layers, geo.num_heads, geo.intermediate_size, compensated=bool(config.compensate), head_dim=geo.head_dim)
    traj.config, traj.model = config.to_dict(), identity
    traj.calibration = calibration or traj.calibration
    if traj.input_means is not None:
        previous = Masks.dense(geo)
        for done in range(1, traj.completed_steps + 1):
            current = traj.masks_at_step(done)
            compensate(run.model, run.adapter, previous, current, traj.input_means)
            apply_masks(run.model, run.adapter, current)
            previous = current
    first = traj.completed_steps + 1
    if 1 < first <= config.steps:
        scored_on = traj.steps[-1].device
        moved = f" on {run.device} (scored on {scored_on} until step {first - 1})" if scored_on not in (None, run.device) else ""
        logger.warning("resuming %s from step %d of %d%s", run.run_dir, first, config.steps, moved)
    return traj


def _prune_step(run: _Run, traj: Trajectory, masks: Masks, step: int) -> None:
    """Score, rank, remove to the step's target (``masks`` and the model updated), and record it."""
    start, config, shape = time.perf_counter(), run.config, run.shape
    target = target_sparsity(step, config.steps, config.sparsity, config.schedule)
    context = StepContext(step, target, masks.clone(), tuple(run.protected), shape, config.seed)
    scores = run.importance(run.model, run.adapter, context).cpu()  # ranking and the record work on CPU copies
    _check_finite(scores, masks, step)
    if config.compensate and scores.input_means is None:
        raise GispError(f"--compensate needs input means, and the importance given for {run.method} returned none")
    _record_loss(traj, step - 1, scores.loss if scores.loss is not None else (run.loss(run.model) if run.loss else None))
    before = masks.clone()
    budget = Budget(run.dense_total - decoder_params(masks, shape), target * run.dense_total,
                    config.sparsity * run.dense_total)
    selection = run.normaliser.select(run.model, run.adapter, scores, masks, budget)
    chosen = selection.chosen
    if config.round_to > 1:  # hardware-friendly sizes: whole multiples kept in every pruned layer
        chosen = rounded(chosen, masks, before, scores, config.round_to, run.protected, shape)
    traj.record(step, chosen, scores.input_means, shape.geometry.head_dim)
    if config.compensate:
        compensate(run.model, run.adapter, before, masks, scores.input_means)
    apply_masks(run.model, run.adapter, masks)
    record = _step_record(step, target, masks, shape, run.dense_total, run.model_total, run.device)
    record.seconds = round(time.perf_counter() - start, 3)
    if selection.candidates is not None:
        record.exchange_rate = selection.rate
        record.candidates = [{"rates": o.rates, "heads_at_target": o.heads, "loss": o.loss} for o in selection.candidates]
    traj.steps.append(record)


def _check_finite(scores, masks: Masks, step: int) -> None:
    """Stop on NaN / Inf scores of structures still in the model, or a non-finite loss (a model or
    data that overflows, e.g. float16): a ranking of NaNs would remove arbitrary structures. Removed
    structures may score anything (a statistic of an all-zero input); they are never ranked. The
    run directory keeps the steps before."""
    alive = (("head", scores.heads[masks.heads]), ("channel", scores.channels[masks.channels]), ("layer", scores.layers))
    bad = [name for name, t in alive if t is not None and not bool(torch.isfinite(t).all())]
    if scores.loss is not None and not math.isfinite(scores.loss):
        bad.insert(0, f"calibration loss ({scores.loss})")
    if bad:
        raise GispError(f"step {step}: the {' and '.join(bad)} scores are not finite (NaN or Inf): the model gives a "
                        "non-finite loss on the calibration data (try --dtype float32, or check the weights); "
                        "nothing of this step was saved")


def _record_loss(traj: Trajectory, step: int, loss: float | None) -> None:
    """Attach the loss measured on the model at ``step``'s level (creating the dense record)."""
    if step == 0 and not traj.steps:
        traj.steps.append(StepRecord(0, 0.0, 0.0, 0.0, 0, 0, loss))
    for record in traj.steps:
        if record.step == step and loss is not None:
            record.loss = loss


def _step_record(step: int, target: float, masks: Masks, shape: LayerShape, dense_total: int, model_total: int,
                 device: str) -> StepRecord:
    removed = dense_total - decoder_params(masks, shape)
    return StepRecord(
        step=step, target_sparsity=target, sparsity=removed / dense_total, model_sparsity=removed / model_total,
        heads_removed=int((~masks.heads).sum()), channels_removed=int((~masks.channels).sum()),
        processes=distributed.world_size(), device=device,
    )

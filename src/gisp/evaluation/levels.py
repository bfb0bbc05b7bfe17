"""Evaluate several nested levels of one run in one go: ``gisp eval RUN_DIR --levels 0.1,0.2``.

The dense model is loaded once; each level is cut from it in memory (speed: written to a
temporary export and measured in a child process). Returns one row of data per level; the CLI
renders and writes them (:func:`gisp.report.write_levels`).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from gisp.adapters import adapter_for
from gisp.errors import GispError
from gisp.evaluation.tasks import EvalOptions, evaluate_model, evaluate_spec
from gisp.export import ExportInfo, base_model, save_export
from gisp.slicing import build_pruned_model
from gisp.structures import decoder_params, dense_layer_params, layer_shape, model_parameters
from gisp.trajectory import Trajectory


def parse_levels(text: str) -> list[float]:
    try:
        levels = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError as exc:
        raise GispError(f"--levels takes comma-separated sparsities, got {text!r}") from exc
    if not levels or not all(0 < x < 1 for x in levels):
        raise GispError(f"--levels must be sparsities in (0, 1), got {text!r}")
    return levels


def evaluate_levels(run_dir: str | Path, levels: list[float], opts: EvalOptions, dense: bool = True) -> list[dict]:
    """Dense (unless ``dense`` is False) plus every level: one row each with sparsity, parameters
    and the task's metrics."""
    traj = Trajectory.load(run_dir)
    for level in levels:
        traj.check_reachable(level)
    model, tokenizer = base_model(traj, device=opts.device)
    shape = layer_shape(model, adapter_for(model.config), compensate=traj.compensated)
    dense_total = dense_layer_params(shape) * shape.geometry.num_layers
    rows = [{"level": "dense", "step": 0, "sparsity": 0.0, "parameters": model_parameters(model)}
            | _run(traj.model["spec"], model, tokenizer, _for_level(opts, "dense"))] if dense else []
    for level in levels:
        masks, step = traj.masks_at_sparsity(level, shape)
        pruned, remote = build_pruned_model(model, masks, traj.input_means)
        row = {"level": f"{level:g}", "step": step, "sparsity": 1 - decoder_params(masks, shape) / dense_total,
               "parameters": model_parameters(pruned)}
        if opts.task == "speed":
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / "level"
                info = ExportInfo(str(target), level, row["sparsity"], step, 0, 0, row["parameters"], 0, remote, traj.model)
                save_export(pruned, tokenizer, remote, info, target)
                rows.append(row | evaluate_spec(str(target), opts))
        else:
            rows.append(row | evaluate_model(pruned, tokenizer, _for_level(opts, f"{level:g}")))
        del pruned
    return rows


def _for_level(opts: EvalOptions, label: str) -> EvalOptions:
    """``opts`` for one level: its own records file (``em.jsonl`` -> ``em-0.2.jsonl``, ``em-dense.jsonl``),
    since a records file holds one model's predictions."""
    if opts.records is None:
        return opts
    path = Path(opts.records)
    return replace(opts, records=str(path.with_name(f"{path.stem}-{label}{path.suffix}")))


def _run(spec: str, model, tokenizer, opts: EvalOptions) -> dict:
    return evaluate_spec(spec, opts) if opts.task == "speed" else evaluate_model(model, tokenizer, opts)

"""Evaluate several nested levels of one run in one go: ``gisp eval RUN_DIR --levels 0.1,0.2``.

The dense model is loaded once; each level is cut from it in memory (speed: written to a
temporary export and measured in a child process). Writes ``results.json``, ``results.md`` and
``<metric>.png`` (metric vs sparsity) into the output directory.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

from gisp.adapters import adapter_for
from gisp.errors import GispError
from gisp.evaluation.tasks import PRIMARY, EvalOptions, evaluate_model, evaluate_spec
from gisp.export import ExportInfo, base_model, build_pruned_model, save_export
from gisp.pruner import layer_shape, model_parameters
from gisp.report import plot_metric, table
from gisp.structures import decoder_params, dense_layer_params
from gisp.trajectory import Trajectory


def parse_levels(text: str) -> list[float]:
    try:
        levels = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError as exc:
        raise GispError(f"--levels takes comma-separated sparsities, got {text!r}") from exc
    if not levels or not all(0 < x < 1 for x in levels):
        raise GispError(f"--levels must be sparsities in (0, 1), got {text!r}")
    return levels


def evaluate_levels(run_dir: str | Path, levels: list[float], opts: EvalOptions, out: str | Path | None = None) -> list[dict]:
    """Dense plus every level: one row each with sparsity, parameters and the task's metrics."""
    traj = Trajectory.load(run_dir)
    for level in levels:
        traj.check_reachable(level)
    model, tokenizer = base_model(traj, device=opts.device)
    shape = layer_shape(model, adapter_for(model.config))
    dense_total = dense_layer_params(shape) * shape.geometry.num_layers
    rows = [{"level": "dense", "step": 0, "sparsity": 0.0, "parameters": model_parameters(model)}
            | _run(traj.model["spec"], model, tokenizer, opts)]
    for level in levels:
        masks, step = traj.masks_at_sparsity(level, shape)
        pruned, remote = build_pruned_model(model, masks)
        row = {"level": f"{level:g}", "step": step, "sparsity": 1 - decoder_params(masks, shape) / dense_total,
               "parameters": model_parameters(pruned)}
        if opts.task == "speed":
            with tempfile.TemporaryDirectory() as tmp:
                target = Path(tmp) / "level"
                info = ExportInfo(str(target), level, row["sparsity"], step, 0, 0, row["parameters"], 0, remote, traj.model)
                save_export(pruned, tokenizer, remote, info, target)
                rows.append(row | evaluate_spec(str(target), opts))
        else:
            rows.append(row | evaluate_model(pruned, tokenizer, opts))
        del pruned
    _write(rows, opts, Path(out) if out else Path(run_dir) / f"eval-{opts.task}")
    return rows


def _run(spec: str, model, tokenizer, opts: EvalOptions) -> dict:
    return evaluate_spec(spec, opts) if opts.task == "speed" else evaluate_model(model, tokenizer, opts)


def levels_table(rows: list[dict], task: str) -> str:
    metric, _ = PRIMARY[task]
    extra = {"mc": ["acc_norm"], "speed": ["prefill_tokens_per_s", "peak_memory_mb"]}.get(task, [])
    return table(["level", "step", "sparsity", "parameters", metric, *extra],
                 [[r["level"], r["step"], r["sparsity"], f"{r['parameters']:,}", r[metric], *[r[k] for k in extra]] for r in rows])


def _write(rows: list[dict], opts: EvalOptions, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    metric, _ = PRIMARY[opts.task]
    options = {k: v for k, v in asdict(opts).items() if k != "progress"}
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps({"options": options, "rows": rows}, indent=2) + "\n")
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(levels_table(rows, opts.task) + "\n")
    plot_metric(rows, metric, out / f"{metric}.png", title=f"{opts.task} on {opts.data or 'random tokens'}", ylabel=metric)

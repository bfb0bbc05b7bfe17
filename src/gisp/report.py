"""Presentation: plain-text tables, plots and result files for the CLI, the demo and benchmarks.

Evaluation and pruning return data; only this module (and its callers) render it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from gisp.methods import LEGACY_METHOD
from gisp.structures import protected_layers
from gisp.trajectory import Trajectory


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A left-aligned text table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table; cells are written as given (callers format their numbers)."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _budget(cfg: dict, calibration: dict | None = None) -> str:
    """How much calibration data the run used, in the objective's own units (and tokens scored)."""
    scored = f" = {calibration['tokens']:,} tokens scored" if calibration and calibration.get("tokens") else ""
    return _requested(cfg) + scored


def _requested(cfg: dict) -> str:
    if cfg.get("max_tokens"):
        return f"{cfg['max_tokens']} tokens"
    if cfg.get("objective", "lm") == "lm":
        return f"{cfg.get('samples')} windows x {cfg.get('seq_len')} tokens"
    unit = "examples" if cfg.get("objective") == "answer" else "questions"
    return f"{cfg.get('samples')} {unit} (at most {cfg.get('seq_len')} tokens each)"


def info_text(traj: Trajectory) -> str:
    """What ``gisp info`` prints: the run, its steps, and what each layer keeps at the end."""
    cfg = traj.config
    head = [
        f"model: {traj.model.get('spec')} ({traj.model.get('model_type')}, fingerprint {traj.model.get('fingerprint')})",
        f"data: {cfg.get('data')}  objective: {cfg.get('objective')}  calibration: {_budget(cfg, traj.calibration)}  seed: {cfg.get('seed')}",
        f"method: {cfg.get('method', LEGACY_METHOD)}  target sparsity: {cfg.get('sparsity')}  steps: {traj.completed_steps}/{cfg.get('steps')} ({cfg.get('schedule')})  "
        f"normalize: {cfg.get('normalize')}  "
        + (f"search-every: {cfg['search_every']}  " if cfg.get("search_every") else "")
        + f"scope: {cfg.get('scope', 'global')}  "
        + (f"taylor-weights: {cfg['taylor_weights']}  " if cfg.get("taylor_weights") else "")
        + (f"saliency: {cfg['saliency']}  " if cfg.get("saliency") else "")
        + f"compensate: {'yes' if traj.compensated else 'no'}  "
        + f"protect-first: {cfg.get('protect_first')}  protect-last: {cfg.get('protect_last')}",
        "sparsity = removed / dense parameters of the decoder layers' projections; model = removed / all parameters",
        "",
    ]
    head.insert(-2, progress_line(traj))
    searched = any(r.exchange_rate is not None for r in traj.steps)  # --normalize search: the rate chosen
    steps = table(
        ["step", "target", "sparsity", "model", "heads removed", "channels removed", "calib loss", "seconds"]
        + (["head/channel rate"] if searched else []),
        [[r.step, r.target_sparsity, r.sparsity, r.model_sparsity, r.heads_removed, r.channels_removed, r.loss,
          None if r.seconds is None else f"{r.seconds:.1f}"] + ([None if r.exchange_rate is None else f"{r.exchange_rate:g}"] if searched else [])
         for r in traj.steps],
    )
    masks = traj.masks_at_step(traj.completed_steps)
    num_layers, num_heads = masks.heads.shape
    protected = set(protected_layers(num_layers, cfg.get("protect_first", 0.0), cfg.get("protect_last", 0)))
    layers = table(
        ["layer", f"heads kept /{num_heads}", f"channels kept /{masks.channels.shape[1]}", "protected"],
        [[layer, int(masks.heads[layer].sum()), int(masks.channels[layer].sum()), "yes" if layer in protected else ""]
         for layer in range(num_layers)],
    )
    return "\n".join(head) + steps + f"\n\nafter step {traj.completed_steps}:\n" + layers


def progress_line(traj: Trajectory) -> str:
    """Steps done, time spent, and the time left at the mean pace of the steps so far."""
    total = traj.config.get("steps") or traj.completed_steps
    timed = [r.seconds for r in traj.steps if r.step > 0 and r.seconds is not None]
    spent = sum(timed)
    left = total - traj.completed_steps
    if left <= 0:
        eta = "done"
    elif timed:
        eta = f"ETA {_duration(spent / len(timed) * left)} ({left} step{'s' if left > 1 else ''} left)"
    else:
        eta = f"{left} steps left, no step timed yet"
    return f"progress: {traj.completed_steps}/{total} steps, {_duration(spent)} of pruning, {eta}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


REPORT = "report.md"


def write_run_report(traj: Trajectory, run_dir: str | Path) -> Path:
    """``RUN_DIR/report.md`` with ``progress.png`` (calibration loss, sparsity and time per step) and
    ``layers.png`` (heads and channels kept per layer after every step); every file replaced
    atomically, so a report read mid-run is always whole. Returns the report's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _plot_progress(traj, run_dir / "progress.png")
    _plot_layers(traj, run_dir / "layers.png")
    text = (f"# gisp run: {traj.model.get('spec')}\n\n"
            "![calibration loss, sparsity and time per step](progress.png)\n\n"
            "![heads and channels kept per layer after each step](layers.png)\n\n"
            f"```text\n{info_text(traj)}\n```\n")
    path = run_dir / REPORT
    tmp = run_dir / f".{REPORT}.tmp"
    tmp.write_text(text)
    tmp.replace(path)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def subplots(panels: int = 1, figsize: tuple[float, float] = (6, 4)):
    """A figure and its axes (one ``Axes`` for one panel, else a list), drawn off-screen."""
    fig, axes = _pyplot().subplots(1, panels, figsize=figsize)
    return fig, axes


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (a temporary name, then rename) and close it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix or '.png'}")
    fig.tight_layout()
    try:
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        _pyplot().close(fig)
    return path


Point = tuple  # (x, y) or (x, y, error)


def plot_series(ax, series: Mapping[str, Sequence[Point]], *, xlabel: str, ylabel: str, title: str = "",
                dense: float | None = None, emphasise: str | None = None, log_y: bool = False) -> None:
    """One line per named series of ``(x, y)`` or ``(x, y, error)`` points (error bars when given),
    sorted by x; ``dense`` as a dotted reference line; ``emphasise`` drawn thicker."""
    for name, points in series.items():
        points = sorted(points)
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        width = 2.5 if name == emphasise else 1.2
        if points and all(len(p) > 2 for p in points):
            ax.errorbar(xs, ys, yerr=[p[2] for p in points], marker="o", capsize=3, lw=width, label=name)
        else:
            ax.plot(xs, ys, marker="o", lw=width, label=name)
    if dense is not None:
        ax.axhline(dense, color="gray", ls=":", label="dense")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def _plot_progress(traj: Trajectory, path: Path) -> None:
    """Three panels against the step: calibration loss, target and achieved sparsity, seconds."""
    records = traj.steps
    total = traj.config.get("steps") or traj.completed_steps
    fig, axes = subplots(3, figsize=(12, 3.4))
    losses = [(r.step, r.loss) for r in records if r.loss is not None]
    axes[0].plot([s for s, _ in losses], [v for _, v in losses], marker="o")
    axes[0].set_title("calibration loss (at the start of each step's level)", fontsize=9)
    axes[1].plot([r.step for r in records], [r.target_sparsity for r in records], "--", marker=".", label="target")
    axes[1].plot([r.step for r in records], [r.sparsity for r in records], marker="o", label="achieved")
    axes[1].set_title("decoder parameter sparsity", fontsize=9)
    axes[1].legend(fontsize=8)
    timed = [r for r in records if r.step > 0 and r.seconds is not None]
    axes[2].bar([r.step for r in timed], [r.seconds for r in timed])
    axes[2].set_title(progress_line(traj).replace("progress: ", ""), fontsize=8)
    axes[2].set_ylabel("seconds")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_xlim(-0.5, total + 0.5)
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def _plot_layers(traj: Trajectory, path: Path) -> None:
    """Two heatmaps, layer x step: the fraction of heads and of channels each layer keeps."""
    import torch

    steps = list(range(traj.completed_steps + 1))
    masks = [traj.masks_at_step(s) for s in steps]
    heads = torch.stack([m.heads.float().mean(1) for m in masks], 1).numpy()  # [L, steps]
    channels = torch.stack([m.channels.float().mean(1) for m in masks], 1).numpy()
    fig, axes = subplots(2, figsize=(10, max(3.0, 0.18 * heads.shape[0] + 1.2)))
    for ax, data, name in ((axes[0], heads, "heads"), (axes[1], channels, "MLP channels")):
        image = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"fraction of {name} kept", fontsize=9)
        ax.set_xlabel("after step")
        ax.set_ylabel("layer")
        ax.set_xticks(steps)
        fig.colorbar(image, ax=ax, fraction=0.046)
    save_figure(fig, path)


def plot_metric(rows: list[dict], metric: str, path, *, title: str, ylabel: str) -> None:
    """``metric`` against decoder sparsity, each point labelled with its parameter count; written atomically."""
    fig, ax = subplots()
    ax.plot([r["sparsity"] for r in rows], [r[metric] for r in rows], marker="o")
    for r in rows:
        if r.get("parameters"):
            ax.annotate(f"{r['parameters'] / 1e6:.1f}M", (r["sparsity"], r[metric]), textcoords="offset points", xytext=(4, 6))
    ax.set_xlabel("decoder parameter sparsity")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.12)  # room for the point labels
    save_figure(fig, path, dpi=120)


def levels_table(rows: list[dict], task: str) -> str:
    """The ``gisp eval --levels`` table: one row per level with the task's metrics."""
    from gisp.evaluation.tasks import PRIMARY

    metric, _ = PRIMARY[task]
    extra = {"mc": ["acc_norm"], "speed": ["prefill_tokens_per_s", "peak_memory_mb"]}.get(task, [])
    return table(["level", "step", "sparsity", "parameters", metric, *extra],
                 [[r["level"], r["step"], r["sparsity"], f"{r['parameters']:,}", r[metric], *[r[k] for k in extra]] for r in rows])


def write_levels(rows: list[dict], opts, out: Path) -> None:
    """``results.json``, ``results.md`` and ``<metric>.png`` of a ``--levels`` evaluation, in ``out``."""
    from gisp.evaluation.tasks import PRIMARY

    out.mkdir(parents=True, exist_ok=True)
    metric, _ = PRIMARY[opts.task]
    options = {k: v for k, v in asdict(opts).items() if k != "progress"}
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps({"options": options, "rows": rows}, indent=2) + "\n")
    tmp.replace(out / "results.json")
    (out / "results.md").write_text(levels_table(rows, opts.task) + "\n")
    plot_metric(rows, metric, out / f"{metric}.png", title=f"{opts.task} on {opts.data or 'random tokens'}", ylabel=metric)

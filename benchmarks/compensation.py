"""Is bias compensation what separates FLAP from GISP? Two replays of committed quality runs.

    python benchmarks/compensation.py        # after benchmarks/quality.py --model smollm2 (it needs the runs)

1. **Compensation added to an uncompensated GISP selection.** The quality table's ``gisp (no
   compensation)`` run (``runs/quality-smollm2/gisp-nocomp-ppl``) is replayed step by step on the
   dense model: before each step's removals, the mean input of every ``o_proj`` / ``down_proj``
   feature is measured on the model as it then stands (the same calibration batches), the removed
   features' means become output biases (:func:`gisp.compensation.compensate`), then the step's
   masks are applied. This separates *applying* compensation from *scoring with* it (the default
   ``gisp`` run, whose scores measure the compensated removal and so select differently).
2. **FLAP without its compensation**: the ``flap`` 50% run's masks applied with no biases.

Perplexity as the quality table measures it (seq_len 128, the first 400 windows of WikiText-2 test
articles 32-62). Writes ``benchmarks/results/compensation.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from common import RESULTS, environment, write_json
from quality import LM_EVAL

from gisp import models
from gisp.statistics import input_means, input_stats
from gisp.adapters import adapter_for
from gisp.batches import build_batches, read_source
from gisp.compensation import compensate
from gisp.config import PruneConfig
from gisp.evaluation.tasks import EvalOptions, evaluate_model
from gisp.masking import apply_masks
from gisp.trajectory import Trajectory

RUNS = Path("runs/quality-smollm2")
LEVELS = {4: 0.2, 6: 0.3, 8: 0.4, 10: 0.5}  # step of the 10-step run -> its level
EVAL = EvalOptions(task="ppl", data=LM_EVAL, seq_len=128, batch_size=16, limit=400, progress=False)


def replay_with_compensation(run: Path) -> dict[str, float]:
    """Perplexity at each level of ``run`` with per-step compensation biases added."""
    traj = Trajectory.load(run)
    config = PruneConfig.from_dict(traj.config)
    model, tokenizer = models.load(config.model)
    adapter = adapter_for(model.config)
    batches = build_batches(config, read_source(config), tokenizer)
    out = {}
    for step in range(1, traj.completed_steps + 1):
        before, after = traj.masks_at_step(step - 1), traj.masks_at_step(step)
        means = input_means(input_stats(model, adapter, batches, progress=False))  # on the model as pruned so far
        compensate(model, adapter, before, after, means)
        apply_masks(model, adapter, after)
        if step in LEVELS:
            out[f"{LEVELS[step]:g}"] = evaluate_model(model, tokenizer, EVAL)["ppl"]
            print(f"step {step}: ppl {out[f'{LEVELS[step]:g}']:.2f}", flush=True)
    return out


def flap_without_compensation(run: Path) -> float:
    traj = Trajectory.load(run)
    model, tokenizer = models.load(traj.model["spec"])
    apply_masks(model, adapter_for(model.config), traj.masks_at_step(traj.completed_steps))
    return evaluate_model(model, tokenizer, EVAL)["ppl"]


def main() -> None:
    for name in ("gisp-nocomp-ppl", "flap-ppl-50"):
        if not (RUNS / name / "run.json").is_file():
            sys.exit(f"{RUNS / name} is missing: run python benchmarks/quality.py --model smollm2 --sections lm first")
    start = time.time()
    results = {
        "environment": environment(),
        "command": "python benchmarks/compensation.py",
        "evaluation": {"data": LM_EVAL, "seq_len": 128, "windows": 400},
        "gisp_nocomp_selection_compensated": replay_with_compensation(RUNS / "gisp-nocomp-ppl"),
        "flap_50_without_compensation": flap_without_compensation(RUNS / "flap-ppl-50"),
    }
    results["seconds"] = round(time.time() - start, 1)
    write_json(RESULTS / "compensation.json", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

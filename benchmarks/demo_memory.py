"""Peak memory of the demo's pruning run, with and without the memory settings, and whether the
trajectories agree: python benchmarks/demo_memory.py

Runs the demo's `gisp prune` (SmolLM2-135M, answer objective, 32 GSM8K problems, 3 steps to
30%, micro-batches of 8 x up to 384 tokens) twice, as separate processes under `/usr/bin/time`:
as before (every activation and the full-vocabulary logits kept for the backward pass), and with
the demo's settings (`--gradient-checkpointing --loss-chunk 64`). Records each peak resident set
size and wall time, and compares the two trajectories structure by structure. (The committed
results predate :mod:`gisp.runtime`, which now returns freed blocks to the system; delete
runs/demo_memory/*.json to measure again.) Resumable: a
finished run is not re-run. Writes `benchmarks/results/demo_memory.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from common import environment, run_measured, write_results
from safetensors.torch import load_file

WORK = Path("runs/demo_memory")
DEMO = ["--model", "smollm2-135m", "--data", "gsm8k[:1000]", "--objective", "answer", "--sparsity", "0.3", "--steps", "3",
        "--samples", "32", "--seq-len", "384", "--batch-size", "8", "--seed", "0"]
SETTINGS = {"lean": ["--gradient-checkpointing", "--loss-chunk", "64"], "kept": []}


def run(name: str, extra: list[str]) -> dict:
    """One pruning process, its peak RSS (MB) and wall time; cached in WORK/NAME.json."""
    record = WORK / f"{name}.json"
    if record.is_file():
        return json.loads(record.read_text())
    out = WORK / name
    cmd = ["gisp", "prune", *DEMO, *extra, "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    _, seconds, peak = run_measured(cmd)
    result = {"settings": extra, "command": " ".join(cmd), "peak_rss_mb": round(peak, 1), "seconds": round(seconds, 1)}
    record.write_text(json.dumps(result))
    return result


def compare(a: Path, b: Path) -> dict:
    """Removal orders and steps equal; the largest difference of the recorded input means."""
    ta, tb = load_file(a / "trajectory.safetensors"), load_file(b / "trajectory.safetensors")
    same = {k: torch.equal(ta[k], tb[k]) for k in ta if "order" in k or "step" in k}
    means = max(float((ta[k].double() - tb[k].double()).nan_to_num().abs().max()) for k in ta if "mean" in k)
    ja, jb = (json.loads((d / "run.json").read_text()) for d in (a, b))
    return {"orders_and_steps_identical": all(same.values()), "per_tensor": same, "max_input_mean_difference": means,
            "losses": [[s["loss"] for s in ja["steps"]], [s["loss"] for s in jb["steps"]]]}


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    results = {name: run(name, extra) for name, extra in SETTINGS.items()}
    write_results("demo_memory.json", {"environment": environment(), "runs": results,
                                       "trajectories": compare(WORK / "kept", WORK / "lean")})
    for name, r in results.items():
        print(f"{name}: peak {r['peak_rss_mb']:.0f} MB, {r['seconds']:.0f} s")


if __name__ == "__main__":
    main()

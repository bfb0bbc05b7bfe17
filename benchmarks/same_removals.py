"""Do two runs of the same command, made by two versions of gisp, remove the same structures?

    python benchmarks/same_removals.py --name refactor_check-smollm2 \
        --cell flap-ppl-50 LABEL_A=RUN_DIR_A LABEL_B=RUN_DIR_B [--cell ...]

For each cell: every pair of runs compared tensor by tensor (the removal order and step of every head
and channel, and the compensation means, NaN where a structure was never measured), and each run's
heads and channels removed at its last step. A refactor that leaves behaviour alone gives identical
trajectories; a change of what a parameter budget buys (e.g. the KV-head layout) shows as different
removals. Results: ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, environment, write_json  # noqa: E402


def same(a, b) -> bool:
    """Bit-identical, NaN where the other has NaN."""
    import torch

    if a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    return torch.equal(a, b)


def summary(run_dir: Path) -> dict:
    """What the run's last step removed, and the command's settings."""
    record = json.loads((run_dir / "run.json").read_text())
    last = record["steps"][-1]
    return {"run_dir": str(run_dir), "heads_removed": last["heads_removed"], "channels_removed": last["channels_removed"],
            "sparsity": last["sparsity"], "steps": len(record["steps"]) - 1}


def compare(runs: dict[str, Path]) -> dict:
    from safetensors.torch import load_file

    labels = list(runs)
    tensors = {label: load_file(runs[label] / "trajectory.safetensors") for label in labels}
    pairs = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            keys = sorted(set(tensors[a]) | set(tensors[b]))
            per = {k: k in tensors[a] and k in tensors[b] and same(tensors[a][k], tensors[b][k]) for k in keys}
            pairs[f"{a} vs {b}"] = {"identical": all(per.values()), "tensors": per}
    return {"runs": {label: summary(path) for label, path in runs.items()}, "pairs": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--cell", nargs="+", action="append", required=True, metavar="CELL LABEL=RUN_DIR")
    args = parser.parse_args()
    cells = {}
    for cell, *specs in args.cell:
        cells[cell] = compare({label: Path(path) for label, _, path in (s.partition("=") for s in specs)})
    payload = {"command": " ".join(["python", "benchmarks/same_removals.py", *sys.argv[1:]]), "environment": environment(),
               "cells": cells}
    write_json(RESULTS / f"{args.name}.json", payload)
    for cell, result in cells.items():
        for pair, verdict in result["pairs"].items():
            print(f"{cell}: {pair}: {'identical' if verdict['identical'] else 'different'}")


if __name__ == "__main__":
    main()

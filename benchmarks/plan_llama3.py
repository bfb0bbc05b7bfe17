"""``gisp plan`` for the paper's scale (issue #24): Llama-3-8B on one 80 GB GPU and Llama-3-70B on
eight, bfloat16, the paper's 2000 x 256 calibration tokens, from the configs in ``benchmarks/configs``.

    python benchmarks/plan_llama3.py   # -> benchmarks/results/plan-llama3.json

Estimates from the configs alone (no weights, no GPU); the seconds assume the throughput printed
beside them. ``benchmarks/gpu.py`` (b) checks the memory estimate against a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from common import RESULTS, environment

CONFIGS = Path(__file__).parent / "configs"
PAPER = ["--samples", "2000", "--seq-len", "256", "--dtype", "bfloat16", "--device", "cuda", "--memory", "80"]
CASES = {
    "llama-3-8b, 1 GPU, batch 8": ["--model", str(CONFIGS / "llama-3-8b"), "--batch-size", "8"],
    "llama-3-70b, 8 GPUs, batch 2, no --fsdp": ["--model", str(CONFIGS / "llama-3-70b"), "--batch-size", "2", "--nproc", "8"],
    "llama-3-70b, 8 GPUs, batch 2, --fsdp": ["--model", str(CONFIGS / "llama-3-70b"), "--batch-size", "2", "--nproc", "8",
                                            "--fsdp"],
}


def main() -> None:
    gisp = Path(sys.executable).with_name("gisp")
    rows = {}
    for name, args in CASES.items():
        cmd = [str(gisp), "plan", *args, *PAPER, "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows[name] = {"command": "gisp " + " ".join(cmd[1:]), **json.loads(out.strip().splitlines()[-1])}
        report = rows[name]
        print(f"{name}: {report['bytes']['total'] / 2**30:.2f} GiB per rank, fits {report['fits']}, flags "
              f"{report['flags_to_fit']}, ~{report['step_seconds']['gradient_pass']:.0f} s + up to "
              f"~{report['step_seconds']['rate_search']:.0f} s a step at {report['assumed_tflops']:g} TFLOP/s (assumed)")
    path = RESULTS / "plan-llama3.json"
    path.write_text(json.dumps({"environment": environment(), "cases": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Issue #2 check 5: prune SmolLM2-135M on WikiText-2 text, export 10% and 30%, compare perplexity.

Runs the real CLI commands (recorded verbatim in the results file), skipping any whose output
already exists, so an interrupted run resumes. Usage:

    python benchmarks/core_smollm2.py [--work runs/core_smollm2] [--limit-windows N]

Writes benchmarks/results/core_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from env_info import environment  # noqa: E402

WIKI = "text:../shared/data/wikitext-2/test.txt"
RESULTS = Path(__file__).parent / "results" / "core_smollm2.json"


def run(cmd: list[str], log: Path) -> tuple[str, float]:
    print("$", shlex.join(cmd), flush=True)
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n{proc.stdout}\n{proc.stderr[-4000:]}\n")
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1]}")
    return proc.stdout, time.time() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/core_smollm2")
    ap.add_argument("--limit-windows", type=int, default=None)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    run_dir = work / "run"
    results: dict = {"environment": environment(), "commands": [], "models": {}}

    prune = ["gisp", "prune", "--model", "smollm2-135m", "--data", WIKI, "--sparsity", "0.3", "--steps", "4",
             "--samples", "8", "--seq-len", "128", "--out", str(run_dir)]
    _, seconds = run(prune, log)
    results["commands"].append({"cmd": shlex.join(prune), "seconds": round(seconds, 1)})
    info, _ = run(["gisp", "info", str(run_dir), "--json"], log)
    results["run"] = json.loads(info)

    targets = {"dense": "smollm2-135m"}
    for level in ("0.1", "0.3"):
        out = work / f"export-{level}"
        if not (out / "config.json").exists():
            cmd = ["gisp", "export", str(run_dir), "--sparsity", level, "--out", str(out)]
            _, seconds = run(cmd, log)
            results["commands"].append({"cmd": shlex.join(cmd), "seconds": round(seconds, 1)})
        targets[level] = str(out)
    for name, target in targets.items():
        cmd = ["gisp", "eval", target, "--task", "ppl", "--data", WIKI, "--seq-len", "128", "--json"]
        if args.limit_windows:
            cmd += ["--limit-windows", str(args.limit_windows)]
        out, seconds = run(cmd, log)
        record = json.loads(out.strip().splitlines()[-1])
        results["commands"].append({"cmd": shlex.join(cmd), "seconds": round(seconds, 1)})
        if name != "dense":
            export_info = json.loads((Path(target) / "gisp_export.json").read_text())
            record |= {k: export_info[k] for k in ("sparsity", "step", "parameters", "dense_parameters",
                                                     "decoder_parameters", "dense_decoder_parameters", "remote_code")}
            record["safetensors_bytes"] = (Path(target) / "model.safetensors").stat().st_size
        results["models"][name] = record
        print(name, record, flush=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

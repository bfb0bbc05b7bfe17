"""Issue #2 check 5: prune SmolLM2-135M on WikiText-2 text, export 10% and 30%, compare perplexity.

Runs the real CLI commands (recorded verbatim in the results file); an interrupted run resumes
(the prune resumes, finished exports are kept). Usage:

    python benchmarks/core_smollm2.py [--work runs/core_smollm2] [--limit-windows N]

Writes benchmarks/results/core_smollm2.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import SHARED, Recorder, environment, write_results

WIKI = f"text:{SHARED}/wikitext-2/test.txt"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/core_smollm2")
    ap.add_argument("--limit-windows", type=int, default=None)
    args = ap.parse_args()
    rec = Recorder(Path(args.work))
    run_dir = rec.work / "run"
    rec.run(["gisp", "prune", "--model", "smollm2-135m", "--data", WIKI, "--sparsity", "0.3", "--steps", "4",
             "--samples", "8", "--seq-len", "128", "--out", run_dir])
    results: dict = {"environment": environment(), "run": json.loads(rec.run(["gisp", "info", run_dir, "--json"])), "models": {}}
    targets = {"dense": "smollm2-135m"}
    for level in ("0.1", "0.3"):
        out = rec.work / f"export-{level}"
        rec.once(out / "config.json", ["gisp", "export", run_dir, "--sparsity", level, "--out", out])
        targets[level] = str(out)
    limit = ["--limit-windows", str(args.limit_windows)] if args.limit_windows else []
    for name, target in targets.items():
        record = rec.json(["gisp", "eval", target, "--task", "ppl", "--data", WIKI, "--seq-len", "128", "--json", *limit])
        if name != "dense":
            info = json.loads((Path(target) / "gisp_export.json").read_text())
            record |= {k: info[k] for k in ("sparsity", "step", "parameters", "dense_parameters", "decoder_parameters",
                                            "dense_decoder_parameters", "remote_code")}
            record["safetensors_bytes"] = (Path(target) / "model.safetensors").stat().st_size
        results["models"][name] = record
        print(name, record, flush=True)
    results["commands"] = rec.commands
    write_results("core_smollm2.json", results)


if __name__ == "__main__":
    main()

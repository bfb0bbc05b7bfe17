"""Which block-wise normalisation should be the default? (GISP.md section 2 leaves it to a benchmark.)

SmolLM2-135M pruned to 30% with the LM objective on GSM8K problems 0-999 (same budget and steps
for each), once per normalisation; perplexity on held-out GSM8K problems 1000-1318 (seq_len 128).
Usage: python benchmarks/normalization.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import Recorder, environment, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/normalization")
    ap.add_argument("--max-tokens", default="4096")
    ap.add_argument("--sparsity", default="0.3")
    args = ap.parse_args()
    rec = Recorder(Path(args.work))
    evaluation = ["--task", "ppl", "--data", "gsm8k[1000:]", "--seq-len", "128", "--json"]
    results = {"dense": rec.json(["gisp", "eval", "smollm2-135m", *evaluation])}
    for method in ("reference", "params", "zscore"):
        run, export = rec.work / f"run-{method}", rec.work / f"export-{method}"
        rec.run(["gisp", "prune", "--model", "smollm2-135m", "--data", "gsm8k[:1000]", "--sparsity", args.sparsity,
                 "--steps", "3", "--max-tokens", args.max_tokens, "--seq-len", "128", "--normalize", method, "--out", run])
        rec.once(export / "config.json", ["gisp", "export", run, "--sparsity", args.sparsity, "--out", export])
        results[method] = rec.json(["gisp", "eval", export, *evaluation])
        info = rec.json(["gisp", "info", run, "--json"])
        results[method]["heads_removed"] = info["steps"][-1]["heads_removed"]
        results[method]["channels_removed"] = info["steps"][-1]["channels_removed"]
    ppl = {k: v["ppl"] for k, v in results.items()}
    print(ppl)
    write_results("normalization.json", {"environment": environment(), "sparsity": float(args.sparsity),
                                         "held_out_ppl": ppl, "results": results, "commands": rec.commands})


if __name__ == "__main__":
    main()

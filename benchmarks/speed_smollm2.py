"""Issue #3 check 4: inference speed of dense SmolLM2-135M vs a 50% GISP export, side by side.

Prunes to 50% (LM objective, WikiText-2 text, 4 steps), exports the 50% level, then runs
`gisp eval EXPORT --task speed --baseline smollm2-135m --json` (each model measured in its own
process, warm-up then the median of the repeats). Run it on an otherwise idle machine.
Usage: python benchmarks/speed_smollm2.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gisp.evaluation.tasks import summary_line

from common import SHARED, Recorder, environment, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/speed_smollm2")
    ap.add_argument("--speed-batch", default="4")
    ap.add_argument("--seq-len", default="128")
    ap.add_argument("--new-tokens", default="32")
    ap.add_argument("--repeats", default="5")
    args = ap.parse_args()
    rec = Recorder(Path(args.work))
    run, export = rec.work / "run", rec.work / "export-0.5"
    rec.run(["gisp", "prune", "--model", "smollm2-135m", "--data", f"text:{SHARED}/wikitext-2/test.txt", "--sparsity", "0.5",
             "--steps", "4", "--samples", "8", "--seq-len", "128", "--out", run])
    rec.once(export / "config.json", ["gisp", "export", run, "--sparsity", "0.5", "--out", export])
    flags = ["--speed-batch", args.speed_batch, "--seq-len", args.seq_len, "--new-tokens", args.new_tokens, "--repeats", args.repeats]
    # One measurement (JSON); the human lines are what `gisp eval` prints for these same results.
    rows = rec.run(["gisp", "eval", export, "--task", "speed", "--baseline", "smollm2-135m", "--json", *flags])
    dense, pruned = [json.loads(line) for line in rows.strip().splitlines()[-2:]]
    ratios = {k: pruned[k] / dense[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_mb", "parameters")}
    printed = [f"baseline smollm2-135m: {summary_line('speed', dense)}", f"model {export}: {summary_line('speed', pruned)}",
               "ratio model/baseline: " + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items())]
    print("\n".join(printed))
    write_results("speed_smollm2.json", {"environment": environment(), "printed": printed,
                                         "dense": dense, "pruned_50": pruned, "ratio_pruned_over_dense": ratios,
                                         "commands": rec.commands})


if __name__ == "__main__":
    main()

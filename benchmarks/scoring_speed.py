"""Time of one GISP scoring pass (the gradient step that dominates a prune) on SmolLM2-135M.

Scores the dense model once per saliency over the quality benchmark's LM calibration set
(128 windows of 128 tokens of WikiText-2 test, first 31 articles; batch 8), compensated, output
columns (GISP's defaults), and records wall seconds and peak resident memory of each, each in its
own process. Run it on an otherwise idle machine. To compare with another commit, run the same
script with ``PYTHONPATH`` pointing at that commit's ``src`` and ``--label``; results accumulate
in ``benchmarks/results/scoring_speed.json`` keyed by label and saliency.

Usage: python benchmarks/scoring_speed.py [--label current] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from common import RESULTS, SHARED, environment, write_results

DATA = f"wikitext2:{SHARED}/wikitext-2/test.txt[:31]"


def score_once(saliency: str, repeats: int) -> dict:
    """In this process: load the model, build the batches, time ``repeats`` scoring passes."""
    import torch

    import gisp
    from gisp.adapters import adapter_for
    from gisp.batches import build_batches, read_source
    from gisp.gradients import TaylorImportance
    from gisp.models import load

    torch.manual_seed(0)
    config = gisp.PruneConfig(model="smollm2-135m", data=DATA, samples=128, seq_len=128, batch_size=8)
    model, tokenizer = load(config.model)
    batches = build_batches(config, read_source(config), tokenizer)
    adapter = adapter_for(model.config)
    importance = TaylorImportance(batches, progress=False, weights="output", compensate=True, saliency=saliency)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = importance(model, adapter)
        seconds.append(round(time.perf_counter() - start, 2))
    return {"saliency": saliency, "seconds": seconds, "median_seconds": sorted(seconds)[len(seconds) // 2],
            "tokens": sum(int(b["input_ids"].numel()) for b in batches), "loss": scores.loss,
            "head_score_sum": float(scores.heads.sum()), "channel_score_sum": float(scores.channels.sum()),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="current")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--saliency", nargs="+", default=["fisher", "first-order"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(score_once(args.child, args.repeats)))
        return
    path = RESULTS / "scoring_speed.json"
    results = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    for saliency in args.saliency:
        cmd = [sys.executable, __file__, "--child", saliency, "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1]) | {"environment": environment(), "label": args.label}
        results["rows"][f"{args.label}/{saliency}"] = row
        print(f"{args.label} {saliency}: {row['median_seconds']} s ({row['seconds']}), peak {row['peak_rss_mb']} MB",
              flush=True)
    results["command"] = "python benchmarks/scoring_speed.py --label LABEL (PYTHONPATH=<commit>/src for another commit)"
    write_results("scoring_speed.json", results)


if __name__ == "__main__":
    main()

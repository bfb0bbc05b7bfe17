"""Issue #3 check 1: `gisp eval --task mc` vs lm-evaluation-harness on the first 200 PIQA dev questions.

SmolLM2-135M (dense, saved from GGUF with `gisp convert`, since lm-eval cannot load a GGUF
tokenizer) is scored by both with the same prompt; the results file records both and the gap in
points. Usage: python benchmarks/piqa_lmeval_agreement.py [--limit 200]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common import SHARED, Recorder, environment, write_results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--work", default="runs/piqa_lmeval")
    args = ap.parse_args()
    rec = Recorder(Path(args.work))
    dense, tasks, out = rec.work / "smollm2-dense", rec.work / "tasks", rec.work / "lm_eval_out"
    rec.once(dense / "config.json", ["gisp", "convert", "smollm2-135m", "--out", dense])
    rec.run(["gisp", "lm-eval-tasks", tasks, "--piqa", f"{SHARED}/piqa/dev.jsonl"])
    ours = rec.json(["gisp", "eval", dense, "--task", "mc", "--data", f"piqa:{SHARED}/piqa/dev.jsonl[:{args.limit}]", "--json"])
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    rec.run(["lm_eval", "--model", "hf", "--model_args", f"pretrained={dense},dtype=float32", "--include_path", tasks,
             "--tasks", "gisp_piqa", "--limit", str(args.limit), "--device", "cpu", "--batch_size", "8", "--output_path", out])
    latest = max(out.rglob("results*.json"), key=lambda p: p.stat().st_mtime)
    theirs = json.loads(latest.read_text())["results"]["gisp_piqa"]
    comparison = {
        "questions": args.limit,
        "gisp": {"acc": ours["acc"], "acc_norm": ours["acc_norm"]},
        "lm_eval": {"acc": theirs["acc,none"], "acc_norm": theirs["acc_norm,none"]},
    }
    comparison["gap_points"] = {m: round(100 * abs(comparison["gisp"][m] - comparison["lm_eval"][m]), 3) for m in ("acc", "acc_norm")}
    comparison["within_0.5_points"] = all(v <= 0.5 for v in comparison["gap_points"].values())
    print(json.dumps(comparison, indent=2))
    write_results("piqa_lmeval_agreement.json", {"environment": environment(), "model": "smollm2-135m (SmolLM2-135M-Instruct Q4_1 GGUF, dequantised, float32)",
                                                 "comparison": comparison, "commands": rec.commands})


if __name__ == "__main__":
    main()

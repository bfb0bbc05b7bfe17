"""Issue #3 check 3: task-aligned objectives vs the LM objective at 30% sparsity, equal budgets.

Three GISP runs on SmolLM2-135M with the same calibration token budget (--max-tokens), steps and
settings, differing only in objective and data:
- lm: WikiText-2 text;  margin: PIQA dev questions 1-500;  answer: GSM8K train.
Then PIQA accuracy on dev questions 501-1000 (lm vs margin) and GSM8K answer perplexity on the
first test problems (lm vs answer), dense for reference. Usage:

    python benchmarks/task_aligned.py [--max-tokens 4096] [--gsm8k-test 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import SHARED, Recorder, environment, write_results

RUNS = {
    "lm": ["--objective", "lm", "--data", f"text:{SHARED}/wikitext-2/test.txt", "--seq-len", "128"],
    "margin": ["--objective", "margin", "--data", f"piqa:{SHARED}/piqa/dev.jsonl[:500]", "--seq-len", "256"],
    "answer": ["--objective", "answer", "--data", f"gsm8k:{SHARED}/gsm8k/train.jsonl", "--seq-len", "384"],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/task_aligned")
    ap.add_argument("--max-tokens", default="4096")
    ap.add_argument("--steps", default="3")
    ap.add_argument("--gsm8k-test", type=int, default=200)
    args = ap.parse_args()
    rec = Recorder(Path(args.work))
    piqa_eval = ["--task", "mc", "--data", f"piqa:{SHARED}/piqa/dev.jsonl[500:1000]", "--json"]
    gsm_eval = ["--task", "answer_ppl", "--data", f"gsm8k:{SHARED}/gsm8k/test.jsonl[:{args.gsm8k_test}]", "--json"]
    models = {"dense": "smollm2-135m"}
    for name, flags in RUNS.items():
        run, export = rec.work / f"run-{name}", rec.work / f"export-{name}"
        rec.run(["gisp", "prune", "--model", "smollm2-135m", *flags, "--sparsity", "0.3", "--steps", args.steps,
                 "--max-tokens", args.max_tokens, "--out", run])
        rec.once(export / "config.json", ["gisp", "export", run, "--sparsity", "0.3", "--out", export])
        models[name] = str(export)
    results = {"piqa_dev_501_1000": {}, f"gsm8k_test_answer_ppl_first_{args.gsm8k_test}": {}}
    for name in ("dense", "lm", "margin"):
        results["piqa_dev_501_1000"][name] = rec.json(["gisp", "eval", models[name], *piqa_eval])
    for name in ("dense", "lm", "answer"):
        results[f"gsm8k_test_answer_ppl_first_{args.gsm8k_test}"][name] = rec.json(["gisp", "eval", models[name], *gsm_eval])
    piqa = results["piqa_dev_501_1000"]
    gsm = results[f"gsm8k_test_answer_ppl_first_{args.gsm8k_test}"]
    verdict = {
        "margin_beats_lm_on_piqa_acc": piqa["margin"]["acc"] > piqa["lm"]["acc"],
        "piqa_acc": {k: v["acc"] for k, v in piqa.items()}, "piqa_acc_norm": {k: v["acc_norm"] for k, v in piqa.items()},
        "answer_beats_lm_on_gsm8k_answer_ppl": gsm["answer"]["ppl"] < gsm["lm"]["ppl"],
        "gsm8k_answer_ppl": {k: v["ppl"] for k, v in gsm.items()},
    }
    print(verdict)
    write_results("task_aligned.json", {"environment": environment(), "sparsity": 0.3, "max_tokens": int(args.max_tokens),
                                        "steps": int(args.steps), "verdict": verdict, "results": results, "commands": rec.commands})


if __name__ == "__main__":
    main()

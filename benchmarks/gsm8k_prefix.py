"""Does reusing the few-shot exemplars' KV cache change GSM8K predictions, and what does it save?

    python benchmarks/gsm8k_prefix.py            # dense qwen2.5-0.5b, GSM8K test problems 0-15 (a few minutes)

Both paths of :func:`gisp.evaluation.gsm8k.gsm8k_exact_match` (``reuse_prefix`` off and on) on the
same problems, 8-shot chain of thought, greedy, 256 new tokens, batch 8: wall seconds each, and how
many problems' generated texts and predictions are identical. The paths differ only in how the
exemplars' keys and values are computed (once at batch 1, or per batch after left padding), so any
difference is float rounding that a near-tie in greedy decoding turns into another token.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from common import environment, write_results

from gisp import models
from gisp.evaluation.gsm8k import gsm8k_exact_match, read_records
from gisp.examples import gsm8k_problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    model, tokenizer = models.load(args.model)
    problems = gsm8k_problems(f"gsm8k[:{args.problems}]")
    paths, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for reuse in (False, True):
            records = Path(tmp) / f"{reuse}.jsonl"
            start = time.perf_counter()
            result = gsm8k_exact_match(model, tokenizer, problems, batch_size=args.batch_size, records=records,
                                       max_new_tokens=args.max_new_tokens, reuse_prefix=reuse)
            seconds[reuse] = time.perf_counter() - start
            paths[reuse] = (result, read_records(records))
    plain, reused = paths[False][1], paths[True][1]
    same_text = sum(plain[i]["text"] == reused[i]["text"] for i in plain)
    same_prediction = sum(plain[i]["prediction"] == reused[i]["prediction"] for i in plain)
    payload = {
        "command": "python benchmarks/gsm8k_prefix.py " + " ".join(sys.argv[1:]),
        "model": args.model, "problems": args.problems, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "shots": 8,
        "plain": {"seconds": round(seconds[False], 1), "correct": paths[False][0].correct},
        "reuse_prefix": {"seconds": round(seconds[True], 1), "correct": paths[True][0].correct},
        "speedup": round(seconds[False] / seconds[True], 2),
        "identical_texts": same_text, "identical_predictions": same_prediction,
        "differing": [{"index": i, "plain": plain[i]["text"], "reuse_prefix": reused[i]["text"]}
                      for i in plain if plain[i]["text"] != reused[i]["text"]],
        "environment": environment(),
    }
    print(f"plain {seconds[False]:.0f} s, reused prefix {seconds[True]:.0f} s ({payload['speedup']}x); "
          f"identical texts {same_text}/{len(plain)}, predictions {same_prediction}/{len(plain)}")
    write_results(f"gsm8k_prefix-{args.model}.json", payload)


if __name__ == "__main__":
    main()

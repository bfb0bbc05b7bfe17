"""What does GSM8K generation's batch size cost and change? (issue #25: a 250-problem cell is about an
hour here at batch 8)

    python benchmarks/gsm8k_batch.py             # dense qwen2.5-0.5b, chat prompts (about 10 minutes alone)

1. Decode cost per step at each batch size: greedy generation from the chat prompts of the first B
   test problems, a prefill alone (1 new token) and 65 forced new tokens, each the fastest of 3
   after a warm-up; seconds per decode step and per row-step.
2. What a cell would cost: the records of a finished cell (every problem's generated length) replayed
   at each batch size in problem order. A batch runs until its longest row ends, so a larger batch
   pays more steps for the same rows; the estimate is prefill + steps x the measured step cost
   (the step cost measured at short context; the attention over a longer cache adds a little).
3. Whether predictions change: the first ``--identity`` problems generated again as one batch (at
   most the largest batch size) with the cell's settings, against the cell's records (made at batch 8). ``batch_size`` is
   not part of a records file's settings (:func:`gisp.evaluation.gsm8k.gsm8k_exact_match`): rows are
   independent up to float rounding of padded matmuls, which a greedy near-tie can turn into
   another token.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, bad_input, environment, write_results

from gisp import models
from gisp.evaluation.gsm8k import build_prompt, gsm8k_exact_match, read_records
from gisp.examples import gsm8k_problems

CELL = RESULTS / "gsm8k-qwen2.5-0.5b" / "records" / "dense-chat512-100.jsonl"


@torch.no_grad()
def step_cost(model, tokenizer, questions: list[str], new_tokens: int = 65, repeats: int = 3) -> dict:
    """Seconds of a prefill and of one decode step for these prompts as one left-padded batch."""
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    prompts = [build_prompt(q, tokenizer, "chat") for q in questions]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    timings = {}
    for n in (1, new_tokens):  # the fastest of `repeats` (a shared machine only ever slows a run down)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.generate(**enc, do_sample=False, max_new_tokens=n, min_new_tokens=n, pad_token_id=tokenizer.pad_token_id)
            times.append(time.perf_counter() - start)
        timings[n] = min(times)
    step = (timings[new_tokens] - timings[1]) / (new_tokens - 1)
    return {"batch": len(questions), "prompt_tokens": int(enc["input_ids"].shape[1]), "prefill_s": round(timings[1], 3),
            "decode_step_s": round(step, 4), "row_step_ms": round(1000 * step / len(questions), 2)}


def replay(lengths: list[int], cost: dict) -> dict:
    """Estimated seconds to generate rows of these lengths in order, ``cost['batch']`` at a time."""
    b = cost["batch"]
    batches = [lengths[i:i + b] for i in range(0, len(lengths), b)]
    steps = sum(max(chunk) for chunk in batches)
    seconds = len(batches) * cost["prefill_s"] + steps * cost["decode_step_s"]
    return {"batch": b, "batches": len(batches), "decode_steps": steps, "estimated_s": round(seconds),
            "row_steps_wasted": round(1 - sum(lengths) / (steps * b) if steps else 0.0, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--identity", type=int, default=16, help="problems generated again as one batch")
    args = parser.parse_args()
    torch.manual_seed(0)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    cell = read_records(CELL)
    if not cell:
        bad_input(f"{CELL} holds no records: run python benchmarks/gsm8k.py --stage formats first")
    if args.identity > len(cell):
        bad_input(f"--identity {args.identity}: the cell has {len(cell)} problems")
    settings = next(iter(cell.values()))["settings"]
    model, tokenizer = models.load(args.model)
    if sum(p.numel() for p in model.parameters()) != settings["parameters"]:
        bad_input(f"{args.model} is not the model of {CELL.name} ({settings['model']}, {settings['parameters']:,} parameters)")
    problems = gsm8k_problems(f"gsm8k[:{max(max(sizes), len(cell))}]")
    step_cost(model, tokenizer, [problems[0]["question"]], new_tokens=2, repeats=1)  # warm-up: first calls pay set-up
    costs = [step_cost(model, tokenizer, [p["question"] for p in problems[:b]]) for b in sizes]
    for c in costs:
        print(f"batch {c['batch']}: prefill {c['prefill_s']} s, decode step {c['decode_step_s']} s "
              f"({c['row_step_ms']} ms per row)", flush=True)
    lengths = [cell[i]["new_tokens"] for i in sorted(cell)]
    estimates = [replay(lengths, c) for c in costs]
    for e in estimates:
        print(f"batch {e['batch']}: {e['decode_steps']} steps, about {e['estimated_s']} s for {len(lengths)} problems",
              flush=True)
    big = min(max(sizes), args.identity)  # one batch of them
    path = RESULTS / f"gsm8k_batch-{Path(args.model).name}.json"
    earlier = json.loads(path.read_text()).get("identity", []) if path.is_file() else []
    command = "python benchmarks/gsm8k_batch.py " + " ".join(sys.argv[1:])
    if big < 1:  # --identity 0: only the costs; earlier identity checks are kept
        write_results(path.name, {"command": command, "model": args.model, "cell": str(CELL.relative_to(RESULTS)),
                                  "cell_settings": settings, "step_costs": costs, "replayed": estimates,
                                  "identity": earlier, "environment": environment()})
        return
    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "again.jsonl"
        start = time.perf_counter()
        gsm8k_exact_match(model, tokenizer, problems[:args.identity], batch_size=big, records=records,
                          prompt_format=settings["prompt_format"], max_new_tokens=settings["max_new_tokens"])
        seconds = time.perf_counter() - start
        again = read_records(records)
    same_text = [i for i in again if again[i]["text"] == cell[i]["text"]]
    same_prediction = [i for i in again if again[i]["prediction"] == cell[i]["prediction"]]
    identity = {"command": command, "problems": args.identity, "batch_size": big, "seconds": round(seconds, 1),
                "identical_texts": len(same_text), "identical_predictions": len(same_prediction),
                "differing": [{"index": i, "batch_8": cell[i]["text"], f"batch_{big}": again[i]["text"]}
                              for i in again if i not in same_text]}
    payload = {
        "command": command, "model": args.model, "cell": str(CELL.relative_to(RESULTS)), "cell_settings": settings,
        "step_costs": costs, "replayed": estimates,
        # one entry per batch size checked (a later run with another --identity adds its own)
        "identity": [e for e in earlier if e["batch_size"] != big] + [identity],
        "environment": environment(),
    }
    print(f"batch {big} again on {args.identity} problems: {seconds:.0f} s; identical texts {len(same_text)}, "
          f"predictions {len(same_prediction)}")
    write_results(path.name, payload)


if __name__ == "__main__":
    main()

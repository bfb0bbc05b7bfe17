"""Task calibration for multiple choice beyond the margin, on the PIQA protocol of ``quality.py --model
smollm2-piqa`` (issue #25): do objectives whose scores a second sample reproduces carry to held-out questions?

    python benchmarks/piqa_anchor.py --objective answer [--tokens 4096]   # -> benchmarks/results/piqa_anchor.json

- ``answer``: the correct option's tokens only (the answer objective on PIQA's right answers);
- ``anchored``: ``margin + mean CE(correct options)``.

``benchmarks/piqa_score_noise.py`` found the margin's scores the least reproducible between two
samples of PIQA: the margin is a difference of two options' cross-entropies, so what a removal does
to both cancels and a small, noisy residual ranks the structures. Adding the correct options' own
cross-entropy keeps the margin's direction and anchors it with the answer's likelihood, whose scores
a second sample reproduces. Same settings as the table's margin cells (SmolLM2-135M, 30%, 3 steps,
PIQA dev 1-500 at the token budget, GISP's default scoring), through the Python API (the objective
is a user loss); accuracy on PIQA dev 501-1000 with ``gisp eval``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, SHARED, environment, run_measured, write_json  # noqa: E402
from piqa_score_noise import anchored_margin, correct_answer_batches  # noqa: E402

MODEL = "smollm2-135m"
CALIB = f"piqa:{SHARED}/piqa/dev.jsonl[:500]"
HELD_OUT = f"piqa:{SHARED}/piqa/dev.jsonl[500:1000]"


def prune(objective: str, tokens: int, out: Path) -> None:
    import gisp
    from gisp.batches import build_batches, read_source
    from gisp.config import PruneConfig
    from gisp.models import load

    config = PruneConfig(model=MODEL, data=CALIB, objective="margin", sparsity=0.3, steps=3, max_tokens=tokens, seq_len=256)
    _, tokenizer = load(MODEL)
    examples = read_source(config)
    if objective == "answer":
        from gisp.objectives import answer_loss

        gisp.prune(config, out=out, objective=answer_loss, batches=correct_answer_batches(config, examples, tokenizer))
    else:
        gisp.prune(config, out=out, objective=anchored_margin, batches=build_batches(config, examples, tokenizer))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", choices=["answer", "anchored"], default="answer")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--work", type=Path, default=Path("runs/piqa-anchor"))
    args = parser.parse_args()
    key = f"{args.objective}-{args.tokens // 1024}k"
    out = args.work / key
    if not (out / "run.json").is_file() or json.loads((out / "run.json").read_text())["completed_steps"] < 3:
        prune(args.objective, args.tokens, out)
    record = json.loads((out / "run.json").read_text())
    cmd = [str(Path(sys.executable).with_name("gisp")), "eval", str(out), "--levels", "0.3", "--task", "mc", "--data",
           HELD_OUT, "--batch-size", "16", "--no-dense", "--json", "--out", str(out / "eval-mc")]
    proc, seconds, _ = run_measured(cmd)
    row = json.loads(proc.stdout.strip().splitlines()[-1])["rows"][0]
    path = RESULTS / "piqa_anchor.json"
    results = json.loads(path.read_text()) if path.is_file() else {"cells": {}}
    results["cells"][key] = {
        "acc": row.get("acc"), "acc_norm": row.get("acc_norm"), "sparsity": row.get("sparsity"),
        "heads_removed": record["steps"][-1]["heads_removed"], "calibration_loss": record["steps"][-1].get("loss"),
        "calibration_tokens": record.get("calibration", {}).get("tokens"),
        "prune_seconds": sum(s.get("seconds") or 0 for s in record["steps"]), "eval_seconds": round(seconds, 1),
        "command": " ".join(["python", "benchmarks/piqa_anchor.py", *sys.argv[1:]]),
    }
    results["environment"] = environment()
    results["protocol"] = __doc__.split("\n\n", 2)[2].strip()
    write_json(path, results)
    print(json.dumps(results["cells"], indent=2))


if __name__ == "__main__":
    main()

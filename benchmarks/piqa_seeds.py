"""PIQA at 30% with 4K calibration tokens: how much of a calibration's held-out accuracy is the draw of
calibration questions, and how much the calibration itself? (issue #25, must-show 5)

    python benchmarks/piqa_seeds.py            # resumable; about 45 minutes a seed alone on 2 CPU cores
    python benchmarks/piqa_seeds.py --tokens 16384 --seeds 0   # the 16K budget (cells NAME-16k-sS)
    python benchmarks/piqa_seeds.py --report   # rewrite the table from the results

A 4,096-token margin budget holds about 56 PIQA questions, and two such samples rank channels with a
Spearman correlation of 0.56 (``piqa_score_noise.json``): the quality benchmark's single cells (one
draw each) cannot say whether margin calibration beats LM calibration and FLAP. Here each calibration
prunes SmolLM2-135M once per seed (``--seed`` draws other questions, or other WikiText-2 windows),
and every 30% model is scored on the same held-out questions (PIQA dev 501-1000) with ``--records``,
so two calibrations compare question by question within a seed (paired standard error) and the seeds
show how far one calibration moves between draws.

Calibrations (the commands a user types; GISP 3 steps of 10%):
- ``margin``: ``--objective margin`` on PIQA dev 1-500, 4,096 tokens (gisp's default scoring for it),
- ``lm``: WikiText-2 articles 1-31, 32 windows of 128 tokens (4,096 tokens),
- ``flap``: FLAP on the margin run's PIQA tokens,
- ``margin-search-all``: ``margin`` with ``--search-every 1``: the head/channel exchange rate chosen by
  the margin over all calibration questions instead of every fourth batch (8 questions each), i.e.
  about 16 of the 56 questions,
- ``margin-reference``: ``margin`` scored as the paper's reference code scores (``--taylor-weights all
  --normalize reference``: first-order ``|W * g|`` of q/gate/up rows and o/down columns, the reference
  divisors, no compensation, no rate search): the scoring issue #25 measured ahead on its own questions.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from common import RESULTS, environment, write_json
from quality import LM_CALIB, PIQA_CALIB, PIQA_EVAL, REFERENCE_SCORING, Runner

from gisp.evaluation.stats import paired_stderr
from gisp.report import markdown_table

MODEL = "smollm2-135m"
NAME = "piqa_seeds"
LEVEL = 0.3
TOKENS = 4096  # the budget in question; BUDGETS adds the 16K
BUDGETS = (TOKENS, 16384)
SEEDS = (0, 1, 2)


def calibrations(tokens: int) -> dict[str, list[str]]:
    """Each calibration's ``gisp prune`` flags at a budget of ``tokens`` calibration tokens."""
    margin = ["--data", PIQA_CALIB, "--objective", "margin", "--max-tokens", str(tokens), "--seq-len", "256"]
    return {
        "margin": ["--steps", "3", *margin],
        "lm": ["--steps", "3", "--data", LM_CALIB, "--samples", str(tokens // 128), "--seq-len", "128"],
        "flap": ["--method", "flap", *margin],
        "margin-search-all": ["--steps", "3", *margin, "--search-every", "1"],
        "margin-reference": ["--steps", "3", *REFERENCE_SCORING, *margin],
    }


CALIBRATIONS = calibrations(TOKENS)


def cell_key(name: str, seed: int, tokens: int = TOKENS) -> str:
    """``margin-s0`` at 4K (the names measured first), ``margin-16k-s0`` at another budget."""
    return f"{name}-s{seed}" if tokens == TOKENS else f"{name}-{tokens // 1024}k-s{seed}"



PAIRS = [("margin", "lm"), ("margin", "flap"),  # compared question by question, within a seed
         ("margin-search-all", "margin"), ("margin-search-all", "lm"), ("margin-search-all", "flap"),
         ("margin-reference", "margin"), ("margin-reference", "lm"), ("margin-reference", "flap")]
EVAL = ["--task", "mc", "--data", PIQA_EVAL, "--batch-size", "16"]
OUT = RESULTS / NAME
WORK = Path("runs") / NAME


def load() -> dict:
    path = RESULTS / f"{NAME}.json"
    return json.loads(path.read_text()) if path.is_file() else {"cells": {}}


def save(results: dict) -> None:
    results["environment"] = environment()
    results["protocol"] = __doc__.split("Calibrations")[0].strip()
    write_json(RESULTS / f"{NAME}.json", results)


def records_path(cell: str) -> Path:
    return OUT / f"{cell}.jsonl"


def read_records(cell: str) -> list[dict]:
    return [json.loads(line) for line in records_path(cell).read_text().splitlines() if line.strip()]


def measure(runner: Runner, results: dict, name: str, seed: int, tokens: int = TOKENS) -> None:
    """Prune (an interrupted GISP run resumes after its last saved step) and evaluate one calibration
    at one seed and budget, once."""
    cell = cell_key(name, seed, tokens)
    if cell in results["cells"]:
        return
    out = WORK / cell
    prune = ["gisp", "prune", "--model", MODEL, "--sparsity", str(LEVEL), *calibrations(tokens)[name], "--seed", str(seed),
             "--out", str(out), "--quiet"]
    if cell not in results.setdefault("runs", {}):
        _, seconds, rss = runner.run(prune)
        results["runs"][cell] = {"command": " ".join(prune), "prune_seconds": seconds, "prune_peak_mb": rss,
                                 "git_commit": environment()["git_commit"]}
        save(results)
    OUT.mkdir(parents=True, exist_ok=True)
    stdout, seconds, _ = runner.run(["gisp", "eval", str(out), "--levels", str(LEVEL), "--no-dense", *EVAL,
                                     "--records", str(records_path(cell)), "--json"])
    row = json.loads(stdout.strip().splitlines()[-1])["rows"][0]
    records_path(f"{cell}-{LEVEL:g}").replace(records_path(cell))  # eval --levels names a level's file NAME-0.3
    results["cells"][cell] = _metrics(row) | {"calibration": name, "seed": seed, "tokens": tokens, "sparsity": row["sparsity"],
                                              "eval_seconds": seconds, "git_commit": environment()["git_commit"]}
    save(results)


def measure_dense(runner: Runner, results: dict) -> None:
    if "dense" in results["cells"]:
        return
    OUT.mkdir(parents=True, exist_ok=True)
    stdout, seconds, _ = runner.run(["gisp", "eval", MODEL, *EVAL, "--records", str(records_path("dense")), "--json"])
    results["cells"]["dense"] = _metrics(json.loads(stdout.strip().splitlines()[-1])) | {"eval_seconds": seconds}
    save(results)


def _metrics(row: dict) -> dict:
    return {k: row[k] for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "questions")}


def paired(a: list[dict], b: list[dict], key: str = "pick") -> tuple[float, float]:
    """Accuracy difference a - b on the same questions and its paired standard error."""
    diffs = [int(x[key] == x["label"]) - int(y[key] == y["label"]) for x, y in zip(a, b, strict=True)]
    only_a, only_b = diffs.count(1), diffs.count(-1)
    return (only_a - only_b) / len(diffs), paired_stderr(only_a, only_b, len(diffs))


def pooled(pairs: list[tuple[list[dict], list[dict]]], key: str = "pick") -> tuple[float, float]:
    """Accuracy difference a - b averaged over several seeds' pairs of records on the same questions,
    and its standard error with the question as the unit: each question's difference is first
    averaged over the seeds, because the seeds share the held-out questions (their per-seed errors
    are correlated, so combining per-seed standard errors as independent would understate it). What
    the calibration draw adds beyond that shows in the per-seed rows' spread."""
    per_question = [sum(int(x[key] == x["label"]) - int(y[key] == y["label"]) for x, y in question) / len(pairs)
                    for question in zip(*(zip(a, b, strict=True) for a, b in pairs), strict=True)]
    n = len(per_question)
    mean = sum(per_question) / n
    var = sum((d - mean) ** 2 for d in per_question) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def report(results: dict) -> None:
    cells = results["cells"]
    rows, pairs = [], []
    for tokens in BUDGETS:
        tag = "" if tokens == TOKENS else f" ({tokens // 1024}K)"
        for name in CALIBRATIONS:
            mine = [cells[k] for k in (cell_key(name, s, tokens) for s in SEEDS) if k in cells]
            if not mine:
                continue
            accs = [c["acc"] for c in mine]
            norms = [c["acc_norm"] for c in mine]
            spread = lambda v: f"{min(v):.3f}-{max(v):.3f}" if len(v) > 1 else "-"
            rows.append([name + tag, str(len(mine)), " ".join(f"{a:.3f}" for a in accs), f"{sum(accs) / len(accs):.3f}",
                         spread(accs), " ".join(f"{a:.3f}" for a in norms), f"{sum(norms) / len(norms):.3f}"])
        for mine, other in PAIRS:
            both = []
            for seed in SEEDS:
                a, b = cell_key(mine, seed, tokens), cell_key(other, seed, tokens)
                if a in cells and b in cells:
                    both.append((read_records(a), read_records(b)))
                    d, se = paired(*both[-1])
                    dn, sen = paired(*both[-1], "pick_norm")
                    pairs.append([f"{mine} - {other}{tag}", str(seed), f"{d:+.3f}", f"{se:.3f}", f"{dn:+.3f}", f"{sen:.3f}"])
            if len(both) > 1:  # the seeds together, question by question
                (d, se), (dn, sen) = pooled(both), pooled(both, "pick_norm")
                pairs.append([f"**{mine} - {other}{tag}**", f"{len(both)} pooled", f"**{d:+.3f}**", f"{se:.3f}",
                              f"**{dn:+.3f}**", f"{sen:.3f}"])
    head = ["calibration", "seeds", "acc per seed", "mean acc", "range", "acc_norm per seed", "mean acc_norm"]
    seeds = sorted({c["seed"] for c in cells.values() if "seed" in c})
    text = (f"# PIQA at {int(LEVEL * 100)}%, {TOKENS:,} calibration tokens unless marked, seeds measured: "
            f"{', '.join(map(str, seeds))} ({MODEL}, held-out PIQA dev 501-1000)\n\n" + markdown_table(head, rows) + "\n\n"
            "## Task calibrations against the others, question by question (same seed)\n\n"
            "A pooled row averages each question's difference over the seeds measured for both (the seeds share "
            "the held-out questions, so its standard error takes the question as the unit; the calibration "
            "draw's own variation shows in the per-seed rows).\n\n"
            + markdown_table(["comparison", "seed", "acc difference", "paired stderr", "acc_norm difference",
                              "paired stderr"], pairs) + "\n")
    (RESULTS / f"{NAME}.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--only", nargs="+", choices=list(CALIBRATIONS), help="measure these calibrations only")
    parser.add_argument("--seeds", nargs="+", type=int, choices=SEEDS, help="at these seeds only")
    parser.add_argument("--tokens", type=int, choices=BUDGETS, default=TOKENS, help="calibration token budget")
    args = parser.parse_args()
    results = load()
    if not args.report:
        runner = Runner(WORK)
        measure_dense(runner, results)
        for seed in args.seeds or SEEDS:  # every calibration at a seed before the next: a partial run still compares
            for name in args.only or CALIBRATIONS:
                measure(runner, results, name, seed, args.tokens)
                report(results)
    report(results)  # --report rewrites the table only: the results file keeps its measurement's stamp


if __name__ == "__main__":
    main()

"""Does the rate search pick the margin's exchange rate on too few questions? (issue #25, must-show 5)

    python benchmarks/margin_search.py            # resumable per seed; progress on stderr
    python benchmarks/margin_search.py --report   # rewrite the table only

``--normalize search`` (GISP's default) chooses, at every step, the head/channel exchange rate whose
look-ahead to the final sparsity gives the lowest calibration loss, measured on every fourth
calibration batch (``--search-every 4``). Under ``--objective margin`` at 4,096 tokens the calibration
holds about 56 PIQA questions in 7 batches of 8, so the rate is chosen by the margin over 16 questions.

This script takes the first step of the piqa_seeds margin run at each seed (SmolLM2-135M, PIQA dev 1-500,
4,096 margin tokens, 30% in 3 steps: the same batches and default scores ``gisp prune`` computes on the
dense model), builds every exchange rate's look-ahead to 30% (bias-compensated, as the search does), and
measures each distinct look-ahead on:

- the margin over every fourth batch (what the default search compares),
- the margin over all calibration batches (``--search-every 1``),
- held-out PIQA dev 501-1000: accuracy and acc_norm (gisp's ``mc`` evaluation).

Question: does the rate each criterion picks differ, and which is better on held-out questions?
Output: ``benchmarks/results/margin_search.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

from common import RESULTS, environment, write_json
from quality import PIQA_CALIB, PIQA_EVAL
from tqdm import tqdm

from gisp import models
from gisp.adapters import adapter_for
from gisp.balance import candidates, preferred_rate
from gisp.batches import batch_size, build_batches, read_source
from gisp.config import PruneConfig
from gisp.evaluation.choice import multiple_choice
from gisp.examples import choice_examples
from gisp.gradients import mean_objective
from gisp.masking import masked_view
from gisp.methods import MethodInputs, method_for
from gisp.objectives import margin_loss
from gisp.ranking import SEARCH, normalized, search_batches
from gisp.report import markdown_table
from gisp.structures import Masks, dense_layer_params, layer_shape, protected_layers

MODEL = "smollm2-135m"
LEVEL, STEPS, TOKENS, SEEDS = 0.3, 3, 4096, (0, 1)
OUT = RESULTS / "margin_search.json"


def config_for(seed: int) -> PruneConfig:
    """The piqa_seeds margin cell's settings (``benchmarks/piqa_seeds.py``)."""
    return PruneConfig(model=MODEL, data=PIQA_CALIB, objective="margin", sparsity=LEVEL, steps=STEPS,
                       max_tokens=TOKENS, seq_len=256, seed=seed)


def both_margins(model, batches: list[dict]) -> tuple[float, float]:
    """The margin over every fourth batch (the default search's subset) and over all batches, each
    batch forwarded once: the whole is the subset's and the rest's means weighted by sequences."""
    subset = search_batches(batches, 4)
    rest = [b for b in batches if not any(b is s for s in subset)]
    n_subset, n_rest = (sum(batch_size(b) for b in part) for part in (subset, rest))
    m_subset = mean_objective(model, subset, margin_loss)
    m_rest = mean_objective(model, rest, margin_loss) if rest else 0.0
    return m_subset, (m_subset * n_subset + m_rest * n_rest) / (n_subset + n_rest)


def measure_seed(seed: int, model, tokenizer, heldout_examples, cell: dict, saved) -> None:
    """Every distinct look-ahead of the first step at ``seed``, measured three ways, into ``cell``:
    both calibration margins of every look-ahead first, then held-out accuracy, the two criteria's
    picks before the rest (``saved()`` after each; a restart recomputes the scores and goes on)."""
    config = config_for(seed)
    batches = build_batches(config, read_source(config), tokenizer)
    adapter = adapter_for(model.config)
    shape = layer_shape(model, adapter, compensate=True)
    geo = shape.geometry
    importance = method_for("gisp").build(MethodInputs(batches, margin_loss, seed, True, config.taylor_weights,
                                                       bool(config.compensate), config.saliency))
    start = time.perf_counter()
    scores = importance(model, adapter)
    cell.setdefault("score_seconds", round(time.perf_counter() - start, 1))
    masks = Masks.dense(geo)
    protect = protected_layers(geo.num_layers, config.protect_first, config.protect_last)
    heads, channels = normalized(scores, masks, geo, SEARCH)
    final = LEVEL * dense_layer_params(shape) * geo.num_layers
    options = candidates(heads, channels, masks, protect, shape, 0, final)
    cell.update({"seed": seed, "batches": len(batches), "calibration_questions": sum(int(b["correct"].sum()) for b in batches),
                 "every4_questions": sum(int(b["correct"].sum()) for b in search_batches(batches, 4)),
                 "environment": environment()})
    rows = cell.setdefault("look_aheads", [])
    if len(rows) != len(options):
        rows.clear()
        for option in tqdm(options, desc=f"seed {seed} calibration margins"):
            with masked_view(model, adapter, option.masks, scores.input_means) as view:
                every4, all_batches = both_margins(view, batches)
                rows.append({"rates": option.rates, "rate": preferred_rate(option.rates), "heads_removed": option.heads,
                             "margin_every4": every4, "margin_all": all_batches})
        saved()
    picks = {id(min(rows, key=lambda r: r[key])) for key in ("margin_every4", "margin_all")}
    order = sorted(range(len(rows)), key=lambda i: (id(rows[i]) not in picks, abs(math.log2(rows[i]["rate"]))))
    for i in tqdm(order, desc=f"seed {seed} held-out accuracy"):
        if "heldout_acc" in rows[i]:
            continue
        with masked_view(model, adapter, options[i].masks, scores.input_means) as view:
            mc = multiple_choice(view, tokenizer, heldout_examples, batch_size=16, progress=False)
        rows[i].update({"heldout_acc": mc.acc, "heldout_acc_norm": mc.acc_norm})
        saved()


def run(results: dict) -> None:
    model, tokenizer = models.load(MODEL)
    examples = choice_examples(PIQA_EVAL)
    for seed in SEEDS:
        cell = results["seeds"].setdefault(str(seed), {})
        if cell.get("look_aheads") and all("heldout_acc" in r for r in cell["look_aheads"]):
            continue

        def saved() -> None:
            save(results)
            report(results)
        measure_seed(seed, model, tokenizer, examples, cell, saved)


def save(results: dict) -> None:
    write_json(OUT, results | {"command": "python benchmarks/margin_search.py", "protocol": __doc__.split("Output:")[0].strip()})


def report(results: dict) -> None:
    """One row per look-ahead; marks each criterion's pick."""
    rows = []
    for seed, cell in sorted(results["seeds"].items()):
        looks = cell.get("look_aheads", [])
        if not looks:
            continue
        picks = {key: min(looks, key=lambda r: r[key]) for key in ("margin_every4", "margin_all")}
        best = max((r["heldout_acc"] for r in looks if "heldout_acc" in r), default=None)
        for r in sorted(looks, key=lambda r: r["rate"]):
            mark = [name for name, key in (("every 4th", "margin_every4"), ("all", "margin_all")) if picks[key] is r]
            rows.append([seed, f"{r['rate']:g}", r["heads_removed"], f"{r['margin_every4']:.4f}", f"{r['margin_all']:.4f}",
                         f"{r['heldout_acc']:.3f}" + (" (best)" if r["heldout_acc"] == best else "") if "heldout_acc" in r else "-",
                         f"{r['heldout_acc_norm']:.3f}" if "heldout_acc" in r else "-", ", ".join(mark) or "-"])
    head = ["seed", "rate", "heads removed", "margin, every 4th batch", "margin, all batches",
            "held-out acc", "held-out acc_norm", "picked by"]
    text = (f"# The first step's look-aheads to {LEVEL:.0%}, margin calibration ({MODEL}, {TOKENS:,} PIQA tokens)\n\n"
            "Lower margin is better; held-out: PIQA dev 501-1000.\n\n" + markdown_table(head, rows) + "\n")
    OUT.with_suffix(".md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.is_file() else {"seeds": {}}
    if not args.report:
        run(results)
    report(results)


if __name__ == "__main__":
    main()

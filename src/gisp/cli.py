"""The ``gisp`` command line, built on the same configs as the Python API."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import MISSING, asdict, fields

from gisp.config import PruneConfig
from gisp.errors import GispError

_HELP = {
    "model": "Hugging Face id, local directory, .gguf file, or alias smollm2-135m / qwen2.5-0.5b",
    "data": "lm: text:PATH, gsm8k[:PATH], wikitext2[:SPLIT], wikitext2:PATH (articles); answer: gsm8k[:PATH], jsonl:PATH; "
            "margin: piqa:PATH, mc:PATH; any spec takes a slice, e.g. gsm8k[:1000]",
    "sparsity": "final parameter sparsity of the decoder layers, in (0, 1)",
    "steps": "pruning steps (scores are recomputed on the pruned model at each; default: the method's, see gisp methods)",
    "objective": "lm (every token), answer (answer tokens of prompt/answer data), margin (multiple choice)",
    "samples": "calibration windows (lm), examples (answer) or questions (margin)",
    "seq_len": "tokens per calibration window (lm); longest sequence (answer, margin)",
    "max_tokens": "calibration token budget; replaces --samples when given (default: unset, --samples counts)",
    "schedule": "how the sparsity grows over the steps: linear, or cosine ((1 - cos(pi t/T))/2 of the final)",
    "batch_size": "sequences per micro-batch of the gradient / statistics passes (memory only: scores are the "
                  "calibration-set mean either way)",
    "seed": "seed of the calibration windows, and of methods that draw at random",
    "dtype": "weights' dtype while scoring: float32, bfloat16 or float16 (gradients, scores and moments stay float32)",
    "prompt_field": "prompt field of jsonl:PATH answer data", "answer_field": "answer field of jsonl:PATH answer data",
    "chat_template": "answer data: render each prompt as a user turn of the tokenizer's chat template and the answer "
                     "as the assistant's reply, as a chat model is prompted at deployment (gsm8k: the question with "
                     "the gsm8k task's chat instruction, the solution ending in \\boxed{N})",
    "method": "pruning method, registered by name (gisp methods lists every one with its defaults)",
    "normalize": "how head and channel scores are made comparable in a global ranking "
                 "(search, params, reference, zscore, none; default: the method's)",
    "search_every": "--normalize search: measure the candidate rates' losses on every K-th calibration batch "
                    "(default: 4)",
    "taylor_weights": "Taylor methods: which weights a structure's score sums, all (q rows + o columns of a head, "
                      "gate/up rows + down column of a channel) or output (o columns / down column)",
    "compensate": "replace removed o_proj/down_proj inputs by their calibration mean, kept as an output bias "
                  "(default: the method's; a Taylor score then measures the compensated removal; needs --taylor-weights output)",
    "saliency": "Taylor methods with --taylor-weights output: first-order (|W*g| of the mean gradient) or fisher "
                "(per-token squared first-order effects, summed); default: the method's",
    "scope": "ranking scope: global (one ranking over all layers), layer (same fraction per layer), "
             "depth (whole layers); default: the method's",
    "round_to": "keep every pruned layer's MLP channels and attention width (heads x head_dim) at multiples of N "
                "(selection, not padding); "
                "levels then export at whole steps",
    "gradient_checkpointing": "recompute each layer's activations in the backward pass instead of keeping them "
                              "(less memory, ~1 more forward; same scores)",
    "loss_chunk": "take next-token cross-entropy this many positions at a time, recomputing their logits in the "
                  "backward pass (0: all at once); saves the [batch, seq, vocab] logits",
    "compact_every": "score a copy of the model with the removed heads and channels sliced out, rebuilt every K "
                     "steps (0: never): later steps run faster, the same removals up to float rounding of "
                     "near-ties, memory for the copy",
    "fsdp": "under torchrun: shard every parameter over the processes (FSDP2), each holding 1/N of the model; "
            "methods that take gradients only (gisp methods marks them)",
    "protect_first": "fraction of first layers never pruned", "protect_last": "number of last layers never pruned",
    "device": "where the model and every per-step tensor live: cpu, cuda, cuda:N, mps or auto (CUDA when available; under "
              "torchrun each rank's GPU from LOCAL_RANK, NCCL)",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`PruneConfig` field, same names and defaults."""
    _add_dataclass_flags(parser, PruneConfig, _HELP)


_RECOVER_HELP = {
    "model": "export directory to fine-tune",
    "data": "training data, the same specs as prune --data (never the evaluation half)",
    "out": "new or empty directory for the recovered export (checkpoints go to OUT.ckpt; rerun to resume)",
    "method": "lora (the data's objective) or distill (KL to the teacher's next-token distribution)",
    "teacher": "distill: the teacher model (default: the export's base model)",
    "objective": "lm, answer or margin (as for prune)",
    "max_tokens": "training tokens (the data is cycled)",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate (linear warm-up, then cosine decay to a tenth)",
    "warmup": "warm-up, as a fraction of the steps",
    "lora_rank": "LoRA rank", "lora_alpha": "LoRA alpha",
    "lora_targets": "all-linear, or comma-separated module names (e.g. q_proj,v_proj)",
    "kd_weight": "distill: weight of the KL term", "lm_weight": "distill: weight of the objective mixed in",
    "chat_template": "answer data rendered with the chat template (as for prune)",
    "temperature": "distill: softmax temperature", "checkpoint_every": "optimizer steps between checkpoints",
}


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, helps: dict[str, str]) -> None:
    """One flag per field of the config dataclass ``cls``, same names and defaults
    (``bool | None`` fields: ``--x`` / ``--no-x``, ``None`` meaning the method's default)."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
        text = helps.get(f.name, "")
        if f.default is MISSING:  # required fields
            parser.add_argument(flag, dest=f.name, type=kind, required=True, help=text or None)
            continue
        shown = "the method's" if f.default is None else ("on" if f.default else "off") if str(f.type) == "bool" else f.default
        text = text if "default:" in text else f"{text} (default: {shown})".strip()  # one default each
        if str(f.type) in ("bool", "bool | None"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default, help=text)


def cmd_recover(args: argparse.Namespace) -> None:
    import gisp
    from gisp.config import RecoverConfig

    config = RecoverConfig.from_dict({f.name: getattr(args, f.name) for f in fields(RecoverConfig)})
    result = gisp.recover(config)
    print(f"recovered {config.model} with {result.method}: {result.steps} steps, {result.tokens} tokens, "
          f"{result.seconds:.0f} s, loss {result.first_loss:.4f} -> {result.last_loss:.4f}; "
          f"{result.parameters} parameters, written to {result.out}")


def cmd_plan(args: argparse.Namespace) -> None:
    from gisp import models
    from gisp.plan import plan_report

    if args.memory is not None and not 0 < args.memory < float("inf"):
        raise GispError(f"--memory must be a positive number of GiB, got {args.memory:g}")
    budget = int(args.memory * 2**30) if args.memory else None
    report = plan_report(models.load_config(args.model), args.samples, args.seq_len, args.batch_size, args.nproc,
                         args.dtype, args.saliency, budget, args.gradient_checkpointing, args.loss_chunk,
                         args.compact_every, args.taylor_weights, args.fsdp, device=args.device, tflops=args.tflops)
    if args.json:
        print(json.dumps(report))
        return
    print("\n".join(plan_lines(args, report)))


def plan_lines(args: argparse.Namespace, report: dict) -> list[str]:
    """``gisp plan``'s text: the parts of the peak, whether it fits, the flags that make it fit, and
    the estimated time of one step."""
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    parts = report["bytes"]
    where = "one GPU's memory" if report["device"] == "cuda" else "host memory"
    lines = [f"{args.model}: {report['model_type']}, {report['parameters']:,} parameters, {args.dtype}, "
             f"{args.saliency} scores, on {report['device']}"]
    sharded = ", parameters split over them (--fsdp)" if report["fsdp"] else ""
    lines.append(f"per rank ({args.nproc} rank{'s' if args.nproc > 1 else ''}{sharded}): {report['samples_per_rank']} "
                 f"sequences in {report['micro_batches_per_rank']} micro-batches of {args.batch_size} x {args.seq_len} "
                 f"tokens; peak of {where}:")
    for key in ("weights", "gradients", "activations", "logits", "workspace", "scores", "runtime", "compact_copy",
                "slack", "total"):
        if key in ("compact_copy", "slack", "workspace") and not parts[key]:
            continue
        label = "cuda context" if key == "runtime" and report["device"] == "cuda" else key
        lines.append(f"  {label:<12} {gib(parts[key])}")
    best, flags = report["recommended_batch_size"], report["flags_to_fit"]
    lines.append(f"budget {gib(report['budget'])}: {'fits' if report['fits'] else 'does NOT fit'}; largest --batch-size "
                 f"that fits with these flags: {best if best else 'none (one sequence does not fit)'}")
    if flags is None:
        hint = " or use more ranks (--nproc)" if args.fsdp else \
            " or split the parameters with torchrun --nproc-per-node N ... --fsdp (plan it with --nproc N --fsdp)"
        lines.append(f"no memory flag makes --batch-size {args.batch_size} fit: lower it, shorten --seq-len{hint}")
    else:
        lines.append(f"--batch-size {args.batch_size} fits with: {' '.join(flags) if flags else 'no extra flag'}")
    seconds, rate = report["step_seconds"], report["assumed_tflops"]
    assumed = "given" if report["tflops_given"] else "assumed; --tflops to change"
    lines.append(f"one step: ~{seconds['gradient_pass']:.0f} s gradient pass + up to ~{seconds['rate_search']:.0f} s rate search "
                 f"({report['step_flops']['gradient_pass'] / 1e15:.1f} + {report['step_flops']['rate_search'] / 1e15:.1f} "
                 f"PFLOP per rank at {rate:g} TFLOP/s, {assumed})")
    return lines


def cmd_prune(args: argparse.Namespace) -> None:
    import gisp
    from gisp.report import info_text

    from gisp import distributed

    config = PruneConfig.from_dict({f.name: getattr(args, f.name) for f in fields(PruneConfig)})
    try:
        traj = gisp.prune(config, out=args.out)
        main = distributed.is_main()  # before leaving the group, after which every process is rank 0
    finally:
        distributed.close()
    if not main:
        return
    if not args.quiet:  # the summary (under torchrun: once, from rank 0)
        print(info_text(traj) + "\n")
    print(f"run saved to {args.out}; export a level with: gisp export {shlex.quote(str(args.out))} --sparsity X --out DIR")


def cmd_export(args: argparse.Namespace) -> None:
    from gisp import models
    from gisp.api import export
    from gisp.export import check_out_dir
    from gisp.trajectory import Trajectory

    traj = Trajectory.load(args.run_dir)
    if args.format == "hf":
        check_out_dir(args.out, args.force)
    model = tokenizer = None
    if args.model:
        model, tokenizer = models.load(args.model, traj.config.get("dtype", "float32"))
    info = export(traj, args.sparsity, args.out, model=model, tokenizer=tokenizer, format=args.format,
                  outtype=args.outtype, force=args.force)
    kind = f"GGUF ({args.outtype})" if args.format == "gguf" else f"{'with' if info.remote_code else 'no'} remote code"
    print(f"exported step {info.step} level: decoder sparsity {info.sparsity:.4f} (requested {args.sparsity:g}), "
          f"{info.parameters:,} parameters ({info.dense_parameters:,} dense), KV cache "
          f"{2 * info.kv_values_per_token / 1024:.1f} KiB per token at 16 bits ({2 * info.dense_kv_values_per_token / 1024:.1f} "
          f"dense), {kind} -> {info.out}")


def cmd_eval(args: argparse.Namespace) -> None:
    from pathlib import Path

    from gisp.evaluation.levels import evaluate_levels, parse_levels
    from gisp.evaluation.tasks import PRIMARY, EvalOptions, evaluate_spec, summary_line
    from gisp.report import levels_table, write_levels
    from gisp.trajectory import RUN_FILE

    opts = EvalOptions(
        task=args.task, data=args.data, seq_len=args.seq_len, batch_size=args.batch_size,
        limit=args.limit if args.limit is not None else args.limit_windows, shots=args.shots,
        prompt_format=args.prompt_format, records=args.records, max_new_tokens=args.max_new_tokens,
        prompt_field=args.prompt_field, answer_field=args.answer_field,
        speed_batch=args.speed_batch, new_tokens=args.new_tokens, repeats=args.repeats, dtype=args.dtype,
        device=args.device,
    )
    is_run = (Path(args.model) / RUN_FILE).is_file()
    if is_run or args.levels:
        if not is_run:
            raise GispError(f"--levels needs a run directory; {args.model} holds no {RUN_FILE}")
        if not args.levels:
            raise GispError(f"{args.model} is a run directory: pass --levels, or export a level and evaluate that")
        rows = evaluate_levels(args.model, parse_levels(args.levels), opts, dense=not args.no_dense)
        write_levels(rows, opts, Path(args.out) if args.out else Path(args.model) / f"eval-{opts.task}")
        print(json.dumps({"task": args.task, "data": args.data, "rows": rows}) if args.json else levels_table(rows, args.task))
        return
    results = [("model", args.model, evaluate_spec(args.model, opts))]
    if args.baseline:
        results.insert(0, ("baseline", args.baseline, evaluate_spec(args.baseline, opts)))
    for role, name, result in results:
        if args.json:
            print(json.dumps({"model": name, "role": role, "task": args.task, "data": args.data} | result))
        else:
            print(f"{role} {name}: {summary_line(args.task, result)}" + (f" on {args.data}" if args.data else ""))
    if args.baseline and not args.json:
        metric, _ = PRIMARY[args.task]
        keys = [metric] + (["prefill_tokens_per_s", "peak_memory_mb", "parameters"] if args.task == "speed" else [])
        base, ours = results[0][2], results[1][2]
        print("ratio model/baseline: " + ", ".join(f"{k} {ours[k] / base[k]:.3f}x" for k in keys if base[k]))


def cmd_methods(args: argparse.Namespace) -> None:
    """Every registered method (plugins included) with the defaults ``gisp prune --method NAME`` takes."""
    from gisp.methods import method_for, method_names
    from gisp.report import table

    rows = []
    for name in method_names():
        m = method_for(name)
        rows.append({"method": name, "scope": m.scope, "steps": m.steps, "normalize": m.normalize,
                     "compensate": m.compensate, "gradients": m.uses_gradients, "taylor_weights": m.taylor_weights,
                     "saliency": m.saliency, "summary": m.summary})
    if args.json:
        print("\n".join(json.dumps(r) for r in rows))
        return
    print(table(list(rows[0]), [[("-" if v is None else v) for v in r.values()] for r in rows]))


def cmd_info(args: argparse.Namespace) -> None:
    from gisp.report import info_text
    from gisp.trajectory import Trajectory

    traj = Trajectory.load(args.run_dir)
    if args.report:
        from gisp.report import write_run_report
        print(f"wrote {write_run_report(traj, args.report)}")
        return
    if args.json:
        summary = {"config": traj.config, "model": traj.model, "completed_steps": traj.completed_steps,
                   "calibration": traj.calibration, "steps": [asdict(r) for r in traj.steps]}
        print(json.dumps(summary))
    else:
        print(info_text(traj))


def cmd_lm_eval_tasks(args: argparse.Namespace) -> None:
    from gisp.lmeval import write_tasks

    for path in write_tasks(args.out_dir, piqa=args.piqa, gsm8k=args.gsm8k):
        print(f"wrote {path}")
    print(f"use: lm_eval --model hf --model_args pretrained=EXPORT_DIR,trust_remote_code=True "
          f"--include_path {shlex.quote(str(args.out_dir))} --tasks {'gisp_piqa' if args.piqa else 'gisp_gsm8k_cot'}")


def cmd_convert(args: argparse.Namespace) -> None:
    from gisp import models
    from gisp.export import check_out_dir, save_dense

    if args.format == "gguf":
        from gisp.adapters import adapter_for
        from gisp.export import check_gguf_family, check_out_file, write_gguf_with_tokenizer

        out = check_out_file(args.out)
        check_gguf_family(models.load_config(args.model))
        model, tokenizer = models.load(args.model, args.dtype)
        written = write_gguf_with_tokenizer(model, adapter_for(model.config), out, args.outtype, args.model, tokenizer)
        print(f"saved {args.model} as GGUF ({written['architecture']}, {args.outtype}) in {out}")
        return
    out = check_out_dir(args.out)
    model, tokenizer = models.load(args.model, args.dtype)
    save_dense(model, tokenizer, out)
    print(f"saved {args.model} as a Hugging Face checkpoint in {out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from gisp.demo import run_demo

    run_demo(args.out)


def _recover_fields():
    """RecoverConfig without ``model`` (a positional argument of ``gisp recover``)."""
    from dataclasses import make_dataclass

    from gisp.config import RecoverConfig

    return make_dataclass("RecoverFlags", [(f.name, f.type, f) for f in fields(RecoverConfig) if f.name != "model"])


def _output_flags() -> argparse.ArgumentParser:
    """``--quiet`` and ``--log-level``, shared by every command."""
    from gisp.runtime import LOG_LEVELS

    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument("--quiet", "-q", action="store_true",
                       help="no progress bars, notes or warnings (errors only); stdout carries only the result")
    group.add_argument("--log-level", default="warning", choices=LOG_LEVELS,
                       help="stderr messages at this level and above; info adds a line per pruning step (default: warning)")
    trust = common.add_argument_group("what a checkpoint may run (both off by default)")
    trust.add_argument("--trust-remote-code", action="store_true",
                       help="let a model's own Python code (auto_map) run when it loads; gisp exports never need it")
    trust.add_argument("--allow-pickle", action="store_true",
                       help="let weights stored only as pickles (pytorch_model.bin) load, restricted to tensors")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gisp", description="Global Iterative Structured Pruning of Hugging Face LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = _output_flags()

    p = sub.add_parser("prune", parents=[common], help="run GISP and record the trajectory in a run directory")
    _add_config_flags(p)
    p.add_argument("--out", required=True, help="run directory (resumes if it holds the same run)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("plan", parents=[common], help="estimate a pruning run's memory from the model's config alone (no weights load)")
    p.add_argument("--model", required=True, help=_HELP["model"])
    p.add_argument("--samples", type=int, default=64, help="calibration sequences (default: 64)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default: 128)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch (default: 8)")
    p.add_argument("--nproc", type=int, default=1, help="ranks the calibration set is split over (default: 1)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (default: float32)")
    p.add_argument("--saliency", default="fisher", help="fisher or first-order (default: fisher)")
    p.add_argument("--memory", type=float, default=None,
                   help="budget in GiB per rank: host memory, or one GPU's with --device cuda (default: 80%% of this "
                        "machine's, or of its first GPU's)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the run will score: cpu, or cuda (GPU memory: CUDA context and allocator slack counted) "
                        "(default: cpu)")
    p.add_argument("--tflops", type=float, default=None,
                   help="sustained TFLOP/s per rank for the time estimate (default: an assumption per device and dtype)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="as prune's: keep only each layer's input")
    p.add_argument("--loss-chunk", type=int, default=0, help="as prune's: logits of this many positions at a time")
    p.add_argument("--compact-every", type=int, default=0, help="as prune's: count the compact copy of the model")
    p.add_argument("--taylor-weights", default="output",
                   help="output (o/down gradients) or all (the seven projections) (default: output)")
    p.add_argument("--fsdp", action="store_true", help="as prune's: parameters split over the --nproc ranks")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("export", parents=[common], help="write one level of a run as a smaller checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--sparsity", type=float, required=True, help="decoder parameter sparsity of the level")
    p.add_argument("--out", required=True, help="new or empty directory (hf), new file (gguf)")
    p.add_argument("--model", help="base model location if it moved since the run (must be the same model)")
    p.add_argument("--format", default="hf", help="hf (safetensors + config) or gguf (llama.cpp) (default: hf)")
    p.add_argument("--outtype", default="f32", help="gguf: f32, f16 or q8_0 (default: f32)")
    p.add_argument("--force", action="store_true", help="replace an earlier export at --out (atomically; nothing else)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("recover", parents=[common], help="fine-tune an export (LoRA or distillation) into an export of the same shapes")
    p.add_argument("model", help=_RECOVER_HELP["model"])
    _add_dataclass_flags(p, _recover_fields(), _RECOVER_HELP)
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("eval", parents=[common], help="evaluate a model, an export, or several levels of a run")
    p.add_argument("model", metavar="MODEL_OR_DIR", help="model spec, export directory, or run directory (with --levels)")
    p.add_argument("--task", default="ppl", help="ppl, answer_ppl, mc, gsm8k or speed (default: ppl)")
    p.add_argument("--data", help="ppl: text:PATH, gsm8k, wikitext2; answer_ppl: gsm8k, jsonl:PATH; "
                                  "mc: piqa:PATH, mc:PATH; gsm8k: gsm8k[:PATH] (all sliceable: piqa:P[500:1000])")
    p.add_argument("--seq-len", type=int, default=128, help="ppl window; speed prompt length (default: 128)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="first N windows / examples / questions / problems")
    p.add_argument("--limit-windows", type=int, default=None, help="ppl: same as --limit")
    p.add_argument("--shots", type=int, default=8, help="gsm8k: chain-of-thought exemplars (default: 8)")
    p.add_argument("--prompt-format", default="fewshot", choices=["fewshot", "chat"],
                   help="gsm8k: fewshot (--shots chain-of-thought exemplars) or chat (the tokenizer's chat template, "
                        "zero-shot, answer in \\boxed{}) (default: fewshot)")
    p.add_argument("--records", help="mc: JSONL of every question's option log-likelihoods and picks; "
                                     "gsm8k: JSONL of per-problem predictions, appended as batches finish; "
                                     "rerun with the same file to resume (with --levels, one file per level: NAME-0.2.jsonl, NAME-dense.jsonl)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="gsm8k: generation length (default: 256)")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--answer-field", default="answer")
    p.add_argument("--speed-batch", type=int, default=1, help="speed: batch size (default: 1)")
    p.add_argument("--new-tokens", type=int, default=32, help="speed: decoded tokens (default: 32)")
    p.add_argument("--repeats", type=int, default=5, help="speed: timed repeats, median reported (default: 5)")
    p.add_argument("--baseline", help="also evaluate this model (e.g. the dense one) and print the ratio")
    p.add_argument("--levels", help="run directory only: comma-separated sparsities, e.g. 0.1,0.2,0.3")
    p.add_argument("--out", help="--levels: where results.json/.md and the plot go (default: RUN_DIR/eval-TASK)")
    p.add_argument("--no-dense", action="store_true", help="--levels: skip the dense model's row")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON (one object per model)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", parents=[common], help="summarise a run directory")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print run.json")
    p.add_argument("--report", metavar="DIR", help="write report.md and its plots into DIR (prune rewrites RUN_DIR's "
                                                   "after every step)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("methods", parents=[common], help="list the registered pruning methods and their defaults")
    p.add_argument("--json", action="store_true", help="one JSON object per method")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("lm-eval-tasks", parents=[common], help="write lm-evaluation-harness task YAMLs for local PIQA / GSM8K files")
    p.add_argument("out_dir")
    p.add_argument("--piqa", help="PIQA JSONL (labels read from the sibling *-labels.lst)")
    p.add_argument("--gsm8k", help="GSM8K JSONL (question/answer)")
    p.set_defaults(func=cmd_lm_eval_tasks)

    p = sub.add_parser("convert", parents=[common], help="save any loadable model (e.g. a GGUF file or alias) as safetensors + config, "
                                        "or as GGUF for llama.cpp")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--format", default="hf", choices=["hf", "gguf"], help="hf or gguf (default: hf)")
    p.add_argument("--outtype", default="f32", help="gguf: f32, f16 or q8_0 (default: f32)")
    p.add_argument("--dtype", default="float32")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("demo", parents=[common], help="prune SmolLM2-135M on GSM8K and compare three nested exports")
    p.add_argument("--out", default="runs/demo", help="demo directory (resumes)")
    p.set_defaults(func=cmd_demo)
    return parser


def disk_full(exc: BaseException) -> str | None:
    """The one line for an output that ran out of disk space (an ``OSError`` ENOSPC / EDQUOT, or
    safetensors' own error for it), else ``None``. Outputs are written to temporary names and
    renamed, so nothing half-written is left, and the run directory keeps every finished step."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" ({exc.filename})" if exc.filename else ""
    elif type(exc).__name__ == "SafetensorError" and ("No space left" in str(exc) or "StorageFull" in str(exc)):
        where = " (writing a safetensors file)"
    else:
        return None
    return (f"no space left on the device{where}: free some and run the same command again (nothing half-written is "
            "kept; a run directory keeps its finished steps)")


def main(argv: list[str] | None = None) -> int:
    from gisp.runtime import (ALLOW_PICKLE_ENV, TRUST_REMOTE_CODE_ENV, command_output, configure_output,
                              return_freed_memory, scoped_environ)

    args = build_parser().parse_args(argv)
    launched_rank = int(os.environ.get("RANK", "0"))  # under torchrun: only rank 0 shows bars and notes
    return_freed_memory()  # resident memory follows live memory in long gradient passes
    # --quiet / --log-level and the loading permissions end with the command (main() may be called again)
    with command_output(), scoped_environ(TRUST_REMOTE_CODE_ENV, ALLOW_PICKLE_ENV):
        try:
            for name, allowed in ((TRUST_REMOTE_CODE_ENV, args.trust_remote_code), (ALLOW_PICKLE_ENV, args.allow_pickle)):
                if allowed:  # for this command only (and the loads it makes, in any rank)
                    os.environ[name] = "1"
            configure_output(args.log_level, args.quiet or launched_rank != 0)
            args.func(args)
        except GispError as exc:
            print(f"gisp: error: {exc}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # e.g. `gisp info RUN | head`
            sys.stderr.close()
            return 0
        except Exception as exc:  # a full disk is the machine's fault, not a bug: one line too
            full = disk_full(exc)
            if full is None:
                raise
            print(f"gisp: error: {full}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("gisp: interrupted; run the same command again to resume", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

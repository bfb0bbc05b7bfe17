"""The ``gisp`` command line, built on the same configs as the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, asdict, fields

from gisp.config import PruneConfig
from gisp.errors import GispError

_HELP = {
    "model": "Hugging Face id, local directory, .gguf file, or alias smollm2-135m / qwen2.5-0.5b",
    "data": "text:PATH, gsm8k[:PATH] or wikitext2[:SPLIT], optionally sliced: gsm8k[:1000]",
    "sparsity": "final parameter sparsity of the decoder layers, in (0, 1)",
    "steps": "pruning steps (gradients are recomputed on the pruned model at each)",
    "samples": "calibration windows", "seq_len": "tokens per calibration window",
    "normalize": "how head and channel scores are made comparable",
    "protect_first": "fraction of first layers never pruned", "protect_last": "number of last layers never pruned",
}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`PruneConfig` field, same names and defaults."""
    for f in fields(PruneConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float}.get(str(f.type), str)
        if f.default is MISSING:  # required fields
            parser.add_argument(flag, dest=f.name, type=kind, required=True, help=_HELP.get(f.name))
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=f.default,
                                help=f"{_HELP.get(f.name, '')} (default: {f.default})".strip())


def cmd_prune(args: argparse.Namespace) -> None:
    import gisp
    from gisp.report import info_text

    config = PruneConfig.from_dict({f.name: getattr(args, f.name) for f in fields(PruneConfig)})
    traj = gisp.prune(config, out=args.out)
    print(info_text(traj))
    print(f"\nrun saved to {args.out}; export a level with: gisp export {args.out} --sparsity X --out DIR")


def cmd_export(args: argparse.Namespace) -> None:
    from gisp import models
    from gisp.export import check_out_dir, export
    from gisp.trajectory import Trajectory

    traj = Trajectory.load(args.run_dir)
    check_out_dir(args.out)
    model = tokenizer = None
    if args.model:
        model, tokenizer = models.load(args.model, traj.config.get("dtype", "float32"))
    info = export(traj, args.sparsity, args.out, model=model, tokenizer=tokenizer)
    print(f"exported step {info.step} level: decoder sparsity {info.sparsity:.4f} (requested {args.sparsity:g}), "
          f"{info.parameters:,} parameters ({info.dense_parameters:,} dense), "
          f"{'with' if info.remote_code else 'no'} remote code -> {info.out}")


def cmd_eval(args: argparse.Namespace) -> None:
    from gisp import models
    from gisp.evaluate import perplexity

    if args.task != "ppl":
        raise GispError(f"unknown task {args.task!r}; available: ppl")
    model, tokenizer = models.load(args.model, args.dtype)
    result = perplexity(model, tokenizer, args.data, args.seq_len, batch_size=args.batch_size, limit_windows=args.limit_windows)
    record = {"model": args.model, "task": "ppl", "data": args.data} | asdict(result)
    if args.json:
        print(json.dumps(record))
    else:
        print(f"perplexity {result.ppl:.4f} at seq_len {result.seq_len} ({result.windows} windows, {result.tokens} predicted tokens) on {args.data}")


def cmd_info(args: argparse.Namespace) -> None:
    from gisp.report import info_text
    from gisp.trajectory import Trajectory

    traj = Trajectory.load(args.run_dir)
    if args.json:
        summary = {"config": traj.config, "model": traj.model, "completed_steps": traj.completed_steps,
                   "steps": [asdict(r) for r in traj.steps]}
        print(json.dumps(summary))
    else:
        print(info_text(traj))


def cmd_demo(args: argparse.Namespace) -> None:
    from gisp.demo import run_demo

    run_demo(args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gisp", description="Global Iterative Structured Pruning of Hugging Face LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="run GISP and record the trajectory in a run directory")
    _add_config_flags(p)
    p.add_argument("--out", required=True, help="run directory (resumes if it holds the same run)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("export", help="write one level of a run as a smaller checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--sparsity", type=float, required=True, help="decoder parameter sparsity of the level")
    p.add_argument("--out", required=True, help="new or empty directory")
    p.add_argument("--model", help="base model location if it moved since the run (must be the same model)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="evaluate a model or export")
    p.add_argument("model", metavar="MODEL_OR_DIR")
    p.add_argument("--task", default="ppl", help="ppl")
    p.add_argument("--data", required=True, help=_HELP["data"])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit-windows", type=int, default=None)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="summarise a run directory")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print run.json")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="prune SmolLM2-135M on GSM8K and compare three nested exports")
    p.add_argument("--out", default="runs/demo", help="demo directory (resumes)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except GispError as exc:
        print(f"gisp: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gisp: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

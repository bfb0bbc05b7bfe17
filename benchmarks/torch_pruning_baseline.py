"""The Torch-Pruning library (PyPI ``torch-pruning``) as an outside row of the quality table.

Its LLM recipe (examples/LLMs/prune_llm.py): ``BasePruner`` with per-layer (not global) pruning of
attention heads and MLP channels, here with ``GroupTaylorImportance`` (gradients of the LM loss on
gisp's calibration batches, averaged), the hidden size kept (embeddings and lm_head ignored), and
gisp's protected layers ignored too, so the budget and protection match gisp's. The pruned model is
checked against gisp's masked dense model (same heads and channels zeroed) and scored by gisp's
evaluator; sparsity uses gisp's definition.

What Torch-Pruning 1.6.1 can and cannot do here, found by running it (recorded in the output):
- grouped-query attention is traced only through ``repeat_kv``, which transformers 5 skips under
  SDPA: the model is traced with eager attention;
- it never prunes K/V heads under GQA and removes the same number of query heads from every KV
  group; for 9 query / 3 KV heads, a head ratio above 1/3 prunes no head at all (its GQA check
  reads the already-updated head count), so the head ratio is capped at 1/3 and MLP channels take
  the rest of the budget.

    python benchmarks/torch_pruning_baseline.py --model smollm2-135m --sparsity 0.5 \\
        --data 'wikitext2:../shared/data/wikitext-2/test.txt[:31]' --samples 128 --seq-len 128 \\
        --eval-data 'wikitext2:../shared/data/wikitext-2/test.txt[31:]' --json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch

from gisp import models
from gisp.adapters import adapter_for
from gisp.batches import build_batches, read_source
from gisp.config import PruneConfig
from gisp.evaluation.perplexity import perplexity
from gisp.masking import apply_masks
from gisp.structures import Masks, decoder_params, dense_layer_params, layer_shape, model_parameters, protected_layers


def kept_masks(dense, pruned, adapter) -> Masks:
    """Which dense heads and channels survive in ``pruned``, found by matching weights."""
    geo = adapter.geometry()
    masks = Masks.dense(geo)
    for layer, (d, p) in enumerate(zip(adapter.all_layer_modules(dense), adapter.all_layer_modules(pruned))):
        heads = [p.q.weight[j * geo.head_dim:(j + 1) * geo.head_dim] for j in range(p.q.weight.shape[0] // geo.head_dim)]
        for h in range(geo.num_heads):
            block = d.q.weight[h * geo.head_dim:(h + 1) * geo.head_dim]
            masks.heads[layer, h] = any(torch.equal(block, b) for b in heads)
        rows = {tuple(r.tolist()) for r in p.gate.weight}
        masks.channels[layer] = torch.tensor([tuple(r.tolist()) in rows for r in d.gate.weight])
    return masks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--sparsity", type=float, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-data", required=True)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch_pruning as tp
    from importlib.metadata import version

    config = PruneConfig(model=args.model, data=args.data, sparsity=args.sparsity, samples=args.samples,
                         seq_len=args.seq_len, method="gisp")
    dense, tokenizer = models.load(args.model)
    adapter = adapter_for(dense.config)
    shape = layer_shape(dense, adapter)
    geo = shape.geometry
    batches = build_batches(config, read_source(config), tokenizer)  # the windows every gisp method sees
    protected = protected_layers(geo.num_layers, config.protect_first, config.protect_last)
    prunable = geo.num_layers - len(protected)
    record = {"torch_pruning": version("torch-pruning"), "calibration_tokens": sum(b["input_ids"].numel() for b in batches)}

    # budget: query heads per KV group (capped at 1/3 of heads, see above), MLP channels take the rest
    target = args.sparsity * dense_layer_params(shape) * geo.num_layers / prunable  # per prunable layer
    head_params = 2 * geo.head_dim * geo.hidden_size  # a query head's q rows and o columns (K/V never pruned)
    head_ratio = min(args.sparsity * geo.num_layers / prunable, 1 / geo.group_size if geo.group_size > 1 else 1.0)
    heads_removed = math.floor(head_ratio * geo.group_size) * geo.num_kv_heads if geo.group_size > 1 else math.floor(head_ratio * geo.num_heads)
    channels_removed = min(int((target - heads_removed * head_params) // shape.channel_params), geo.intermediate_size - 1)
    mlp_ratio = channels_removed / geo.intermediate_size
    record |= {"head_pruning_ratio": heads_removed / geo.num_heads, "mlp_pruning_ratio": mlp_ratio}

    model = copy.deepcopy(dense)
    model.set_attn_implementation("eager")
    model.config.use_cache = False
    start = time.time()
    total = sum(b["input_ids"].shape[0] for b in batches)
    model.zero_grad()
    for b in batches:  # mean LM-loss gradient over the calibration set, as gisp's Taylor importances
        (model(input_ids=b["input_ids"], labels=b["input_ids"]).loss * b["input_ids"].shape[0] / total).backward()
    layers = adapter.all_layer_modules(model)
    num_heads = {}
    for mods in layers:
        num_heads[mods.q] = geo.num_heads
        num_heads[mods.k] = num_heads[mods.v] = geo.num_kv_heads
    ignored = [model.lm_head, model.model.embed_tokens] + [lin for i in protected for lin in layers[i].linears().values()]
    pruner = tp.pruner.BasePruner(
        model, example_inputs=batches[0]["input_ids"][:1, :16], importance=tp.importance.GroupTaylorImportance(),
        global_pruning=False, pruning_ratio=mlp_ratio, head_pruning_ratio=heads_removed / geo.num_heads,
        num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, ignored_layers=ignored,
        output_transform=lambda out: out.logits, round_to=None,
    )
    for group in pruner.step(interactive=True):
        group.prune()
    model.zero_grad(set_to_none=True)
    for layer in adapter.layers(model):
        attn = layer.self_attn
        attn.num_key_value_groups = attn.q_proj.out_features // attn.k_proj.out_features
    record["prune_seconds"] = round(time.time() - start, 1)
    model.set_attn_implementation("sdpa")
    model.eval()

    masks = kept_masks(dense, model, adapter)
    masked = copy.deepcopy(dense)
    apply_masks(masked, adapter, masks)
    ids = batches[0]["input_ids"][:2]
    with torch.no_grad():
        diff = float((model(input_ids=ids).logits - masked(input_ids=ids).logits).abs().max())
    dense_total = dense_layer_params(shape) * geo.num_layers
    removed_heads = (~masks.heads).sum(1).tolist()
    record |= {
        "sparsity": 1 - decoder_params(masks, shape) / dense_total, "parameters": model_parameters(model),
        "max_logit_diff_vs_masked": diff, "heads_removed_per_layer": removed_heads,
        "channels_removed_per_layer": (~masks.channels).sum(1).tolist(),
    }
    notes = []
    if diff > 1e-3:
        notes.append(f"pruned model differs from the masked dense model by {diff:.3g} in logits")
    if sum(removed_heads) < heads_removed * prunable:
        notes.append(f"asked to remove {heads_removed} heads per layer, removed {removed_heads}")
    if record["sparsity"] < args.sparsity - 0.01:
        notes.append(f"reached only {record['sparsity']:.4f} of {args.sparsity:g}")
    record["note"] = "; ".join(notes) or (
        f"heads: {heads_removed}/{geo.num_heads} per unprotected layer (GQA: K/V never pruned, >1/3 not possible), "
        f"MLP: {channels_removed}/{geo.intermediate_size}")
    result = perplexity(model, tokenizer, args.eval_data, 128, batch_size=16, limit_windows=args.limit, progress=False)
    record |= {"ppl": result.ppl, "nll": result.nll, "tokens": result.tokens}
    print(json.dumps(record) if args.json else record)


if __name__ == "__main__":
    main()

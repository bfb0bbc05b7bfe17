"""``gisp plan``: the memory a pruning run will need, from the model's config alone.

The model is built on the meta device (no weights, no memory) to count parameters; the rest is a
model of what one gradient pass of GISP scoring holds at its peak, per micro-batch:

- weights, in the run's dtype;
- gradients: none for Fisher scores (activation gradients only); for first-order scores, a float32
  accumulator and an autograd gradient of every scored projection (``o_proj`` and ``down_proj``
  with ``--taylor-weights output``, gisp's default; all seven with ``all``, LLM-Pruner's);
- activations kept per token and layer, counted from what stock attention and MLP code saves
  for the backward pass (``torch.autograd.graph.saved_tensors_hooks`` on SmolLM2 and Qwen2.5
  layers, transformers 5): the two norm inputs (2d), the rotated q, k and v and SDPA's output
  (2q + 2kv), the MLP's gate, up and activation outputs (3f; 1f without a gate); the Fisher hooks
  (or the o/down weight gradients of first-order scores) keep each ``o_proj`` and ``down_proj``
  input (q + f). Projection inputs are not saved when their weights need no gradient, which is
  why a Fisher pass keeps no norm outputs; first-order scores of all seven projections keep the
  two norm outputs too (2d). Plus the full-vocabulary logits with their float32 log-softmax and
  gradient;
- Fisher moments (float64, per head and per channel) and a fixed runtime overhead;
- with ``--compact-every``, the compact copy the later steps score (:mod:`gisp.compaction`): a
  second model beside the masked one, counted at the dense size (it is first built after step 1,
  and only shrinks after). Its gradient pass is smaller than the dense one's, so the activations
  above stay the bound.

With gradient checkpointing only each layer's input is kept per token (plus one layer's
activations while it is recomputed); with a loss chunk only ``chunk`` positions of logits exist
at a time.

With ``--fsdp`` over N ranks (:func:`gisp.distributed.shard_parameters`, loading in shards from
safetensors) a rank holds 1/N of every parameter, the root's (embeddings, final norm, lm_head)
gathered through the whole pass besides, and at most two decoder layers gathered at a time (the
one running and the one FSDP2 prefetches); first-order gradients are 1/N of the scored projections
plus one layer's unsharded gradient before its reduce-scatter. Activations, logits and scores are
per micro-batch, as without FSDP. A checkpoint that cannot load in shards (GGUF, ``.bin``) is
first loaded whole by every rank: its peak is then the larger of that load (the dense weights and
the runtime) and the figure here.

The figures are estimates of resident memory; ``benchmarks/`` measures real peaks. The
recommendation is the largest micro-batch whose estimate fits the memory budget.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from gisp.adapters import adapter_for
from gisp.errors import GispError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
RUNTIME_BYTES = 600 * 2**20  # interpreter, torch, tokenizer, data


@dataclass
class MemoryPlan:
    """Bytes per rank, by part, for one micro-batch of ``batch_size`` x ``seq_len`` tokens."""

    parameters: int
    batch_size: int
    seq_len: int
    weights: int
    gradients: int
    activations: int
    logits: int
    scores: int
    runtime: int
    compact_copy: int = 0

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.activations + self.logits + self.scores + self.runtime
                + self.compact_copy)


def memory_plan(config, batch_size: int, seq_len: int, dtype: str = "float32", saliency: str = "fisher",
                checkpointing: bool = False, loss_chunk: int = 0, compact_every: int = 0,
                taylor_weights: str = "output", shards: int = 1) -> MemoryPlan:
    """The estimate for ``config``'s model (see the module docstring); ``shards``: the ranks
    ``--fsdp`` splits the parameters over (1: each rank holds the whole model)."""
    import torch
    from gisp import models

    if dtype not in DTYPE_BYTES:
        raise GispError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_BYTES)}")
    if taylor_weights not in ("output", "all"):
        raise GispError(f"unknown taylor-weights {taylor_weights!r}; choose from output, all")
    if saliency == "fisher" and taylor_weights == "all":
        raise GispError("--saliency fisher scores o_proj/down_proj columns; use it with --taylor-weights output")
    if shards > 1 and compact_every:
        raise GispError("--fsdp and --compact-every cannot be combined yet: the compact copy would be unsharded")
    adapter = adapter_for(config)
    g = adapter.geometry()
    with torch.device("meta"):
        model = models.model_from_config(config)
    params = sum(p.numel() for p in model.parameters())  # a tied lm_head is the embeddings' parameter: once
    layers = adapter.layers(model)
    layer_params = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
    decoder = sum(p.numel() for layer in layers for p in layer.parameters())
    fisher = saliency == "fisher"
    roles = ("o", "down") if taylor_weights == "output" else None  # None: all seven
    scored = [sum(p.weight.numel() for r, p in mods.linears().items() if roles is None or r in roles)
              for mods in adapter.all_layer_modules(model)]
    b = DTYPE_BYTES[dtype]
    d, f, hd = g.hidden_size, g.intermediate_size, g.head_dim
    q, kv = g.num_heads * hd, g.num_kv_heads * hd
    norms_kept = 0 if fisher or roles else 2 * d  # q/k/v/gate/up weight gradients need the norm outputs
    per_token_layer = 2 * d + 3 * q + 2 * kv + (4 if g.gated_mlp else 2) * f + norms_kept  # see above
    tokens = batch_size * seq_len
    vocab = int(config.vocab_size)
    moments = g.num_layers * (g.num_heads * (hd * hd + hd + 1) + 3 * f) * 8 if fisher else 0
    if shards > 1:  # a 1/N shard of everything, the root gathered besides, two layers gathered at a time
        weights = (-(-params // shards) + (params - decoder) + 2 * layer_params) * b
        gradients = 0 if fisher else (-(-sum(scored) // shards) + max(scored)) * (4 + b)
    else:
        weights = params * b
        gradients = 0 if fisher else sum(scored) * (4 + b)
    return MemoryPlan(
        parameters=params, batch_size=batch_size, seq_len=seq_len,
        weights=weights,
        gradients=gradients,
        activations=(g.num_layers * d + per_token_layer if checkpointing else g.num_layers * per_token_layer) * tokens * b,
        logits=(batch_size * min(loss_chunk, seq_len) if loss_chunk else tokens) * vocab * (b + 4 + 4),
        scores=moments + g.num_layers * (g.num_heads + f) * 8,
        runtime=RUNTIME_BYTES,
        compact_copy=params * b if compact_every else 0,
    )


def available_memory() -> int:
    """Physical memory of this machine, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def recommend_batch(config, seq_len: int, budget: int, dtype: str = "float32", saliency: str = "fisher",
                    largest: int = 64, checkpointing: bool = False, loss_chunk: int = 0,
                    compact_every: int = 0, taylor_weights: str = "output", shards: int = 1) -> int | None:
    """The largest micro-batch (sequences) whose estimate fits ``budget`` bytes; ``None`` if even
    one sequence does not."""
    best = None
    for batch in range(1, largest + 1):
        if memory_plan(config, batch, seq_len, dtype, saliency, checkpointing, loss_chunk, compact_every,
                       taylor_weights, shards).total <= budget:
            best = batch
        else:
            break
    return best


def plan_report(config, samples: int, seq_len: int, batch_size: int, nproc: int = 1, dtype: str = "float32",
                saliency: str = "fisher", budget: int | None = None, checkpointing: bool = False,
                loss_chunk: int = 0, compact_every: int = 0, taylor_weights: str = "output",
                fsdp: bool = False) -> dict:
    """Everything ``gisp plan`` prints, as data; ``fsdp``: the parameters split over the
    ``nproc`` ranks (``gisp prune --fsdp``)."""
    if samples < 1 or seq_len < 2 or batch_size < 1 or nproc < 1 or loss_chunk < 0 or compact_every < 0:
        raise GispError("samples, batch-size and nproc must be positive, loss-chunk and compact-every >= 0 and "
                        "seq-len at least 2")
    budget = budget or int(0.8 * available_memory())
    shards = nproc if fsdp else 1
    plan = memory_plan(config, batch_size, seq_len, dtype, saliency, checkpointing, loss_chunk, compact_every,
                       taylor_weights, shards)
    best = recommend_batch(config, seq_len, budget, dtype, saliency, checkpointing=checkpointing, loss_chunk=loss_chunk,
                           compact_every=compact_every, taylor_weights=taylor_weights, shards=shards)
    per_rank = -(-samples // nproc)
    return {"model_type": config.model_type, "parameters": plan.parameters, "dtype": dtype, "saliency": saliency,
            "taylor_weights": taylor_weights, "fsdp": shards > 1,
            "samples_per_rank": per_rank, "micro_batches_per_rank": -(-per_rank // batch_size),
            "bytes": asdict(plan) | {"total": plan.total}, "budget": budget, "fits": plan.total <= budget,
            "recommended_batch_size": best}

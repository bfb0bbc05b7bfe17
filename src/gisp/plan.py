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

In bfloat16 / float16 the RMS norms upcast their input to float32 and autograd keeps that copy
(measured with the same hooks): the two norm inputs count 4 bytes a value, the rest the run's
dtype. The Fisher hooks' per-layer working set (float32 copies of the largest projection input and
its gradient while the moments are summed, :func:`gisp.saliency.fisher_moments`) is the
``workspace``. The rate search of ``--normalize search`` runs forward passes only (no activations
kept, a quarter of the batches), which need less than the gradient pass: the pass is the peak.

On a GPU (``device="cuda"``) the budget is the GPU's memory: the host-side runtime is replaced by
the CUDA context (:data:`CUDA_CONTEXT_BYTES`, torch's kernels and cuBLAS handles) and the caching
allocator's slack (:data:`ALLOCATOR_SLACK` of the memory that comes and goes each micro-batch:
freed blocks it keeps reserved and cannot always reuse). ``benchmarks/gpu.py`` measures both.

The figures are estimates of resident memory; ``benchmarks/`` measures real peaks. The
recommendation is the largest micro-batch whose estimate fits the memory budget;
:func:`flags_to_fit` names the memory flags (which change how a run computes, not what) that make
the requested one fit. :func:`step_flops` counts a step's work for a time estimate at an assumed
throughput (:data:`ASSUMED_TFLOPS`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from gisp.adapters import adapter_for
from gisp.errors import GispError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
RUNTIME_BYTES = 600 * 2**20  # interpreter, torch, tokenizer, data
CUDA_CONTEXT_BYTES = 600 * 2**20  # CUDA context, torch's kernels, cuBLAS workspace: on the GPU, not the host
ALLOCATOR_SLACK = 0.10  # of the per-micro-batch memory, kept reserved by the caching allocator
DEVICES = ("cpu", "cuda")
#: Sustained TFLOP/s assumed for the time estimate when none is given: about 40% of an H100's dense
#: bf16 peak (989), a sixth of its fp32 peak (no TF32 by default), and what this project's 2-core
#: CPU machines sustain in float32. An assumption, printed as one; ``--tflops`` replaces it.
ASSUMED_TFLOPS = {("cuda", "bfloat16"): 400.0, ("cuda", "float16"): 400.0, ("cuda", "float32"): 10.0,
                  ("cpu", "float32"): 0.1, ("cpu", "bfloat16"): 0.02, ("cpu", "float16"): 0.02}
#: The memory flags, cheapest first: each changes how a run computes, not what (a run resumes with them).
MEMORY_FLAGS = ((), ("--loss-chunk",), ("--gradient-checkpointing",), ("--gradient-checkpointing", "--loss-chunk"))
LOSS_CHUNK = 1024  # positions of logits at a time that --loss-chunk is suggested with


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
    workspace: int = 0
    slack: int = 0  # on a GPU: what the caching allocator keeps reserved beyond the live tensors

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.activations + self.logits + self.scores + self.runtime
                + self.compact_copy + self.workspace + self.slack)


def memory_plan(config, batch_size: int, seq_len: int, dtype: str = "float32", saliency: str = "fisher",
                checkpointing: bool = False, loss_chunk: int = 0, compact_every: int = 0,
                taylor_weights: str = "output", shards: int = 1, device: str = "cpu") -> MemoryPlan:
    """The estimate for ``config``'s model (see the module docstring); ``shards``: the ranks
    ``--fsdp`` splits the parameters over (1: each rank holds the whole model); ``device``: ``cpu``
    (bytes of host memory) or ``cuda`` (bytes of one GPU's memory)."""
    import torch
    from gisp import models
    from gisp.config import check_sharding
    from gisp.saliency import check_columns

    if dtype not in DTYPE_BYTES:
        raise GispError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_BYTES)}")
    check_columns(taylor_weights, saliency, compensate=False)
    if device not in DEVICES:
        raise GispError(f"unknown plan device {device!r}; choose from {', '.join(DEVICES)}")
    check_sharding(shards > 1, compact_every)
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
    upcast = 2 * d * (4 - b)  # bytes: the two norm inputs are kept in float32 whatever the dtype
    tokens = batch_size * seq_len
    vocab = int(config.vocab_size)
    moments = g.num_layers * (g.num_heads * (hd * hd + hd + 1) + 3 * f) * 8 if fisher else 0
    if shards > 1:  # a 1/N shard of everything, the root gathered besides, two layers gathered at a time
        weights = (-(-params // shards) + (params - decoder) + 2 * layer_params) * b
        gradients = 0 if fisher else (-(-sum(scored) // shards) + max(scored)) * (4 + b)
    else:
        weights = params * b
        gradients = 0 if fisher else sum(scored) * (4 + b)
    layer_bytes = per_token_layer * b + upcast
    activations = (g.num_layers * d * b + layer_bytes if checkpointing else g.num_layers * layer_bytes) * tokens
    logits = (batch_size * min(loss_chunk, seq_len) if loss_chunk else tokens) * vocab * (b + 4 + 4)
    workspace = 4 * tokens * max(q, f) * 4 if fisher else 0  # float32 input, gradient, product, sum (one layer)
    return MemoryPlan(
        parameters=params, batch_size=batch_size, seq_len=seq_len,
        weights=weights,
        gradients=gradients,
        activations=activations,
        logits=logits,
        scores=moments + g.num_layers * (g.num_heads + f) * 8,
        runtime=CUDA_CONTEXT_BYTES if device == "cuda" else RUNTIME_BYTES,
        compact_copy=params * b if compact_every else 0,
        workspace=workspace,
        slack=int(ALLOCATOR_SLACK * (activations + logits + workspace)) if device == "cuda" else 0,
    )


def recommend_batch(config, seq_len: int, budget: int, dtype: str = "float32", saliency: str = "fisher",
                    largest: int = 64, checkpointing: bool = False, loss_chunk: int = 0,
                    compact_every: int = 0, taylor_weights: str = "output", shards: int = 1,
                    device: str = "cpu") -> int | None:
    """The largest micro-batch (sequences) whose estimate fits ``budget`` bytes; ``None`` if even
    one sequence does not."""
    best = None
    for batch in range(1, largest + 1):
        if memory_plan(config, batch, seq_len, dtype, saliency, checkpointing, loss_chunk, compact_every,
                       taylor_weights, shards, device).total <= budget:
            best = batch
        else:
            break
    return best


def flags_to_fit(config, batch_size: int, seq_len: int, budget: int, dtype: str = "float32",
                 saliency: str = "fisher", compact_every: int = 0, taylor_weights: str = "output", shards: int = 1,
                 device: str = "cpu") -> list[str] | None:
    """The cheapest memory flags (:data:`MEMORY_FLAGS`, in order of the time they cost) with which
    ``batch_size`` x ``seq_len`` fits ``budget`` bytes; ``None`` when none do."""
    for flags in MEMORY_FLAGS:
        chunk = LOSS_CHUNK if "--loss-chunk" in flags and LOSS_CHUNK < seq_len else 0
        if "--loss-chunk" in flags and not chunk:
            continue  # a chunk as long as the sequence changes nothing
        plan = memory_plan(config, batch_size, seq_len, dtype, saliency, "--gradient-checkpointing" in flags, chunk,
                           compact_every, taylor_weights, shards, device)
        if plan.total <= budget:
            return [f"--loss-chunk {chunk}" if f == "--loss-chunk" else f for f in flags]
    return None


def step_flops(config, tokens: int, seq_len: int, saliency: str = "fisher", taylor_weights: str = "output",
               checkpointing: bool = False, search: bool = True) -> dict[str, float]:
    """Floating-point operations of one pruning step on the dense model, by part.

    A forward pass costs ``2 x`` the parameters each token meets (the decoder's, and the lm_head's)
    plus causal attention's ``2 x seq_len x q`` per layer and token. The gradient pass is that
    forward, its backward through the activations (the same again; Fisher scores take no weight
    gradient), the weight gradients of the scored projections (``2 x`` their parameters, first-order
    scores only), and one more forward under gradient checkpointing. The rate search measures each
    of :data:`gisp.balance.EXCHANGE_RATES` (an upper bound: rates that select alike share a pass)
    on a quarter of the calibration tokens, forward only."""
    import torch

    from gisp import models
    from gisp.balance import EXCHANGE_RATES

    adapter = adapter_for(config)
    g = adapter.geometry()
    with torch.device("meta"):
        model = models.model_from_config(config)
    layers = adapter.layers(model)
    decoder = sum(p.numel() for layer in layers for p in layer.parameters())
    head = int(config.vocab_size) * g.hidden_size
    q = g.num_heads * g.head_dim
    forward = tokens * (2 * (decoder + head) + g.num_layers * 2 * seq_len * q)  # causal: half of 4 * S * q
    roles = ("o", "down") if taylor_weights == "output" else None
    scored = sum(p.weight.numel() for mods in adapter.all_layer_modules(model)
                 for r, p in mods.linears().items() if roles is None or r in roles)
    weight_grads = 0 if saliency == "fisher" else 2 * tokens * scored
    gradient_pass = forward * (3 if checkpointing else 2) + weight_grads
    return {"gradient_pass": float(gradient_pass),
            "rate_search": float(len(EXCHANGE_RATES) * forward / 4) if search else 0.0}


def available_memory(device: str = "cpu") -> int:
    """Memory of this machine (``cpu``) or of its first GPU (``cuda``), in bytes."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise GispError("gisp plan --device cuda on a machine without a GPU needs --memory (the GPU's GiB)")
        return int(torch.cuda.get_device_properties(0).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def plan_report(config, samples: int, seq_len: int, batch_size: int, nproc: int = 1, dtype: str = "float32",
                saliency: str = "fisher", budget: int | None = None, checkpointing: bool = False,
                loss_chunk: int = 0, compact_every: int = 0, taylor_weights: str = "output",
                fsdp: bool = False, device: str = "cpu", tflops: float | None = None,
                search: bool = True) -> dict:
    """Everything ``gisp plan`` prints, as data; ``fsdp``: the parameters split over the
    ``nproc`` ranks (``gisp prune --fsdp``); ``device``: what ``budget`` (bytes per rank) is the
    memory of; ``tflops``: the sustained throughput per rank the time estimate assumes
    (default :data:`ASSUMED_TFLOPS`); ``search``: the run searches the exchange rate (gisp's default)."""
    if samples < 1 or seq_len < 2 or batch_size < 1 or nproc < 1 or loss_chunk < 0 or compact_every < 0:
        raise GispError("samples, batch-size and nproc must be positive, loss-chunk and compact-every >= 0 and "
                        "seq-len at least 2")
    if budget is not None and not 0 < budget < float("inf"):
        raise GispError(f"--memory must be a positive number of GiB, got {budget / 2**30:g}")
    if tflops is not None and not tflops > 0:
        raise GispError(f"--tflops must be positive, got {tflops:g}")
    budget = budget or int(0.8 * available_memory(device))
    shards = nproc if fsdp else 1
    common = dict(saliency=saliency, compact_every=compact_every, taylor_weights=taylor_weights, shards=shards,
                  device=device)
    plan = memory_plan(config, batch_size, seq_len, dtype, checkpointing=checkpointing, loss_chunk=loss_chunk, **common)
    best = recommend_batch(config, seq_len, budget, dtype, checkpointing=checkpointing, loss_chunk=loss_chunk, **common)
    per_rank = -(-samples // nproc)
    flops = step_flops(config, per_rank * seq_len, seq_len, saliency, taylor_weights, checkpointing, search)
    rate = tflops or ASSUMED_TFLOPS[(device, dtype)]
    given = ["--gradient-checkpointing"] * checkpointing + ([f"--loss-chunk {loss_chunk}"] if loss_chunk else [])
    flags = given if plan.total <= budget else flags_to_fit(config, batch_size, seq_len, budget, dtype, **common)
    if flags is None and nproc > 1 and shards == 1 and not compact_every:  # split the parameters too
        flags = flags_to_fit(config, batch_size, seq_len, budget, dtype, **(common | {"shards": nproc}))
        flags = None if flags is None else ["--fsdp", *flags]
    return {"model_type": config.model_type, "parameters": plan.parameters, "dtype": dtype, "saliency": saliency,
            "taylor_weights": taylor_weights, "fsdp": shards > 1, "device": device,
            "samples_per_rank": per_rank, "micro_batches_per_rank": -(-per_rank // batch_size),
            "bytes": asdict(plan) | {"total": plan.total}, "budget": budget, "fits": plan.total <= budget,
            "recommended_batch_size": best,
            "flags_to_fit": flags,
            "step_flops": flops, "assumed_tflops": rate, "tflops_given": tflops is not None,
            "step_seconds": {k: v / (rate * 1e12) for k, v in flops.items()}}

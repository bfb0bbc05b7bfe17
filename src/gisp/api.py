"""The public Python API: ``gisp.prune``, ``gisp.export``, ``gisp.load``."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

from torch import nn

from gisp import distributed, models
from gisp.adapters import adapter_for
from gisp.batches import build_batches, read_source
from gisp.compensation import give_output_biases
from gisp.config import PruneConfig, RecoverConfig
from gisp.device import out_of_memory_errors
from gisp.device import resolve as resolve_device
from gisp.errors import GispError
from gisp.export import ExportInfo
from gisp.export import check_exportable
from gisp.export import export as _export
from gisp.batches import to_device
from gisp.gradients import mean_objective
from gisp.ranking import search_batches
from gisp.methods import MethodInputs, method_for
from gisp.objectives import OBJECTIVES, Objective, check_adapter_logits, chunked_loss
from gisp.pruner import run_schedule
from gisp.recovery import RecoveryResult
from gisp.report import progress_line, write_run_report
from gisp.runlock import locked
from gisp.structures import layer_shape, model_parameters, protected_layers
from gisp.trajectory import Trajectory

logger = logging.getLogger(__name__)


def prune(
    config: PruneConfig | None = None, *, out: str | Path | None = None,
    model: str | nn.Module | None = None, tokenizer=None,
    objective: Objective | None = None, batches: list[dict] | None = None,
    progress: bool = True, **settings,
) -> Trajectory:
    """Prune with ``config.method`` (GISP by default) and return the trajectory (saved to ``out``
    after every step, resumable, with ``out/report.md`` and its plots rewritten each time).

    Either pass a :class:`PruneConfig` or its fields as keywords, e.g.
    ``gisp.prune(model="smollm2-135m", data="gsm8k", sparsity=0.3, steps=4, out="runs/x")`` or
    ``gisp.prune(model=..., data=..., method="wanda-sp", sparsity=0.5, out=...)``.
    ``model`` is a MODEL spec, or a model already loaded (then pass its ``tokenizer`` too, unless
    you pass ``batches``; the record names it by ``config.model``, else by its ``name_or_path``).
    Launched by ``torchrun`` (``WORLD_SIZE`` > 1), the calibration batches are shared between the
    processes and their gradient sums all-reduced; only rank 0 writes ``out``.
    ``objective`` is any ``(model, batch) -> scalar loss`` callable and ``batches`` a list of dicts
    it understands; by default the config's objective on its calibration data. A model passed in
    is pruned in place (its removed structures are zeroed; FLAP adds its compensation biases).
    Every method gets the same calibration batches.
    """
    if isinstance(model, str):
        model, settings = None, settings | {"model": model}
    elif model is not None and "model" not in settings:
        settings["model"] = getattr(model, "name_or_path", "") or "in-memory model"
    if config is not None and set(settings) - {"model"}:
        raise GispError(f"pass either a PruneConfig or its fields, not both (got {', '.join(sorted(settings))})")
    config = config or PruneConfig.from_dict(settings)
    device = resolve_device(config.device)  # no CUDA for --device cuda: one line, before anything loads
    distributed.init_from_env(device)  # under torchrun / accelerate: data-parallel scoring, rank 0 writes
    progress = progress and distributed.is_main()
    writer = out is not None and distributed.is_main()
    with locked(out, "prune") if writer else nullcontext():  # one writer per run directory, from the start
        try:
            return _prune(config, device, out, model, tokenizer, objective, batches, progress)
        except out_of_memory_errors() as exc:
            raise GispError(out_of_memory_message(config, device, out, exc)) from None


def out_of_memory_message(config: PruneConfig, device, out, exc: Exception) -> str:
    """What to do when the device ran out of memory: every finished step is in the run directory,
    and the flags that cut memory without changing the trajectory resume it."""
    first = str(exc).splitlines()[0] if str(exc) else "out of memory"
    kept = f"{out} keeps every finished step" if out is not None else "nothing was saved (no run directory)"
    fsdp = "" if config.fsdp else ", --fsdp under torchrun"
    return (f"{device} ran out of memory ({first[:120]}); {kept}. See what fits with `gisp plan --model {config.model} "
            f"--device {device.type} --seq-len {config.seq_len} --batch-size {config.batch_size}`, then run the same "
            f"command with --gradient-checkpointing, --loss-chunk 1024{fsdp} to resume (a smaller --batch-size "
            f"starts a new run)")


def _prune(config: PruneConfig, device, out, model, tokenizer, objective, batches, progress: bool) -> Trajectory:
    """:func:`prune` once the run directory is locked."""
    source = read_source(config) if batches is None else None  # bad data fails before any model loads
    model, tokenizer, sharded = _load(config, device, model, tokenizer)
    if batches is None and tokenizer is None:
        raise GispError("a model passed in needs its tokenizer to build calibration batches (or pass batches=...)")
    if batches is None:
        batches = build_batches(config, source, tokenizer)
    batches = [to_device(b, device) for b in batches]  # once, not per step: token ids are small
    objective = objective or OBJECTIVES[config.objective]
    importance = method_for(config.method).build(
        MethodInputs(batches, objective, config.seed, progress, config.taylor_weights or "all", bool(config.compensate),
                     config.saliency or "first-order", config.gradient_checkpointing))
    # the dense counts, read before --fsdp adds zero output biases and splits the parameters
    dense = sharded or {"fingerprint": models.fingerprint(model), **_dense_counts(model, config)}
    _check_shards(config, batches)
    if config.fsdp and sharded is None and distributed.world_size() > 1:
        _prepare_shards(model, config)
    shape, parameters = dense["shape"], dense["parameters"]
    identity = {"spec": config.model, "model_type": model.config.model_type, "fingerprint": dense["fingerprint"]}
    writes_report = out is not None and distributed.is_main()
    logged: set[int] = set()

    def after_step(traj: Trajectory) -> None:  # the run report, and a line per step at --log-level info
        if writes_report:
            write_run_report(traj, out)
        last = traj.steps[-1]
        if last.step in logged:  # called again once the final level's loss is measured
            return
        logged.add(last.step)
        before = traj.steps[-2].loss if len(traj.steps) > 1 else None  # measured by this step's scoring pass
        logger.info("step %d: decoder sparsity %.4f (%d heads, %d channels removed), calibration loss before it %s; %s",
                    last.step, last.sparsity, last.heads_removed, last.channels_removed,
                    "-" if before is None else f"{before:.4f}", progress_line(traj))
    if config.loss_chunk:  # chunked losses read logits through the adapter: it must give the model's own
        check_adapter_logits(model, adapter_for(model.config))
    with chunked_loss(config.loss_chunk):
        return run_schedule(model, config, importance, identity=identity, run_dir=out, progress=progress,
                            loss=lambda m: mean_objective(m, batches, objective), calibration=calibration_size(batches),
                            candidate_loss=lambda m: mean_objective(m, search_batches(batches, config.search_every), objective),
                            on_step=after_step, shape=shape, model_total=parameters)


def _load(config: PruneConfig, device, model: nn.Module | None, tokenizer) -> tuple[nn.Module, object, dict | None]:
    """The model to prune (loaded on ``device``, or the one passed in, moved there) and its
    tokenizer. Under ``torchrun
    --fsdp`` a safetensors checkpoint is loaded in shards, each rank reading only its rows (the
    model is then never whole anywhere); it then also returns the dense counts and fingerprint,
    which the sharded model cannot give (else ``None``). A source that cannot be read in shards (a
    GGUF file, a quantised or ``.bin``-only checkpoint) is loaded whole by every rank, then sharded."""
    if model is not None:
        check_family(model.config, config)
        return model.to(device), tokenizer, None
    check_family(models.load_config(config.model), config)  # fail fast, before loading weights
    files = models.sharded_checkpoint(config.model) if config.fsdp and distributed.world_size() > 1 else None
    if files is None:
        if config.fsdp and distributed.world_size() > 1:
            logger.warning("%s has no plain safetensors checkpoint: every process loads it whole, then shards it",
                           config.model)
        return (*models.load(config.model, config.dtype, device), None)
    logger.info("loading %s in shards: each of %d processes reads only its rows", config.model, distributed.world_size())
    dense: dict = {}

    def prepare(meta_model: nn.Module) -> None:  # the dense counts first: sharding adds biases and splits
        dense.update(_dense_counts(meta_model, config))
        _prepare_shards(meta_model, config)
    model, tokenizer, fingerprint = models.load_sharded(config.model, files, prepare, config.dtype, device)
    return model, tokenizer, dense | {"fingerprint": fingerprint}


def _dense_counts(model: nn.Module, config: PruneConfig) -> dict:
    return {"shape": layer_shape(model, adapter_for(model.config), compensate=bool(config.compensate)),
            "parameters": model_parameters(model)}


def _check_shards(config: PruneConfig, batches: list[dict]) -> None:
    """``--fsdp``: every forward of a sharded layer is a collective, so every rank must run as many
    micro-batches as the others, in the gradient pass and in the search's subset: uneven splits are
    refused. Alone (no launcher) it only warns."""
    if not config.fsdp:
        return
    size = distributed.world_size()
    if size == 1:
        logger.warning("--fsdp shards over the processes of torchrun / accelerate; alone, the model stays whole")
        return
    every = config.search_every or 1
    parts = [batches] + ([search_batches(batches, every)] if config.normalize == "search" else [])
    if any(len(part) % size for part in parts):
        raise GispError(f"--fsdp needs the calibration micro-batches (and the rate search's subset, every {every} of them) "
                        f"to split evenly over {size} processes; got {len(batches)}: make --samples / --batch-size a "
                        f"multiple of {every * size if len(parts) > 1 else size}")


def _prepare_shards(model: nn.Module, config: PruneConfig) -> None:
    """``--fsdp``: every parameter split over the ranks, in place. Compensation's output biases
    are made before sharding: none can be added to a sharded model. ``model`` may still be on the
    meta device (:func:`gisp.models.load_sharded` fills it after)."""
    adapter = adapter_for(model.config)
    if config.compensate:
        give_output_biases(model, adapter)
    distributed.shard_parameters(model, adapter.layers(model))


def check_family(model_config, config: PruneConfig) -> None:
    """Refuse, from the config alone, a family gisp cannot prune with ``config.method`` and export
    exactly (:func:`gisp.export.check_exportable`); note when only channels will be pruned."""
    adapter = adapter_for(model_config)
    method = method_for(config.method)
    layers = adapter.geometry().num_layers
    if len(protected_layers(layers, config.protect_first, config.protect_last)) >= layers:
        raise GispError(f"all {layers} layers are protected; lower --protect-first/--protect-last")
    context = adapter.context_length()
    if context is not None and config.seq_len > context:
        raise GispError(f"seq-len {config.seq_len} is longer than the model's context of {context} tokens; lower --seq-len")
    if not adapter.prunable_heads:
        if (config.scope or method.scope) == "depth":
            raise GispError(f"{adapter.heads_note}; {method.name} removes whole layers, so it cannot prune this family")
        logger.warning("note: %s", adapter.heads_note)
    check_exportable(model_config)


def calibration_size(batches: list[dict]) -> dict:
    """Sequences and real (unpadded) tokens in the calibration batches."""
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b in batches)
    return {"sequences": sum(int(b["input_ids"].shape[0]) for b in batches), "tokens": tokens}


def export(run: str | Path | Trajectory, sparsity: float, out: str | Path, *, model: nn.Module | None = None,
           tokenizer=None, format: str = "hf", outtype: str = "f32", force: bool = False) -> ExportInfo:
    """Write the level of ``run`` at ``sparsity`` as a smaller checkpoint in ``out``: a Hugging
    Face directory (``format="hf"``) or a GGUF file for llama.cpp (``"gguf"``, ``outtype`` f32,
    f16 or q8_0). ``force`` replaces an earlier export at ``out`` (nothing else)."""
    with locked(out, "export"):
        return _export(run, sparsity, out, model=model, tokenizer=tokenizer, format=format, outtype=outtype, force=force)


def masked_level(run: str | Path | Trajectory, sparsity: float, *, model: nn.Module | None = None, tokenizer=None):
    """``(model, tokenizer)``: the dense model with the level of ``run`` at ``sparsity`` applied
    (removed structures zeroed, compensation biases added): what that level's export must equal."""
    from gisp.export import masked_level as _masked_level

    return _masked_level(run, sparsity, model=model, tokenizer=tokenizer)


def load(path: str, dtype: str = "float32", device: str = "cpu"):
    """Load ``(model, tokenizer)`` from an export, a Hugging Face id/dir, a GGUF file or an alias."""
    return models.load(path, dtype, device)


def recover(config: RecoverConfig | None = None, *, progress: bool = True, **settings) -> RecoveryResult:
    """Fine-tune a pruned export and write a plain export of the same shapes (``gisp recover``).

    Pass a :class:`RecoverConfig` or its fields, e.g.
    ``gisp.recover(model="smol-50", data="wikitext2", out="smol-50-lora", method="lora", max_tokens=200_000)``.
    Resumes from ``<out>.ckpt`` when run again after an interruption.
    """
    from gisp.recovery import recover as _recover

    if config is not None and settings:
        raise GispError(f"pass either a RecoverConfig or its fields, not both (got {', '.join(sorted(settings))})")
    config = config or RecoverConfig.from_dict(settings)
    with locked(config.out, "recover"):
        return _recover(config, progress=progress)

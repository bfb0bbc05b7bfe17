"""Recovery: fine-tune a pruned export and write a plain export of the same shapes.

Two losses over the same trainable parameters, LoRA adapters (PEFT) on the export's linear
layers, merged into the weights at the end, so the result has exactly the export's shapes and
parameter count and loads as the export did:

- ``lora``: the objective of the data (``lm``: next-token loss; ``answer``; ``margin``);
- ``distill``: KL divergence from the teacher's (the dense model's, by default the export's base
  model) next-token distribution to the student's, on the same tokens, optionally mixed with the
  objective (``lm_weight``). The teacher runs without gradients, one micro-batch at a time; its
  logits are never stored.

The loop: micro-batches cycled (reshuffled every epoch) until ``max_tokens`` training tokens,
``grad_accum`` micro-batches per optimizer step, AdamW with linear warm-up then cosine decay (a
pure function of the step), a checkpoint every ``checkpoint_every`` steps in ``<out>.ckpt``
(adapter weights, optimizer state as safetensors, position as JSON; no pickles). Running the same
command again resumes from the last checkpoint and gives the same result as an uninterrupted run.
"""

from __future__ import annotations

import logging
import dataclasses

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from gisp import models
from gisp.config import RecoverConfig
from gisp.errors import GispError
from gisp.export import atomic_dir, check_out_dir
from gisp.device import resolve as resolve_device
from gisp.batches import batch_size, to_device, token_mask
from gisp.objectives import OBJECTIVES
from gisp.runtime import progress_bar

logger = logging.getLogger(__name__)

CHECKPOINT = "state.json"
RECOVERY_INFO = "gisp_recovery.json"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


@dataclass
class RecoveryResult:
    """What a recovery did (also ``gisp_recovery.json`` in the output)."""

    out: str
    method: str
    steps: int
    tokens: int
    seconds: float
    first_loss: float | None
    last_loss: float | None
    parameters: int
    config: dict


# --- schedule and losses (pure) ---------------------------------------------------------------

def learning_rate(step: int, total: int, peak: float, warmup: float, final: float = 0.1) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up over the first
    ``warmup`` fraction of ``total`` steps, then cosine decay to ``final * peak``."""
    warm = max(1, round(warmup * total))
    if step < warm:
        return peak * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return peak * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over ``mask``ed positions of KL(teacher || student) of the next-token distributions,
    times ``T^2`` (Hinton's scaling, so the gradient scale does not depend on ``T``).

    ``student``/``teacher`` [B, T, V] logits, ``mask`` [B, T] bool (positions that predict).
    """
    s = F.log_softmax(student.float() / temperature, dim=-1)  # [B, T, V]
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # [B, T]
    return (kl * mask).sum() / mask.sum().clamp(min=1) * temperature**2


def predicting_positions(batch: dict) -> torch.Tensor:
    """Positions whose next token counts -> [B, T] bool: the scored tokens (``target_mask``, or
    every real token) shifted left by one, since position ``t`` predicts token ``t + 1``."""
    target = batch["target_mask"] if "target_mask" in batch else real_tokens(batch)  # [B, T]
    out = torch.zeros_like(target, dtype=torch.bool)
    out[:, :-1] = target[:, 1:].bool()
    return out


# --- data ------------------------------------------------------------------------------------

def training_batches(config: RecoverConfig, tokenizer) -> list[dict]:
    """One epoch of micro-batches: the whole data, in the objective's form (``lm``: every
    non-overlapping window of ``seq_len`` tokens)."""
    from gisp.batches import build_batches, read_source
    from gisp.config import PruneConfig
    from gisp.data import consecutive_windows, joined_text, tokenize

    if config.objective == "lm":
        windows = consecutive_windows(tokenize(tokenizer, joined_text(config.data, "calibration")), config.seq_len)
        return [{"input_ids": chunk} for chunk in windows.split(config.batch_size)]
    prune = PruneConfig(model=config.model, data=config.data, objective=config.objective, seq_len=config.seq_len,
                        batch_size=config.batch_size, seed=config.seed, max_tokens=None,
                        chat_template=config.chat_template)
    source = read_source(prune)
    return build_batches(dataclasses.replace(prune, samples=len(source)), source, tokenizer)  # every example


def real_tokens(batch: dict) -> torch.Tensor:
    """[B, T] bool: True on real (unpadded) tokens."""
    mask = token_mask(batch)
    return torch.ones_like(batch["input_ids"], dtype=torch.bool) if mask is None else mask


def tokens_in(batch: dict) -> int:
    """Real tokens of a micro-batch (the ``max_tokens`` budget's unit)."""
    return int(real_tokens(batch).sum())


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """The micro-batch order of ``epoch`` (seeded, different every epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def schedule_of(batches: list[dict], config: RecoverConfig) -> list[int]:
    """Micro-batch indices in training order until ``max_tokens`` tokens, whole optimizer steps."""
    order, used, epoch = [], 0, 0
    while used < config.max_tokens:
        for i in epoch_order(len(batches), epoch, config.seed):
            order.append(i)
            used += tokens_in(batches[i])
            if used >= config.max_tokens and len(order) % config.grad_accum == 0:
                break
        epoch += 1
    while len(order) % config.grad_accum:
        order.append(epoch_order(len(batches), epoch, config.seed)[len(order) % len(batches)])
    return order


# --- checkpoints -----------------------------------------------------------------------------

def _save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int, stats: dict,
                     config: RecoverConfig) -> None:
    """Adapter weights and optimizer moments (safetensors) plus position (JSON), atomically."""
    from peft import get_peft_model_state_dict

    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in get_peft_model_state_dict(model).items()}, tmp / "adapter.safetensors")
    state = optimizer.state_dict()
    tensors = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "optimizer.safetensors")
    (tmp / CHECKPOINT).write_text(json.dumps({"step": step, "stats": stats, "config": asdict(config)}, indent=1))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def _load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: RecoverConfig) -> tuple[int, dict]:
    from peft import set_peft_model_state_dict

    record = json.loads((path / CHECKPOINT).read_text())
    theirs, ours = record["config"], asdict(config)
    if theirs != ours:
        diff = ", ".join(f"{k}: {theirs.get(k)!r} there vs {v!r} here" for k, v in ours.items() if theirs.get(k) != v)
        raise GispError(f"checkpoint {path} was made with other settings ({diff}); remove it or use those settings")
    set_peft_model_state_dict(model, load_file(path / "adapter.safetensors"))
    tensors = load_file(path / "optimizer.safetensors")
    state = optimizer.state_dict()
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)
    return record["step"], record["stats"]


# --- the loop --------------------------------------------------------------------------------

def _lora(model: nn.Module, config: RecoverConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = config.lora_targets if config.lora_targets == "all-linear" else config.lora_targets.split(",")
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, target_modules=targets,
                      bias="none", init_lora_weights=True)
    return get_peft_model(model, lora)


def _batch_loss(student: nn.Module, teacher: nn.Module | None, batch: dict, config: RecoverConfig) -> torch.Tensor:
    objective = OBJECTIVES[config.objective]
    if teacher is None:
        return objective(student, batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
    with torch.no_grad():
        teacher_logits = teacher(**inputs).logits  # [B, T, V], freed after this micro-batch
    student_logits = student(**inputs).logits
    loss = config.kd_weight * distill_loss(student_logits, teacher_logits, predicting_positions(batch), config.temperature)
    if config.lm_weight:
        loss = loss + config.lm_weight * objective(student, batch)
    return loss


def recover(config: RecoverConfig, *, progress: bool = True) -> RecoveryResult:
    """Fine-tune the export ``config.model`` and write the merged model to ``config.out``
    (resumable from ``<out>.ckpt``)."""
    out = check_out_dir(config.out)
    source = Path(config.model)
    if not (source / "config.json").is_file():
        raise GispError(f"{config.model} is not an export directory (no config.json)")
    teacher_spec = config.teacher
    if config.method == "distill" and teacher_spec is None:
        teacher_spec = _base_model_of(source)
    device = resolve_device(config.device)  # before any loading: no CUDA for --device cuda is one line
    model, tokenizer = models.load(str(source), config.dtype, device)
    batches = training_batches(config, tokenizer)
    if not batches:
        raise GispError(f"no training data in {config.data}")
    teacher = models.load(teacher_spec, config.dtype, device)[0] if config.method == "distill" else None
    if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
        raise GispError(f"teacher {teacher_spec} has another vocabulary ({teacher.config.vocab_size} vs "
                        f"{model.config.vocab_size})")
    parameters = sum(p.numel() for p in model.parameters())
    torch.manual_seed(config.seed)
    student = _lora(model, config)
    student.train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    order = schedule_of(batches, config)
    total = len(order) // config.grad_accum
    ckpt = Path(f"{out}.ckpt")
    fresh = not ckpt.exists()  # a checkpoint this command makes goes if the run fails on a non-finite loss
    step, stats = 0, {"tokens": 0, "seconds": 0.0, "losses": []}
    if (ckpt / CHECKPOINT).is_file():
        step, stats = _load_checkpoint(ckpt, student, optimizer, config)
        logger.warning("resuming recovery from step %d of %d (%s)", step, total, ckpt)
    bar = progress_bar(total=total, initial=step, desc=f"recover ({config.method})", enabled=progress, unit="step")
    while step < total:
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total, config.lr, config.warmup)
        chunk = [batches[i] for i in order[step * config.grad_accum:(step + 1) * config.grad_accum]]
        weight = sum(batch_size(b) for b in chunk)
        loss_sum = 0.0
        for batch in chunk:
            loss = _batch_loss(student, teacher, to_device(batch, device), config) * batch_size(batch) / weight
            if not torch.isfinite(loss.detach()):  # NaN / Inf: training would only write garbage from here
                if fresh:
                    shutil.rmtree(ckpt, ignore_errors=True)
                raise GispError(f"the training loss is {float(loss.detach())} at step {step + 1} of {total} (lr "
                                f"{config.lr:g}, lora-alpha {config.lora_alpha:g}): lower --lr or --lora-alpha; "
                                f"nothing was written to {out}")
            loss.backward()
            loss_sum += float(loss.detach())
            stats["tokens"] += tokens_in(batch)
        torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        stats["losses"].append(round(loss_sum, 6))
        stats["seconds"] += time.perf_counter() - start
        window = stats["losses"][-20:]
        bar.set_postfix(loss=f"{sum(window) / len(window):.4f}", tokens=stats["tokens"])
        bar.update(1)
        if step % config.checkpoint_every == 0 or step == total:
            _save_checkpoint(ckpt, student, optimizer, step, stats, config)
    bar.close()
    merged = student.merge_and_unload().eval()
    result = RecoveryResult(str(out), config.method, step, stats["tokens"], round(stats["seconds"], 2),
                            stats["losses"][0] if stats["losses"] else None,
                            stats["losses"][-1] if stats["losses"] else None, parameters, asdict(config))
    if sum(p.numel() for p in merged.parameters()) != parameters:
        raise GispError("merged model changed its parameter count; not writing it")  # a bug, never expected
    if not all(bool(torch.isfinite(p).all()) for p in merged.parameters()):
        raise GispError(f"the recovered weights hold NaN or Inf (lr {config.lr:g}): lower --lr; nothing was written to {out}")
    _save_like(merged, source, out, result)
    shutil.rmtree(ckpt, ignore_errors=True)
    return result


def _base_model_of(export_dir: Path) -> str:
    """The dense model an export was cut from (its ``gisp_export.json``), the default teacher."""
    info = export_dir / "gisp_export.json"
    spec = json.loads(info.read_text()).get("base_model", {}).get("spec") if info.is_file() else None
    if not spec:
        raise GispError(f"{export_dir} records no base model; pass --teacher MODEL")
    return spec


def _save_like(model: nn.Module, source: Path, out: Path, result: RecoveryResult) -> None:
    """Write ``model``'s weights beside copies of every other file of ``source`` (config, remote
    code, tokenizer, provenance), so the result loads exactly as the export did; atomically."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        for item in source.iterdir():  # the export's own config and files win over re-serialised ones
            if item.is_file() and item.name not in _WEIGHT_FILES and not item.name.startswith("model-"):
                shutil.copy2(item, tmp / item.name)
        (tmp / RECOVERY_INFO).write_text(json.dumps(asdict(result), indent=2) + "\n")

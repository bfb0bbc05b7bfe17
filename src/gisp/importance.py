"""First-order Taylor importance: an importance is a callable ``(model, adapter) -> Scores``.

:class:`TaylorImportance` averages the objective's gradient over the whole calibration set in
float32 (gradients are taken only for the seven prunable projections, not embeddings or lm_head),
then scores every head and channel with :mod:`gisp.saliency`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from gisp import saliency
from gisp.adapters.base import ModelAdapter
from gisp.objectives import Objective, lm_loss


@dataclass
class Scores:
    """Raw (unnormalised) structure scores and the mean objective value they came from."""

    heads: torch.Tensor  # [L, H] float32
    channels: torch.Tensor  # [L, F] float32
    loss: float


class Importance(Protocol):
    def __call__(self, model: nn.Module, adapter: ModelAdapter) -> Scores: ...


def _batch_size(batch: dict) -> int:
    return int(batch["input_ids"].shape[0])


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@dataclass
class TaylorImportance:
    """``|W * dL/dW|`` summed per structure, ``dL/dW`` averaged over all calibration batches.

    Each micro-batch's loss is weighted by its share of the sequences, so the accumulated gradient
    is the calibration-set mean regardless of how it is split.
    """

    batches: list[dict]
    objective: Objective = lm_loss
    progress: bool = True
    description: str = "gradients"

    def average_gradients(self, model: nn.Module, weights: list[nn.Parameter]) -> tuple[list[torch.Tensor], float]:
        """Mean gradient of the objective for ``weights`` (float32) and the mean loss."""
        device = weights[0].device
        total = sum(_batch_size(b) for b in self.batches)
        grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
        loss_sum = 0.0
        for batch in tqdm(self.batches, desc=self.description, disable=not self.progress, leave=False):
            share = _batch_size(batch) / total
            loss = self.objective(model, _to_device(batch, device))
            for acc, g in zip(grads, torch.autograd.grad(loss, weights)):
                acc.add_(g.float(), alpha=share)
            loss_sum += float(loss.detach()) * share
        return grads, loss_sum

    def __call__(self, model: nn.Module, adapter: ModelAdapter) -> Scores:
        geo = adapter.geometry()
        layers = adapter.all_layer_modules(model)
        roles = ("q", "k", "v", "o", "gate", "up", "down")
        weights = [getattr(mods, r).weight for mods in layers for r in roles]
        flags = [p.requires_grad for p in model.parameters()]
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for w in weights:
                w.requires_grad_(True)
            with torch.enable_grad():
                grads, loss = self.average_gradients(model, weights)
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)
        mha = geo.num_kv_heads == geo.num_heads
        heads, channels = [], []
        for i in range(len(layers)):
            sal = {r: saliency.weight_saliency(weights[7 * i + j], grads[7 * i + j]) for j, r in enumerate(roles)}
            heads.append(saliency.head_scores(
                sal["q"], sal["o"], geo.head_dim,
                k=sal["k"] if mha else None, v=sal["v"] if mha else None,
            ))
            channels.append(saliency.channel_scores(sal["gate"], sal["up"], sal["down"]))
        return Scores(torch.stack(heads), torch.stack(channels), loss)

    def mean_loss(self, model: nn.Module) -> float:
        """The objective's mean over the calibration set, forward only."""
        return mean_objective(model, self.batches, self.objective)


@torch.no_grad()
def mean_objective(model: nn.Module, batches: list[dict], objective: Objective = lm_loss) -> float:
    """Mean objective over the calibration batches, weighted by sequences (forward only)."""
    device = next(model.parameters()).device
    total = sum(_batch_size(b) for b in batches)
    return sum(float(objective(model, _to_device(b, device))) * _batch_size(b) / total for b in batches)

"""Importances: callables ``(model, adapter, context) -> Scores``.

An importance scores every head and MLP channel (or every layer) of the model as it stands at the
start of a step: this module holds the interface (:class:`StepContext`, :class:`Scores`,
:class:`Importance`). The gradient-based importance is :mod:`gisp.gradients`; the forward
statistics the others build on are :mod:`gisp.statistics`; pruning methods (:mod:`gisp.methods`)
pair an importance with a ranking scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from gisp.adapters.base import ModelAdapter
from gisp.compensation import InputMeans
from gisp.structures import LayerShape, Masks


@dataclass(frozen=True)
class StepContext:
    """What an importance may know about the step it scores for."""

    step: int
    target: float  # parameter sparsity this step reaches
    masks: Masks  # structures kept before this step
    protected: tuple[int, ...]
    shape: LayerShape
    seed: int = 0


@dataclass
class Scores:
    """Raw structure scores (higher = more important) and what they came from.

    ``loss``: the mean objective of the model scored, when the importance computed it.
    ``layers``: one score per layer, for depth-scope methods.
    ``input_means``: mean inputs of ``o_proj`` / ``down_proj``, for compensating methods.
    """

    heads: torch.Tensor  # [L, H] float32
    channels: torch.Tensor  # [L, F] float32
    loss: float | None = None
    layers: torch.Tensor | None = None  # [L]
    input_means: InputMeans | None = None

    def cpu(self) -> Scores:
        """The same scores on the CPU, where ranking, selection and the trajectory work (they are
        small; the model and its gradient pass stay on the run's device)."""
        means = None if self.input_means is None else InputMeans(self.input_means.attention.cpu(), self.input_means.mlp.cpu())
        return Scores(self.heads.cpu(), self.channels.cpu(), self.loss, None if self.layers is None else self.layers.cpu(),
                      means)


@dataclass
class LayerScores:
    """Per-layer scores, each layer's own length: what an importance computes before stacking,
    and what a physically smaller (compacted) model gives, whose layers differ in size."""

    heads: list[torch.Tensor]  # [H_l] per layer
    channels: list[torch.Tensor]  # [F_l] per layer
    loss: float | None = None
    attention_means: list[torch.Tensor] | None = None  # [H_l*hd] per layer
    mlp_means: list[torch.Tensor] | None = None  # [F_l] per layer

    def cpu(self) -> LayerScores:
        """The same per-layer scores on the CPU (see :meth:`Scores.cpu`)."""
        cpu = lambda ts: None if ts is None else [t.cpu() for t in ts]  # noqa: E731
        return LayerScores(cpu(self.heads), cpu(self.channels), self.loss, cpu(self.attention_means), cpu(self.mlp_means))

    def stacked(self) -> Scores:
        """The [L, H] / [L, F] :class:`Scores` of a model whose layers are all the same size."""
        means = None if self.attention_means is None else InputMeans(torch.stack(self.attention_means),
                                                                     torch.stack(self.mlp_means))
        return Scores(torch.stack(self.heads), torch.stack(self.channels), self.loss, input_means=means)


class Importance(Protocol):
    def __call__(self, model: nn.Module, adapter: ModelAdapter, context: StepContext) -> Scores: ...

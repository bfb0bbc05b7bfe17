"""Ranking: scores made comparable (normalised), ordered, and removed up to the step's budget.

A *normaliser* turns one step's scores into the structures that step removes. Two kinds:
:class:`FixedNormaliser` (a fixed rule from :func:`gisp.saliency.normalize`, or a method's
per-layer / whole-layer scope, then removal of the lowest under the parameter budget) and
:class:`ExchangeRateSearch` (``--normalize search``: the head/channel exchange rate whose
look-ahead to the final sparsity gives the lowest calibration loss, :mod:`gisp.balance`). The
driver asks :func:`normaliser_for` once and calls ``select`` every step, whichever it got.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from gisp import balance
from gisp.adapters.base import AttentionGeometry, ModelAdapter
from gisp.errors import GispError
from gisp.importance import Scores
from gisp.methods.base import Method
from gisp.saliency import NORMALIZATIONS, normalize
from gisp.selection import (
    Scope,
    Structure,
    Unit,
    depth_ranking,
    global_ranking,
    head_multiple,
    layer_ranking,
    round_blocks,
    select_under_budget,
)
from gisp.structures import LayerShape, Masks

SEARCH = NORMALIZATIONS[0]  # the one normalisation that measures candidates instead of a fixed rule


@dataclass(frozen=True)
class Budget:
    """Decoder parameters: removed before this step, to have removed after it, and at the run's end."""

    removed: int
    step: float
    final: float


@dataclass
class Selection:
    """What one step removes; a searched step also carries its exchange rate and every look-ahead."""

    chosen: list[Structure]
    rate: float | None = None
    candidates: list[balance.Candidate] | None = None


class Normaliser(Protocol):
    def select(self, model: nn.Module, adapter: ModelAdapter, scores: Scores, masks: Masks,
               budget: Budget) -> Selection:
        """Removals of this step (``masks`` updated in place)."""


def normalized(scores: Scores, masks: Masks, geometry: AttentionGeometry, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Head and channel scores made comparable for a global ranking (``search`` starts from
    ``params``: :class:`ExchangeRateSearch` then scales heads against channels)."""
    mha = geometry.num_kv_heads == geometry.num_heads
    return normalize(
        scores.heads, scores.channels, "params" if how == SEARCH else how,
        head_size=(4 if mha else 2) * geometry.head_dim * geometry.hidden_size,
        channel_size=(3 if geometry.gated_mlp else 2) * geometry.hidden_size,
        hidden_size=geometry.hidden_size, head_dim=geometry.head_dim, intermediate_size=geometry.intermediate_size,
        heads_alive=masks.heads, channels_alive=masks.channels,
    )


def rank(method: Method, scores: Scores, masks: Masks, protected: list[int], geometry: AttentionGeometry,
         how: str, scope: Scope | None = None) -> list[Unit]:
    """Alive, unprotected units of ``scores``, least important first, in the method's scope unless
    ``scope`` overrides it (a global ranking normalised by ``how``)."""
    scope = scope or method.scope
    if scope == "depth":
        if scores.layers is None:
            raise ValueError(f"method {method.name} ranks layers but its importance returned no layer scores")
        return depth_ranking(scores.layers, masks, protected)
    if scope == "layer":
        unit = geometry.group_size if method.head_unit == "kv-group" else 1
        return layer_ranking(scores.heads, scores.channels, masks, protected, unit)
    heads, channels = normalized(scores, masks, geometry, how)
    return global_ranking(heads, channels, masks, protected)


@dataclass
class FixedNormaliser:
    """A fixed normalisation (or the method's layer / depth scope), then the lowest under the budget."""

    method: Method
    how: str
    scope: Scope | None
    protected: list[int]
    shape: LayerShape

    def select(self, model: nn.Module, adapter: ModelAdapter, scores: Scores, masks: Masks,
               budget: Budget) -> Selection:
        ranking = rank(self.method, scores, masks, self.protected, self.shape.geometry, self.how, self.scope)
        return Selection(select_under_budget(ranking, masks, self.shape, budget.removed, budget.step))


@dataclass
class ExchangeRateSearch:
    """``--normalize search``: ``params`` scores, heads scaled against channels by the rate whose
    look-ahead to the final sparsity gives the lowest ``loss`` (compensated when the run is)."""

    protected: list[int]
    shape: LayerShape
    loss: Callable[[nn.Module], float]
    compensate: bool
    view: Callable[[nn.Module, ModelAdapter], balance.View | None] | None = None

    def select(self, model: nn.Module, adapter: ModelAdapter, scores: Scores, masks: Masks,
               budget: Budget) -> Selection:
        heads, channels = normalized(scores, masks, self.shape.geometry, SEARCH)
        view = self.view(model, adapter) if self.view is not None else None
        chosen, rate, options = balance.search_step(
            model, adapter, heads, channels, masks, self.protected, self.shape, budget.removed, budget.step,
            budget.final, self.loss, scores.input_means if self.compensate else None, view)
        return Selection(chosen, rate, options)


def normaliser_for(method: Method, how: str, scope: Scope | None, compensate: bool, protected: list[int],
                   shape: LayerShape, loss: Callable[[nn.Module], float] | None,
                   view: Callable[[nn.Module, ModelAdapter], balance.View | None] | None = None) -> Normaliser:
    """The normaliser of a run. A search with no heads to prune has no rate to search: it ranks by
    ``params``, which is where the search starts."""
    if how == SEARCH and loss is None:
        raise GispError("--normalize search needs a calibration loss to compare candidates")
    if how == SEARCH and shape.head_pruning:
        return ExchangeRateSearch(protected, shape, loss, compensate, view)
    return FixedNormaliser(method, how, scope, protected, shape)


def rounded(chosen: list[Structure], masks: Masks, before: Masks, scores: Scores, multiple: int,
            protected: list[int], shape: LayerShape) -> list[Structure]:
    """``--round-to``: each pruned block's kept count moved to a whole multiple by taking back or
    adding the structures of this step that change least (``masks`` updated in place)."""
    back, extra = round_blocks(masks, before, scores.heads, scores.channels, multiple, protected, shape.head_pruning,
                               head_multiple(multiple, shape.geometry.head_dim))
    taken_back = set(back)
    return [s for s in chosen if s not in taken_back] + extra


def search_batches(batches: list[dict], every: int = 4) -> list[dict]:
    """Every ``every``-th calibration batch (at least one): the paired subset ``--normalize search``
    compares its candidates on, at ``1/every`` of a forward pass each (``--search-every``)."""
    return batches[::every] if len(batches) >= every else batches[:1]

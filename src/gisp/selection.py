"""Ranking scopes and removal under a parameter budget.

A ranking is a list of *units*, least important first; a unit is a tuple of structures removed
together (one head or channel; a whole KV group; a whole layer). Three scopes:

- ``global``: every head and channel of every unprotected layer in one ranking by (normalised)
  score (GISP, FLAP, magnitude, random);
- ``layer``: the same fraction of every unprotected layer's heads and channels (Wanda-sp,
  LLM-Pruner): units are ordered by the fraction of their block that is gone once they are,
  so any prefix of the ranking is (nearly) uniform across layers and block types;
- ``depth``: whole layers, lowest score first (ShortGPT).

:func:`select_under_budget` walks any ranking and removes units while the exported parameter count
stays within the step's target.
"""

from __future__ import annotations

import math

from typing import Literal

import torch

from gisp.structures import LayerShape, Masks, Structure, removal_saving, remove, restore

Scope = Literal["global", "layer", "depth"]
SCOPES = ("global", "layer", "depth")
Unit = tuple[Structure, ...]


def _allowed(num_layers: int, protected: list[int]) -> torch.Tensor:
    allowed = torch.ones(num_layers, dtype=torch.bool)
    allowed[protected] = False
    return allowed


def global_ranking(heads: torch.Tensor, channels: torch.Tensor, masks: Masks, protected: list[int]) -> list[Unit]:
    """Alive, unprotected structures of all layers, least important first.

    ``heads`` [L, H] and ``channels`` [L, F] are normalised scores. Ties keep a fixed order (heads
    before channels, then layer, then index) so runs are reproducible.
    """
    allowed = _allowed(masks.heads.shape[0], protected)
    head_ok = masks.heads & allowed[:, None]
    chan_ok = masks.channels & allowed[:, None]
    head_idx = head_ok.nonzero()  # [n_h, 2] (layer, head)
    chan_idx = chan_ok.nonzero()  # [n_c, 2] (layer, channel)
    scores = torch.cat([heads[head_ok].double(), channels[chan_ok].double()])
    order = torch.argsort(scores, stable=True).tolist()
    n_heads = head_idx.shape[0]
    ranking: list[Unit] = []
    for i in order:
        if i < n_heads:
            layer, index = head_idx[i].tolist()
            ranking.append((Structure("head", layer, index),))
        else:
            layer, index = chan_idx[i - n_heads].tolist()
            ranking.append((Structure("channel", layer, index),))
    return ranking


def block_fractions(scores: torch.Tensor, alive: torch.Tensor, unit: int = 1) -> torch.Tensor:
    """For one block's structures ([n] scores, [n] alive), the fraction of the block removed once
    each alive unit of ``unit`` consecutive structures is removed in ascending score order -> [n]
    (``inf`` for dead structures).

    The k-th weakest alive unit (0-based) of a block with ``n / unit`` units, ``r`` of them already
    gone, gets ``(r + k + 1) / (n / unit)``; a unit's score is the mean of its alive members.
    """
    n_units = scores.shape[0] // unit
    unit_alive = alive.reshape(n_units, unit).any(1)  # [n] -> [U]
    member = alive.reshape(n_units, unit).float()
    unit_score = (scores.reshape(n_units, unit).double() * member).sum(1) / member.sum(1).clamp(min=1)
    idx = unit_alive.nonzero()[:, 0]
    order = idx[torch.argsort(unit_score[idx], stable=True)]
    removed = int((~unit_alive).sum())
    frac = torch.full((n_units,), float("inf"), dtype=torch.float64)
    frac[order] = (removed + torch.arange(1, order.numel() + 1, dtype=torch.float64)) / n_units
    out = frac.repeat_interleave(unit)  # [U] -> [n]
    out[~alive] = float("inf")
    return out


def layer_ranking(
    heads: torch.Tensor, channels: torch.Tensor, masks: Masks, protected: list[int], head_unit: int = 1,
) -> list[Unit]:
    """Uniform per-layer ranking: units ordered by :func:`block_fractions` (heads before channels
    on ties, then layer, then index). ``head_unit`` > 1 removes heads in groups of that many
    (whole KV groups)."""
    allowed = _allowed(masks.heads.shape[0], protected)
    entries: list[tuple[float, int, int, int, Unit]] = []
    for layer in allowed.nonzero()[:, 0].tolist():
        for kind, scores, alive, unit in (("head", heads, masks.heads, head_unit), ("channel", channels, masks.channels, 1)):
            frac = block_fractions(scores[layer], alive[layer], unit)
            for first in range(0, scores.shape[1], unit):
                key = float(frac[first:first + unit].min())  # a partly removed unit: its alive members
                if key == float("inf"):
                    continue
                members = tuple(Structure(kind, layer, i) for i in range(first, first + unit) if bool(alive[layer, i]))
                entries.append((key, 0 if kind == "head" else 1, layer, first, members))
    entries.sort(key=lambda e: e[:4])
    return [e[4] for e in entries]


def depth_ranking(layer_scores: torch.Tensor, masks: Masks, protected: list[int]) -> list[Unit]:
    """Whole unprotected layers, lowest score first; each unit is every alive structure of a layer."""
    allowed = _allowed(masks.heads.shape[0], protected)
    layers = allowed.nonzero()[:, 0]
    order = layers[torch.argsort(layer_scores[layers].double(), stable=True)].tolist()
    ranking: list[Unit] = []
    for layer in order:
        unit = tuple(Structure("head", layer, i) for i in masks.heads[layer].nonzero()[:, 0].tolist())
        unit += tuple(Structure("channel", layer, i) for i in masks.channels[layer].nonzero()[:, 0].tolist())
        if unit:
            ranking.append(unit)
    return ranking


def select_under_budget(
    ranking: list[Unit], masks: Masks, shape: LayerShape, removed: int, target_removed: float
) -> list[Structure]:
    """Walk ``ranking`` and remove units while the removed parameter count stays within
    ``target_removed``; a unit that would overshoot is skipped and the walk goes on.

    ``masks`` is updated in place; returns the structures removed, in order. The walk stops once
    less than one MLP channel's worth of budget is left, so the achieved count lands within one
    channel below the target whenever single channels remain to be ranked. Units holding a head
    are skipped when the family's heads may not be pruned (``shape.head_pruning``).
    """
    chosen: list[Structure] = []
    budget = target_removed + 0.5  # counts are integers; the target is a float product
    for unit in ranking:
        if budget - removed < shape.channel_params:
            break
        if not shape.head_pruning and any(s.kind == "head" for s in unit):
            continue
        saving = 0
        for structure in unit:
            saving += removal_saving(structure, masks, shape)
            remove(structure, masks)
        if removed + saving > budget:
            for structure in unit:
                restore(structure, masks)
            continue
        removed += saving
        chosen.extend(unit)
    return chosen


def head_multiple(round_to: int, head_dim: int) -> int:
    """How many heads make an attention width (heads x ``head_dim``) a multiple of ``round_to``:
    matrix kernels and llama.cpp's 32-value quantisation blocks care about widths, so with
    ``head_dim`` 64 any head count is already a multiple of 32 wide (1), while ``head_dim`` 8 needs
    heads in fours. Rounding the head *count* to 32 would remove every head of a 9-head layer."""
    return round_to // math.gcd(round_to, head_dim)


def round_blocks(masks: Masks, before: Masks, heads: torch.Tensor, channels: torch.Tensor, multiple: int,
                 protected: list[int], head_pruning: bool = True,
                 head_multiple: int | None = None) -> tuple[list[Structure], list[Structure]]:
    """Make every unprotected layer keep a multiple of ``multiple`` channels and of
    ``head_multiple`` heads (default ``multiple``; see :func:`head_multiple`), hardware-friendly
    sizes by selection, not padding, changing ``masks`` in place.

    For a block keeping ``k`` with ``r = k % multiple``, either the ``r`` weakest kept structures
    are removed too, or the ``multiple - r`` strongest removed *this step* (kept in ``before``)
    are restored, whichever changes fewer (removal on ties, or when too few were removed this
    step). ``heads`` [L, H] / ``channels`` [L, F] are the step's scores; only their order within a
    block matters. Returns ``(restored, removed)``, the removed ones weakest first, so the step's
    removal order stays a valid nested order.
    """
    restored: list[Structure] = []
    removed: list[Structure] = []
    allowed = _allowed(masks.heads.shape[0], protected)
    blocks = [("channel", masks.channels, before.channels, channels, multiple)]
    if head_pruning:
        blocks.insert(0, ("head", masks.heads, before.heads, heads, head_multiple or multiple))
    for layer in allowed.nonzero()[:, 0].tolist():
        for kind, now, then, scores, multiple in blocks:
            kept = int(now[layer].sum())
            r = kept % multiple
            if r == 0:
                continue
            back = (then[layer] & ~now[layer]).nonzero()[:, 0]
            if multiple - r < r and back.numel() >= multiple - r:
                strongest = back[torch.argsort(scores[layer, back].double(), descending=True, stable=True)][: multiple - r]
                for i in strongest.tolist():
                    now[layer, i] = True
                    restored.append(Structure(kind, layer, i))
            else:
                alive = now[layer].nonzero()[:, 0]
                weakest = alive[torch.argsort(scores[layer, alive].double(), stable=True)][:r]
                for i in weakest.tolist():
                    now[layer, i] = False
                    removed.append(Structure(kind, layer, i))
    return restored, removed

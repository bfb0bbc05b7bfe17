"""Global ranking of heads and channels, and removal under a parameter budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from gisp.structures import LayerShape, Masks, attention_params

Kind = Literal["head", "channel"]


@dataclass(frozen=True)
class Structure:
    """One prunable structure: head or MLP channel ``index`` of layer ``layer``."""

    kind: Kind
    layer: int
    index: int


def global_ranking(
    heads: torch.Tensor, channels: torch.Tensor, masks: Masks, protected: list[int]
) -> list[Structure]:
    """Alive, unprotected structures of all layers, least important first.

    ``heads`` [L, H] and ``channels`` [L, F] are normalised scores. Ties keep a fixed order (heads
    before channels, then layer, then index) so runs are reproducible.
    """
    allowed = torch.ones(masks.heads.shape[0], dtype=torch.bool)
    allowed[protected] = False
    head_ok = masks.heads & allowed[:, None]
    chan_ok = masks.channels & allowed[:, None]
    head_idx = head_ok.nonzero()  # [n_h, 2] (layer, head)
    chan_idx = chan_ok.nonzero()  # [n_c, 2] (layer, channel)
    scores = torch.cat([heads[head_ok].double(), channels[chan_ok].double()])
    order = torch.argsort(scores, stable=True).tolist()
    n_heads = head_idx.shape[0]
    ranking = []
    for i in order:
        if i < n_heads:
            layer, index = head_idx[i].tolist()
            ranking.append(Structure("head", layer, index))
        else:
            layer, index = chan_idx[i - n_heads].tolist()
            ranking.append(Structure("channel", layer, index))
    return ranking


def removal_saving(structure: Structure, masks: Masks, shape: LayerShape) -> int:
    """Exported parameters saved by removing ``structure`` from ``masks`` (can be <= 0 for a head
    whose removal makes a GQA layout need more duplicated K/V rows)."""
    if structure.kind == "channel":
        return shape.channel_params
    kept = masks.heads[structure.layer]
    after = kept.clone()
    after[structure.index] = False
    return attention_params(kept, shape) - attention_params(after, shape)


def remove(structure: Structure, masks: Masks) -> None:
    """Mark ``structure`` removed in ``masks`` (in place)."""
    target = masks.heads if structure.kind == "head" else masks.channels
    target[structure.layer, structure.index] = False


def select_under_budget(
    ranking: list[Structure], masks: Masks, shape: LayerShape, removed: int, target_removed: int
) -> list[Structure]:
    """Walk ``ranking`` and remove structures while the removed parameter count stays within
    ``target_removed``; a structure that would overshoot is skipped and the walk goes on.

    ``masks`` is updated in place; returns the structures removed, in order. The walk stops once
    less than one MLP channel's worth of budget is left, so the achieved count lands within one
    channel below the target whenever channels remain.
    """
    chosen: list[Structure] = []
    for structure in ranking:
        if target_removed - removed < shape.channel_params:
            break
        saving = removal_saving(structure, masks, shape)
        if removed + saving > target_removed:
            continue
        remove(structure, masks)
        removed += saving
        chosen.append(structure)
    return chosen

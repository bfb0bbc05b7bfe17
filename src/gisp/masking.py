"""Applying masks to a dense model by zeroing weights (no hooks, stock forward code).

A removed head loses its ``q`` rows and its ``o`` columns (a zero ``o`` column makes the head's
output exactly zero, so its K/V need no mask, which keeps GQA's shared K/V intact). A removed
channel loses its ``gate``/``up`` rows and its ``down`` column. Biases of ``q``/``gate``/``up`` on
removed rows are zeroed too; they cannot reach the output once the ``o``/``down`` column is zero.
"""

from __future__ import annotations

import torch
from torch import nn

from gisp.adapters.base import ModelAdapter
from gisp.structures import Masks


def _zero_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    linear.weight[rows] = 0
    if linear.bias is not None:
        linear.bias[rows] = 0


@torch.no_grad()
def apply_masks(model: nn.Module, adapter: ModelAdapter, masks: Masks) -> None:
    """Zero every removed structure's weights in place (idempotent)."""
    hd = adapter.geometry().head_dim
    for layer, mods in enumerate(adapter.all_layer_modules(model)):
        head_rows = (~masks.heads[layer]).repeat_interleave(hd)  # [H] -> [H*hd]
        _zero_rows(mods.q, head_rows)
        mods.o.weight[:, head_rows] = 0
        dead = ~masks.channels[layer]
        _zero_rows(mods.gate, dead)
        _zero_rows(mods.up, dead)
        mods.down.weight[:, dead] = 0

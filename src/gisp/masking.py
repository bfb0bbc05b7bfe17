"""Applying masks to a dense model by zeroing weights (no hooks, stock forward code); and a
temporary hook-based view of a model under masks, for trying candidates without touching weights.

A removed head loses its ``q`` rows and its ``o`` columns (a zero ``o`` column makes the head's
output exactly zero, so its K/V need no mask, which keeps GQA's shared K/V intact). A removed
channel loses its ``gate``/``up`` rows and its ``down`` column. Biases of ``q``/``gate``/``up`` on
removed rows are zeroed too; they cannot reach the output once the ``o``/``down`` column is zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


def feature_mask_hooks(adapter: ModelAdapter, layer: nn.Module, keep_attention: torch.Tensor, keep_mlp: torch.Tensor) -> list:
    """Pre-hooks zeroing the removed input features of one layer's ``o_proj`` ([H*hd] keep) and
    ``down_proj`` ([F] keep): the same output as zeroing those columns (and the rows feeding them)."""
    mods = adapter.layer_modules(layer)
    return [mods.o.register_forward_pre_hook(lambda m, args: (args[0] * keep_attention.to(args[0].dtype),)),
            mods.down.register_forward_pre_hook(lambda m, args: (args[0] * keep_mlp.to(args[0].dtype),))]


@contextmanager
def masked_view(model: nn.Module, adapter: ModelAdapter, masks: Masks) -> Iterator[nn.Module]:
    """``model`` as if ``masks`` were applied, through pre-hooks; the weights are not touched and
    the hooks are removed on exit. For trying candidate masks (no compensation biases)."""
    hd = adapter.geometry().head_dim
    device = next(model.parameters()).device
    handles = []
    for layer, module in enumerate(adapter.layers(model)):
        keep_attention = masks.heads[layer].repeat_interleave(hd).to(device)  # [H] -> [H*hd]
        handles += feature_mask_hooks(adapter, module, keep_attention, masks.channels[layer].to(device))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()

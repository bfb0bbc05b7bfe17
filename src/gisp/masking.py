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

from gisp.adapters.base import LayerModules, ModelAdapter, Projection, base_linear, parameter_rows
from gisp.distributed import local_rows
from gisp.compensation import InputMeans
from gisp.structures import Masks


def _zero_rows(projection: Projection | None, rows: torch.Tensor) -> None:
    """Zero ``rows`` ([out] bool) of a projection's weight and bias: rows of the fused layer's
    parameters if fused, and of this rank's shard of them under FSDP."""
    if projection is None:
        return
    linear = base_linear(projection)
    first = parameter_rows(projection)[1].start or 0  # the projection's rows within its parameter
    for tensor in (linear.weight, linear.bias):
        if tensor is None:
            continue
        local, offset = local_rows(tensor)
        index = rows.nonzero()[:, 0] + first - offset  # positions in this rank's rows
        local[index[(index >= 0) & (index < local.shape[0])]] = 0


def _zero_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    """Zero ``columns`` ([in] bool) of a linear layer's weight (every rank holds every column)."""
    local, _ = local_rows(linear.weight)
    local[:, columns] = 0


@torch.no_grad()
def apply_masks(model: nn.Module, adapter: ModelAdapter, masks: Masks) -> None:
    """Zero every removed structure's weights in place (idempotent)."""
    hd = adapter.geometry().head_dim
    for layer, mods in enumerate(adapter.all_layer_modules(model)):
        zero_structures(mods, (~masks.heads[layer]).repeat_interleave(hd), ~masks.channels[layer])  # [H] -> [H*hd]


@torch.no_grad()
def zero_structures(mods: LayerModules, head_rows: torch.Tensor, channels: torch.Tensor) -> None:
    """Zero one layer's removed query rows / ``o`` columns (``head_rows``, [H*hd] bool) and MLP
    channels (``channels``, [F] bool), whatever the layer's size."""
    _zero_rows(mods.q, head_rows)
    _zero_columns(mods.o, head_rows)
    _zero_rows(mods.gate, channels)
    _zero_rows(mods.up, channels)
    _zero_columns(mods.down, channels)


def _replace(keep: torch.Tensor, fill: torch.Tensor | None):
    """A pre-hook setting the removed input features (``keep`` False) to ``fill`` (default 0)."""
    def hook(module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return (x * keep.to(x.dtype) if fill is None else torch.where(keep, x, fill.to(x.dtype)),)
    return hook


def feature_mask_hooks(
    adapter: ModelAdapter, layer: nn.Module, keep_attention: torch.Tensor, keep_mlp: torch.Tensor,
    fill_attention: torch.Tensor | None = None, fill_mlp: torch.Tensor | None = None,
) -> list:
    """Pre-hooks zeroing the removed input features of one layer's ``o_proj`` ([H*hd] keep) and
    ``down_proj`` ([F] keep): the same output as zeroing those columns (and the rows feeding them).
    With ``fill_*`` (the features' calibration means) removed features are set to their mean
    instead: the same output as zeroing them and adding the compensation bias."""
    mods = adapter.layer_modules(layer)
    return [mods.o.register_forward_pre_hook(_replace(keep_attention, fill_attention)),
            mods.down.register_forward_pre_hook(_replace(keep_mlp, fill_mlp))]


@contextmanager
def masked_view(model: nn.Module, adapter: ModelAdapter, masks: Masks, means: InputMeans | None = None) -> Iterator[nn.Module]:
    """``model`` as if ``masks`` were applied, through pre-hooks; the weights are not touched and
    the hooks are removed on exit. For trying candidate masks. With ``means`` (measured on the
    model as it stands) the candidate's removals are bias-compensated: a removed feature feeds its
    mean (structures removed earlier have zero columns, so their fill adds nothing)."""
    hd = adapter.geometry().head_dim
    device = next(model.parameters()).device
    handles = []
    for layer, module in enumerate(adapter.layers(model)):
        keep_attention = masks.heads[layer].repeat_interleave(hd).to(device)  # [H] -> [H*hd]
        fills = (means.attention[layer].to(device), means.mlp[layer].to(device)) if means is not None else (None, None)
        handles += feature_mask_hooks(adapter, module, keep_attention, masks.channels[layer].to(device), *fills)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()

"""Bias compensation (FLAP): a pruned input feature's mean contribution becomes an output bias.

When input feature ``j`` of ``o_proj`` / ``down_proj`` is removed, its average effect on the
output, ``W[:, j] * mean(x_j)``, is added to that projection's bias, so the layer's output keeps
its calibration-set mean. The means are measured over the calibration tokens on the model each
step scored (the dense model for one-shot FLAP) and stored in the trajectory per feature, so the
bias of any nested level is ``sum over removed j of W_dense[:, j] * mean_j``: export recomputes it
from the dense weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gisp.adapters.base import ModelAdapter
from gisp.distributed import local_rows
from gisp.structures import Masks


@dataclass
class InputMeans:
    """Mean input of every feature of ``o_proj`` and ``down_proj`` (NaN: never measured)."""

    attention: torch.Tensor  # [L, H*hd] float32
    mlp: torch.Tensor  # [L, F] float32

    @classmethod
    def unmeasured(cls, num_layers: int, attention_features: int, intermediate_size: int) -> InputMeans:
        nan = lambda n: torch.full((num_layers, n), float("nan"))  # noqa: E731
        return cls(nan(attention_features), nan(intermediate_size))

    def take(self, other: InputMeans, attention: torch.Tensor, mlp: torch.Tensor) -> None:
        """Copy ``other``'s means for the selected features ([L, H*hd] / [L, F] bool), in place."""
        self.attention[attention] = other.attention[attention].float()
        self.mlp[mlp] = other.mlp[mlp].float()


def output_bias(weight: torch.Tensor, removed: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """The bias that replaces removed input features by their mean -> [d].

    ``weight`` [d, in] (dense values of the removed columns), ``removed`` [in] bool, ``means`` [in].
    """
    cols = removed.nonzero()[:, 0].to(weight.device)
    return (weight[:, cols].double() @ means.to(weight.device)[cols].double()).to(weight.dtype)  # [d, n] @ [n] -> [d]


def removed_features(before: Masks, after: Masks, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input features of ``o_proj`` ([L, H*hd]) and ``down_proj`` ([L, F]) removed between two masks."""
    heads = (before.heads & ~after.heads).repeat_interleave(head_dim, dim=1)  # [L, H] -> [L, H*hd]
    return heads, before.channels & ~after.channels


@torch.no_grad()
def _add_bias(linear: nn.Linear, bias: torch.Tensor, offset: int = 0) -> None:
    """Add ``bias`` to ``linear``'s bias rows from ``offset`` (this rank's rows under FSDP)."""
    if linear.bias is None:
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device),
                                   requires_grad=linear.weight.requires_grad)
    local, start = local_rows(linear.bias)
    local[offset - start:offset - start + bias.shape[0]] += bias.to(local.device)


def give_output_biases(model: nn.Module, adapter: ModelAdapter) -> None:
    """A zero bias for every ``o_proj`` / ``down_proj`` without one: compensation adds to them, and
    under FSDP no parameter can be added once the model is sharded."""
    for mods in adapter.all_layer_modules(model):
        for linear in (mods.o, mods.down):
            if linear.bias is None:
                _add_bias(linear, torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device))


@torch.no_grad()
def compensate(model: nn.Module, adapter: ModelAdapter, before: Masks, after: Masks, means: InputMeans) -> None:
    """Add to ``o_proj`` / ``down_proj`` biases the mean contribution of the features removed
    between ``before`` and ``after``, in place. Call before zeroing them (their columns must still
    hold the dense weights). A projection without a bias gets one."""
    attention, mlp = removed_features(before, after, adapter.geometry().head_dim)
    for layer, mods in enumerate(adapter.all_layer_modules(model)):
        for linear, removed, feature_means in ((mods.o, attention[layer], means.attention[layer]),
                                               (mods.down, mlp[layer], means.mlp[layer])):
            if removed.any():  # under FSDP each rank adds the bias rows of the weight rows it holds
                rows, offset = local_rows(linear.weight)
                _add_bias(linear, output_bias(rows, removed, feature_means), offset)

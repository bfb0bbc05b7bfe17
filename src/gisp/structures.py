"""The prunable structures, their masks, and honest parameter counting.

A *head* ``(l, h)`` is query head ``h`` of layer ``l``; a *channel* ``(l, c)`` is MLP channel ``c``.
Masks are boolean ``[L, H]`` and ``[L, F]`` tensors, ``True`` = kept.

Parameter counts here are those of the model that :mod:`gisp.export` writes, so the sparsity a
run reports is the sparsity a user gets. Under GQA, stock attention needs every KV head to serve
the same number of query heads; :func:`attention_plan` makes uneven groups regular with the
cheaper of two exact tricks, and both are counted:

- split a group into several copies of its K/V rows (each copy costs ``2 * head_dim * d`` params);
- pad a group with *dummy* query heads whose ``q`` rows and ``o`` columns are zero (each costs
  ``2 * head_dim * d``; a zero ``o`` column makes its output exactly zero).

An attention block with no kept head is exported as one dummy head over one zero KV head (its
output is exactly zero), so stock modeling and KV caches keep working.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from gisp.adapters.base import AttentionGeometry, LayerModules


def _has_bias(linear: nn.Linear) -> int:
    return int(linear.bias is not None)


@dataclass(frozen=True)
class LayerShape:
    """Dense geometry plus which projections carry a bias (same for every layer)."""

    geometry: AttentionGeometry
    q_bias: int = 0
    k_bias: int = 0
    v_bias: int = 0
    o_bias: int = 0
    gate_bias: int = 0
    up_bias: int = 0
    down_bias: int = 0

    @classmethod
    def from_modules(cls, geometry: AttentionGeometry, mods: LayerModules) -> LayerShape:
        """Read the bias flags off one layer's projections."""
        return cls(
            geometry,
            _has_bias(mods.q), _has_bias(mods.k), _has_bias(mods.v), _has_bias(mods.o),
            _has_bias(mods.gate), _has_bias(mods.up), _has_bias(mods.down),
        )

    @property
    def channel_params(self) -> int:
        """Parameters one MLP channel holds: a row of gate and up, a column of down."""
        d = self.geometry.hidden_size
        return 3 * d + self.gate_bias + self.up_bias


@dataclass(frozen=True)
class AttentionPlan:
    """How one layer's kept heads map onto an exported, regular GQA block.

    ``q_sources[j]`` is the dense query head behind exported head ``j`` (``None``: a zero dummy);
    ``kv_sources[k]`` is the dense KV head behind exported KV head ``k`` (``None``: a zero KV head).
    Exported head ``j`` reads exported KV head ``j // group_size``.
    """

    q_sources: tuple[int | None, ...]
    kv_sources: tuple[int | None, ...]

    @property
    def num_heads(self) -> int:
        return len(self.q_sources)

    @property
    def num_kv_heads(self) -> int:
        return len(self.kv_sources)


def _attention_cost(num_heads: int, num_kv: int, shape: LayerShape) -> int:
    g = shape.geometry
    d, hd = g.hidden_size, g.head_dim
    q = num_heads * hd * (d + shape.q_bias)
    kv = num_kv * hd * (2 * d + shape.k_bias + shape.v_bias)
    o = d * num_heads * hd + shape.o_bias * d
    return q + kv + o


def _best_group_size(counts: list[int], shape: LayerShape) -> int:
    """Group size ``s`` minimising exported parameters for per-group kept counts (ties: larger s)."""
    best_s, best_cost = 1, None
    for s in range(1, max(counts) + 1):
        copies = sum(math.ceil(n / s) for n in counts)
        cost = _attention_cost(copies * s, copies, shape)
        if best_cost is None or cost <= best_cost:
            best_s, best_cost = s, cost
    return best_s


def attention_plan(kept: torch.Tensor, shape: LayerShape) -> AttentionPlan:
    """Regular GQA layout for one layer's kept-head mask ``kept`` ([H] bool)."""
    g = shape.geometry
    rep = g.group_size
    groups = [[h for h in range(kv * rep, (kv + 1) * rep) if bool(kept[h])] for kv in range(g.num_kv_heads)]
    counts = [len(heads) for heads in groups]
    if sum(counts) == 0:
        return AttentionPlan(q_sources=(None,), kv_sources=(None,))
    s = _best_group_size(counts, shape)
    q_sources: list[int | None] = []
    kv_sources: list[int | None] = []
    for kv, heads in enumerate(groups):
        for start in range(0, len(heads), s):
            chunk: list[int | None] = list(heads[start:start + s])
            q_sources += chunk + [None] * (s - len(chunk))
            kv_sources.append(kv)
    return AttentionPlan(tuple(q_sources), tuple(kv_sources))


def attention_params(kept: torch.Tensor, shape: LayerShape) -> int:
    """Exported parameter count of one attention block's four projections."""
    plan = attention_plan(kept, shape)
    return _attention_cost(plan.num_heads, plan.num_kv_heads, shape)


def mlp_params(num_channels: int, shape: LayerShape) -> int:
    """Exported parameter count of one MLP block's three projections."""
    d = shape.geometry.hidden_size
    return num_channels * shape.channel_params + shape.down_bias * d


def dense_layer_params(shape: LayerShape) -> int:
    """Parameters of one dense decoder layer's seven projections."""
    g = shape.geometry
    return _attention_cost(g.num_heads, g.num_kv_heads, shape) + mlp_params(g.intermediate_size, shape)


@dataclass
class Masks:
    """Kept-structure masks for all layers (``True`` = kept)."""

    heads: torch.Tensor  # [L, H] bool
    channels: torch.Tensor  # [L, F] bool

    @classmethod
    def dense(cls, geometry: AttentionGeometry) -> Masks:
        g = geometry
        return cls(
            heads=torch.ones(g.num_layers, g.num_heads, dtype=torch.bool),
            channels=torch.ones(g.num_layers, g.intermediate_size, dtype=torch.bool),
        )

    def clone(self) -> Masks:
        return Masks(self.heads.clone(), self.channels.clone())

    def is_subset_of(self, other: Masks) -> bool:
        """True when every structure kept here is also kept in ``other`` (nestedness)."""
        return bool((self.heads <= other.heads).all() and (self.channels <= other.channels).all())


def layer_params(masks: Masks, layer: int, shape: LayerShape) -> int:
    """Exported parameters of layer ``layer`` under ``masks``."""
    return attention_params(masks.heads[layer], shape) + mlp_params(int(masks.channels[layer].sum()), shape)


def decoder_params(masks: Masks, shape: LayerShape) -> int:
    """Exported parameters of all decoder layers' projections (the sparsity denominator's basis)."""
    return sum(layer_params(masks, layer, shape) for layer in range(masks.heads.shape[0]))


def parameter_sparsity(masks: Masks, shape: LayerShape) -> float:
    """Removed / dense parameters of the decoder layers' projections (weights and biases)."""
    dense = dense_layer_params(shape) * masks.heads.shape[0]
    return 1.0 - decoder_params(masks, shape) / dense


def max_sparsity(shape: LayerShape, protected: list[int]) -> float:
    """The highest parameter sparsity reachable when every unprotected layer is emptied."""
    g = shape.geometry
    empty_layer = _attention_cost(1, 1, shape) + mlp_params(0, shape)
    prunable = g.num_layers - len(protected)
    return prunable * (dense_layer_params(shape) - empty_layer) / (dense_layer_params(shape) * g.num_layers)


def protected_layers(num_layers: int, protect_first: float, protect_last: int) -> list[int]:
    """Layers never pruned: the first ``floor(protect_first * L)`` and the last ``protect_last``.

    The reference protects everything outside ``[floor(0.1 L), L - 1)``.
    """
    first = math.floor(protect_first * num_layers)
    last = range(max(num_layers - protect_last, 0), num_layers)
    return sorted(set(range(first)) | set(last))

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
output is exactly zero), so stock modeling and KV caches keep working. A layer with no head and no
channel left is the identity and is dropped from the export, costing nothing, unless an output bias
(the base model's, or a compensation bias) keeps adding to the residual stream.

Methods that *compensate* (FLAP) add a bias to ``o_proj`` / ``down_proj`` of every block they prune;
those biases are counted too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
from torch import nn

from gisp.adapters.base import AttentionGeometry, LayerModules, ModelAdapter, Projection

Kind = Literal["head", "channel"]


def _has_bias(projection: Projection | None) -> int:
    return int(projection is not None and projection.bias is not None)


@dataclass(frozen=True)
class Structure:
    """One prunable structure: head or MLP channel ``index`` of layer ``layer``."""

    kind: Kind
    layer: int
    index: int


@dataclass(frozen=True)
class LayerShape:
    """Dense geometry plus which projections carry a bias (same for every layer).

    ``compensate``: pruning a block adds a bias to its output projection (FLAP's bias compensation),
    so the count charges ``hidden_size`` parameters for each pruned block whose projection had none.
    ``head_pruning``: the family allows removing
    attention heads (:attr:`gisp.adapters.ModelAdapter.prunable_heads`); when not, only channels go.
    """

    geometry: AttentionGeometry
    q_bias: int = 0
    k_bias: int = 0
    v_bias: int = 0
    o_bias: int = 0
    gate_bias: int = 0
    up_bias: int = 0
    down_bias: int = 0
    compensate: bool = False
    head_pruning: bool = True

    @classmethod
    def from_modules(cls, geometry: AttentionGeometry, mods: LayerModules, compensate: bool = False,
                     head_pruning: bool = True) -> LayerShape:
        """Read the bias flags off one layer's projections."""
        return cls(
            geometry,
            _has_bias(mods.q), _has_bias(mods.k), _has_bias(mods.v), _has_bias(mods.o),
            _has_bias(mods.gate), _has_bias(mods.up), _has_bias(mods.down), compensate, head_pruning,
        )

    @property
    def droppable(self) -> bool:
        """Whether an emptied layer is the identity (no output bias keeps adding to the residual)."""
        return not (self.o_bias or self.down_bias or self.compensate)

    @property
    def channel_params(self) -> int:
        """Parameters one MLP channel holds: a row of gate (if gated) and up, a column of down."""
        d = self.geometry.hidden_size
        return (3 if self.geometry.gated_mlp else 2) * d + self.gate_bias + self.up_bias


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
    """Group size ``s`` minimising exported parameters for per-group kept counts (ties: larger s),
    among the layouts with no more KV heads than the dense layer.

    A smaller ``s`` lays an uneven group out as several copies of its KV head, which can save
    parameters (fewer zero query heads) but grows the KV cache, the memory that limits batch size
    and context when serving; so layouts with more KV heads than the dense layer are never chosen.
    ``s = max(counts)`` (zero query heads pad the smaller groups) always qualifies: one KV head per
    group that keeps a head."""
    best_s, best_cost = max(counts), None
    for s in range(1, max(counts) + 1):
        copies = sum(math.ceil(n / s) for n in counts)
        if copies > len(counts):  # more KV heads than dense: a larger KV cache than the model pruned
            continue
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
    return _attention_params(tuple(bool(k) for k in kept), shape)


@lru_cache(maxsize=4096)
def _attention_params(kept: tuple[bool, ...], shape: LayerShape) -> int:
    plan = attention_plan(torch.tensor(kept), shape)
    added = shape.geometry.hidden_size if shape.compensate and not shape.o_bias and not all(kept) else 0
    return _attention_cost(plan.num_heads, plan.num_kv_heads, shape) + added


def mlp_params(num_channels: int, shape: LayerShape) -> int:
    """Exported parameter count of one MLP block's three projections."""
    d = shape.geometry.hidden_size
    pruned = num_channels < shape.geometry.intermediate_size
    added = d if shape.compensate and not shape.down_bias and pruned else 0
    return num_channels * shape.channel_params + shape.down_bias * d + added


def block_params(kept_heads: torch.Tensor, num_channels: int, shape: LayerShape) -> int:
    """Exported parameters of one decoder layer's projections: 0 when the layer is dropped."""
    if num_channels == 0 and not bool(kept_heads.any()) and shape.droppable:
        return 0
    return attention_params(kept_heads, shape) + mlp_params(num_channels, shape)


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

    def is_kept(self, structure: Structure) -> bool:
        target = self.heads if structure.kind == "head" else self.channels
        return bool(target[structure.layer, structure.index])

    def empty_layers(self) -> list[int]:
        """Layers with no head and no channel left."""
        return [layer for layer in range(self.heads.shape[0])
                if not bool(self.heads[layer].any()) and not bool(self.channels[layer].any())]


def remove(structure: Structure, masks: Masks) -> None:
    """Mark ``structure`` removed in ``masks`` (in place)."""
    target = masks.heads if structure.kind == "head" else masks.channels
    target[structure.layer, structure.index] = False


def restore(structure: Structure, masks: Masks) -> None:
    """Mark ``structure`` kept again in ``masks`` (in place)."""
    target = masks.heads if structure.kind == "head" else masks.channels
    target[structure.layer, structure.index] = True


def layer_params(masks: Masks, layer: int, shape: LayerShape) -> int:
    """Exported parameters of layer ``layer`` under ``masks``."""
    return block_params(masks.heads[layer], int(masks.channels[layer].sum()), shape)


def removal_saving(structure: Structure, masks: Masks, shape: LayerShape) -> int:
    """Exported parameters saved by removing ``structure`` from ``masks``.

    Not constant: a GQA head's removal can make its layout need more duplicated K/V rows (<= 0), a
    compensating method's first removal in a block adds a bias, and removing a layer's last
    structure drops the whole layer.
    """
    heads, channels = masks.heads[structure.layer], int(masks.channels[structure.layer].sum())
    if structure.kind == "channel":
        return block_params(heads, channels, shape) - block_params(heads, channels - 1, shape)
    after = heads.clone()
    after[structure.index] = False
    return block_params(heads, channels, shape) - block_params(after, channels, shape)


def decoder_params(masks: Masks, shape: LayerShape) -> int:
    """Exported parameters of all decoder layers' projections (the sparsity denominator's basis)."""
    return sum(layer_params(masks, layer, shape) for layer in range(masks.heads.shape[0]))


def kv_heads(masks: Masks, shape: LayerShape) -> list[int]:
    """KV heads each layer keeps in the export (its :func:`attention_plan`; 0 for a dropped layer)."""
    dropped = set(masks.empty_layers()) if shape.droppable else set()
    return [0 if layer in dropped else attention_plan(masks.heads[layer], shape).num_kv_heads
            for layer in range(masks.heads.shape[0])]


def kv_values_per_token(masks: Masks, shape: LayerShape) -> int:
    """K and V values one token adds to the export's KV cache, over all layers (times the cache's
    bytes per value, e.g. 2 at 16 bits, gives its memory per token of context)."""
    return 2 * shape.geometry.head_dim * sum(kv_heads(masks, shape))


def parameter_sparsity(masks: Masks, shape: LayerShape) -> float:
    """Removed / dense parameters of the decoder layers' projections (weights and biases)."""
    dense = dense_layer_params(shape) * masks.heads.shape[0]
    return 1.0 - decoder_params(masks, shape) / dense


def max_sparsity(shape: LayerShape, protected: list[int]) -> float:
    """The highest parameter sparsity reachable when every unprotected layer is emptied."""
    g = shape.geometry
    heads_left = torch.full((g.num_heads,), not shape.head_pruning)  # heads that cannot go stay
    empty_layer = block_params(heads_left, 0, shape)
    prunable = g.num_layers - len(protected)
    return prunable * (dense_layer_params(shape) - empty_layer) / (dense_layer_params(shape) * g.num_layers)


def uniform_ratio(target: float, shape: LayerShape, protected: list[int]) -> float:
    """The fraction of every unprotected layer to remove so that the model reaches ``target``
    (uniform methods; GQA layout overheads ignored, so it is an estimate the budget walk corrects)."""
    prunable = shape.geometry.num_layers - len(protected)
    return min(1.0, target * shape.geometry.num_layers / max(prunable, 1))


def layer_shape(model: nn.Module, adapter: ModelAdapter, compensate: bool = False) -> LayerShape:
    """Dense geometry, bias flags and whether heads may go, of ``model`` (``compensate``: the
    method adds output biases)."""
    return LayerShape.from_modules(adapter.geometry(), adapter.layer_modules(adapter.layers(model)[0]), compensate,
                                   adapter.prunable_heads)


def model_parameters(model: nn.Module) -> int:
    """All parameters, tied weights counted once."""
    return sum(p.numel() for p in model.parameters())


def protected_layers(num_layers: int, protect_first: float, protect_last: int) -> list[int]:
    """Layers never pruned: the first ``floor(protect_first * L)`` and the last ``protect_last``.

    The reference protects everything outside ``[floor(0.1 L), L - 1)``.
    """
    first = math.floor(protect_first * num_layers)
    last = range(max(num_layers - protect_last, 0), num_layers)
    return sorted(set(range(first)) | set(last))

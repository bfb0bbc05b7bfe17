"""The adapter interface and its registry.

Everything gisp knows about where a model keeps its decoder layers, projections and attention
geometry lives behind :class:`ModelAdapter`. The algorithm only ever asks an adapter; it never
walks ``model.model.layers`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from gisp.errors import GispError


@dataclass(frozen=True)
class LayerModules:
    """The prunable linear layers of one decoder layer."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear

    def linears(self) -> dict[str, nn.Linear]:
        """All seven projections by role name."""
        return {"q": self.q, "k": self.k, "v": self.v, "o": self.o, "gate": self.gate, "up": self.up, "down": self.down}


@dataclass(frozen=True)
class AttentionGeometry:
    """Dense shapes of a decoder layer, read once from the config."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for multi-head attention)."""
        return self.num_heads // self.num_kv_heads


class ModelAdapter:
    """Locates layers and projections of one model family. Subclass per family and register."""

    model_types: tuple[str, ...] = ()
    #: Module that holds the stock ``*ForCausalLM`` class; used to pick remote-code classes.
    remote_class_prefix: str = ""

    def __init__(self, config) -> None:
        self.config = config

    def geometry(self) -> AttentionGeometry:
        """Dense shapes from the config (head_dim falls back to hidden/heads)."""
        c = self.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return AttentionGeometry(
            num_layers=c.num_hidden_layers,
            hidden_size=c.hidden_size,
            num_heads=c.num_attention_heads,
            num_kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
            head_dim=head_dim,
            intermediate_size=c.intermediate_size,
        )

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The decoder layers, in order."""
        raise NotImplementedError

    def layer_modules(self, layer: nn.Module) -> LayerModules:
        """The seven prunable projections of one decoder layer."""
        raise NotImplementedError

    def all_layer_modules(self, model: nn.Module) -> list[LayerModules]:
        """:meth:`layer_modules` for every layer."""
        return [self.layer_modules(layer) for layer in self.layers(model)]


_REGISTRY: dict[str, Callable[[object], ModelAdapter]] = {}


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: registers ``cls`` for each of its ``model_types``."""
    for model_type in cls.model_types:
        _REGISTRY[model_type] = cls
    return cls


def supported_model_types() -> list[str]:
    """Model types with a registered adapter, sorted."""
    return sorted(_REGISTRY)


def adapter_for(config) -> ModelAdapter:
    """The adapter for ``config.model_type``; a clear error for unknown families."""
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise GispError(
            f"unsupported model type {model_type!r}; gisp supports: {', '.join(supported_model_types())}"
        )
    if getattr(config, "per_layer_config", None) is not None and getattr(config, "is_heterogeneous", False):
        raise GispError("the model already has per-layer sizes (a pruned export); prune the dense base model instead")
    return _REGISTRY[model_type](config)

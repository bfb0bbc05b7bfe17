"""The adapter interface and its registry.

Everything gisp knows about a model family lives behind :class:`ModelAdapter`: where the decoder
layers are, which linear layers play the seven roles (``q k v o gate up down``), which of them
are fused into one matrix and how its rows split, whether the MLP is gated, whether heads may be
pruned at all, and which stock classes an export builds on. The algorithm only ever asks an
adapter; it never walks ``model.model.layers`` itself.

Adding a family is one subclass registered with :func:`register_adapter` (also ``gisp.register_adapter``)::

    @gisp.register_adapter
    class MyAdapter(gisp.ModelAdapter):
        model_types = ("my_family",)
        def layer_modules(self, layer):
            a, m = layer.self_attn, layer.mlp
            return gisp.LayerModules(q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj,
                                     gate=m.gate_proj, up=m.up_proj, down=m.down_proj)

For the command line (and every ``torchrun`` rank), a module that registers adapters is loaded as a
*plugin*: named in the ``GISP_PLUGINS`` environment variable (module names or ``.py`` paths,
comma-separated), or advertised by an installed package under the ``gisp.adapters`` entry-point
group. Plugins load once per process, the first time the registry is asked.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

from gisp.errors import GispError

ROLES = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True, eq=False)
class FusedRows:
    """One role's rows of a fused linear layer (Phi-3's ``qkv_proj``, ``gate_up_proj``).

    ``start``/``stop``: the role's block of output rows. It reads and writes like a linear layer
    of its own (``weight``/``bias`` are views into the fused parameters), so masking and scoring
    need not know about fusion; the export re-fuses the sliced blocks in row order.
    """

    linear: nn.Linear
    start: int
    stop: int

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight[self.start:self.stop]  # a view: writes reach the fused weight

    @property
    def bias(self) -> torch.Tensor | None:
        return None if self.linear.bias is None else self.linear.bias[self.start:self.stop]

    @property
    def out_features(self) -> int:
        return self.stop - self.start


#: A role's weight: a whole linear layer or a block of a fused one.
Projection = Union[nn.Linear, FusedRows]


def parameter_rows(projection: Projection) -> tuple[nn.Parameter, slice]:
    """The parameter holding ``projection``'s weight and its rows there (gradients are taken of
    whole parameters, then cut)."""
    if isinstance(projection, FusedRows):
        return projection.linear.weight, slice(projection.start, projection.stop)
    return projection.weight, slice(None)


def base_linear(projection: Projection) -> nn.Linear:
    """The module that stores ``projection`` (itself, or the fused layer it is part of)."""
    return projection.linear if isinstance(projection, FusedRows) else projection


@dataclass(frozen=True)
class LayerModules:
    """The prunable projections of one decoder layer.

    ``o`` and ``down`` must be whole linear layers (their inputs are hooked); ``q k v gate up`` may
    be :class:`FusedRows`. ``gate`` is ``None`` for a non-gated MLP (``down(act(up(x)))``).
    """

    q: Projection
    k: Projection
    v: Projection
    o: nn.Linear
    up: Projection
    down: nn.Linear
    gate: Projection | None = None

    def __post_init__(self) -> None:
        for role in ("o", "down"):
            if not isinstance(getattr(self, role), nn.Linear):
                raise GispError(f"the adapter's {role!r} projection must be a whole nn.Linear (its inputs are hooked)")

    def linears(self) -> dict[str, Projection]:
        """The present projections by role name, in :data:`ROLES` order."""
        return {role: getattr(self, role) for role in ROLES if getattr(self, role) is not None}


@dataclass(frozen=True)
class AttentionGeometry:
    """Dense shapes of a decoder layer, read once from the config."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    gated_mlp: bool = True  # a channel is a gate row, an up row and a down column (else no gate row)

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for multi-head attention)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class ExportClasses:
    """What an export's generic remote code builds on: import paths of the stock config and
    ``*ForCausalLM`` classes, and the attribute path of the decoder-layer list in that model."""

    config: str
    model: str
    layers: str


def import_path(cls: type) -> str:
    """``module.QualName`` of a class, as the remote code imports it back."""
    return f"{cls.__module__}.{cls.__qualname__}"


class ModelAdapter:
    """Knows one model family. Subclass, set ``model_types``, implement :meth:`layer_modules`
    (and override whatever else differs from the Llama layout), and register.

    Class attributes:

    - ``model_types``: the ``config.model_type`` values it serves;
    - ``layers_path``: attribute path of the decoder-layer list (``model.layers``);
    - ``gated_mlp``: the MLP is ``down(act(gate(x)) * up(x))``; ``False`` for ``down(act(up(x)))``
      (then :meth:`layer_modules` gives ``gate=None``);
    - ``prunable_heads``: ``False`` when attention heads are not independent structures (e.g. a
      norm over the whole q projection): only MLP channels are pruned, and ``heads_note`` says why.
    """

    model_types: tuple[str, ...] = ()
    layers_path: str = "model.layers"
    gated_mlp: bool = True
    prunable_heads: bool = True
    heads_note: str = ""

    def __init__(self, config) -> None:
        self.config = config

    def context_length(self) -> int | None:
        """The longest sequence the model's position encoding was built for (None: unknown)."""
        value = getattr(self.config, "max_position_embeddings", None)
        return int(value) if value else None

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """What the stock forward makes of the final hidden states [B, T, d] -> [B, T, V]
        (the output embedding; override for families that scale or cap logits)."""
        return model.get_output_embeddings()(hidden)

    @property
    def name(self) -> str:
        """The family's model type (for messages)."""
        return getattr(self.config, "model_type", None) or type(self).__name__

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
            gated_mlp=self.gated_mlp,
        )

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The decoder layers, in order."""
        return list(model.get_submodule(self.layers_path))

    def layer_modules(self, layer: nn.Module) -> LayerModules:
        """The prunable projections of one decoder layer."""
        raise NotImplementedError(f"{type(self).__name__} must implement layer_modules(layer)")

    def all_layer_modules(self, model: nn.Module) -> list[LayerModules]:
        """:meth:`layer_modules` for every layer."""
        return [self.layer_modules(layer) for layer in self.layers(model)]

    def export_classes(self, model: nn.Module) -> ExportClasses:
        """The stock classes a non-uniform export subclasses: by default the loaded model's own."""
        return ExportClasses(import_path(type(model.config)), import_path(type(model)), self.layers_path)

    def gguf_architecture(self) -> str | None:
        """The llama.cpp architecture family a GGUF export maps onto (``"llama"``: llama.cpp's
        ``llama``/``deci``, rotate-half q/k permuted to interleaved RoPE), or ``None`` (not supported)."""
        return None

    def fuse(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Re-fuse the sliced blocks of one fused linear (given in their dense row order) into its
        exported weight or bias. The default concatenates, which is right for layouts of
        contiguous blocks such as ``[q; k; v]``; an interleaved layout overrides this."""
        return torch.cat(parts, dim=0)


_REGISTRY: dict[str, Callable[[object], ModelAdapter]] = {}

PLUGIN_ENV = "GISP_PLUGINS"
PLUGIN_GROUP = "gisp.adapters"
_plugins_loaded: set[str] = set()
_plugins_scanned: dict[str, str | None] = {"env": None}


def _import_plugin(name: str) -> None:
    """Import one plugin: a ``.py`` file (by path) or a module name."""
    if name.endswith(".py"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file {path}")
        module_name = f"gisp_plugin_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    else:
        importlib.import_module(name)


def load_plugins() -> list[str]:
    """Import the adapter plugins of this process (the ``gisp.adapters`` entry points of
    installed packages, then the ``GISP_PLUGINS`` variable), each once, so that adapters
    registered outside gisp serve the command line as well as the API. Returns what loaded
    now; a plugin that fails to import is a :class:`GispError` naming it, and is tried again on
    the next call (nothing is marked loaded until it has)."""
    env = os.environ.get(PLUGIN_ENV, "")
    if _plugins_scanned["env"] == env:  # nothing new since the last complete scan
        return []
    plugins = [(f"entry point {ep.name}", ep.load) for ep in entry_points(group=PLUGIN_GROUP)]
    for name in filter(None, (n.strip() for n in env.split(","))):
        plugins.append((name, lambda name=name: _import_plugin(name)))
    loaded = []
    for name, load in plugins:
        if name in _plugins_loaded:
            continue
        try:
            load()
        except Exception as e:
            raise GispError(f"gisp plugin {name!r} failed to load: {type(e).__name__}: {e}") from e
        _plugins_loaded.add(name)
        loaded.append(name)
    _plugins_scanned["env"] = env
    return loaded


def register_adapter(cls: type[ModelAdapter]) -> type[ModelAdapter]:
    """Class decorator: registers ``cls`` for each of its ``model_types`` (a later registration
    of the same type replaces the earlier one)."""
    if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
        raise TypeError("register_adapter takes a ModelAdapter subclass")
    if not cls.model_types:
        raise ValueError(f"{cls.__name__}.model_types is empty; name the config.model_type values it serves")
    for model_type in cls.model_types:
        _REGISTRY[model_type] = cls
    return cls


def supported_model_types() -> list[str]:
    """Model types with a registered adapter (plugins loaded first), sorted."""
    load_plugins()
    return sorted(_REGISTRY)


def adapter_for(config, pruned_ok: bool = False) -> ModelAdapter:
    """The adapter for ``config.model_type``; a clear error for unknown families, and for a pruned
    export with per-layer sizes unless ``pruned_ok`` (reading it, e.g. its logits, is fine; pruning
    it again is not)."""
    load_plugins()
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise GispError(
            f"unsupported model type {model_type!r}; gisp supports: {', '.join(supported_model_types())} "
            f"(add a family with gisp.register_adapter; for the command line, name its module in {PLUGIN_ENV}; "
            "see docs/model-families.md)"
        )
    if not pruned_ok and getattr(config, "per_layer_config", None) is not None and getattr(config, "is_heterogeneous", False):
        raise GispError("the model already has per-layer sizes (a pruned export); prune the dense base model instead")
    return _REGISTRY[model_type](config)


__all__ = ["PLUGIN_ENV", "PLUGIN_GROUP", "ROLES", "AttentionGeometry", "ExportClasses", "FusedRows", "LayerModules",
           "ModelAdapter", "Projection", "adapter_for", "base_linear", "import_path", "load_plugins", "parameter_rows",
           "register_adapter", "supported_model_types"]

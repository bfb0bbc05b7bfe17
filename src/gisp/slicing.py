"""Physical slicing: the masked model's kept heads and channels copied into a model of the smaller
shapes (GQA plans, fused rows, compensation biases, dropped layers) and the config that describes
it. Exports write what this builds; ``--compact-every`` scores on it. Nothing here touches disk."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

from gisp.adapters import ExportClasses, FusedRows, ModelAdapter, adapter_for, base_linear
from gisp.compensation import InputMeans, output_bias
from gisp.remote import modeling_gisp
from gisp.structures import AttentionPlan, Masks, attention_plan, layer_shape

_DROP_CONFIG_KEYS = ("quantization_config", "_name_or_path", "auto_map", "architectures", "per_layer_config", "dtype")


@dataclass(frozen=True)
class LayerSizes:
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int


def _rows(weight: torch.Tensor, sources: tuple[int | None, ...], block: int, dim: int) -> torch.Tensor:
    """Gather blocks of ``block`` rows (dim 0) or columns (dim 1); ``None`` gives a zero block."""
    parts = []
    for src in sources:
        if src is None:
            shape = list(weight.shape)
            shape[dim] = block
            parts.append(weight.new_zeros(shape))
        else:
            parts.append(weight.narrow(dim, src * block, block))
    return torch.cat(parts, dim=dim)


def _sliced_attention(mods, plan: AttentionPlan, hd: int) -> dict[str, torch.Tensor]:
    out = {"q.weight": _rows(mods.q.weight, plan.q_sources, hd, 0),
           "k.weight": _rows(mods.k.weight, plan.kv_sources, hd, 0),
           "v.weight": _rows(mods.v.weight, plan.kv_sources, hd, 0),
           "o.weight": _rows(mods.o.weight, plan.q_sources, hd, 1)}
    for role, sources in (("q", plan.q_sources), ("k", plan.kv_sources), ("v", plan.kv_sources)):
        bias = getattr(mods, role).bias
        if bias is not None:
            out[f"{role}.bias"] = _rows(bias[:, None], sources, hd, 0)[:, 0]  # [n*hd, 1] -> [n*hd]
    return out


def _sliced_mlp(mods, kept: torch.Tensor) -> dict[str, torch.Tensor]:
    idx = kept.nonzero()[:, 0]
    out = {"up.weight": mods.up.weight[idx], "down.weight": mods.down.weight[:, idx]}
    for role in ("gate", "up"):
        projection = getattr(mods, role)
        if projection is None:  # a non-gated MLP
            continue
        out[f"{role}.weight"] = projection.weight[idx]
        if projection.bias is not None:
            out[f"{role}.bias"] = projection.bias[idx]
    return out


@dataclass
class SlicedModel:
    """A pruned model as tensors: the state dict, each kept layer's sizes, which dense layers are
    kept (in order), and the projections that gained a bias (module names in the export)."""

    state: dict[str, torch.Tensor]
    sizes: list[LayerSizes]
    kept_layers: list[int]
    added_biases: list[str]
    head_sources: list[tuple[int | None, ...]]  # per kept layer: the dense query head of each head (None: padding)


def _compensated_biases(mods, masks: Masks, layer: int, means: InputMeans, hd: int) -> dict[str, torch.Tensor]:
    """``o`` / ``down`` biases (base bias plus compensation) of a layer with removed features."""
    out = {}
    removed_attention = (~masks.heads[layer]).repeat_interleave(hd)  # [H] -> [H*hd]
    for role, removed, feature_means in (("o", removed_attention, means.attention[layer]),
                                         ("down", ~masks.channels[layer], means.mlp[layer])):
        if removed.any():
            linear = getattr(mods, role)
            bias = output_bias(linear.weight, removed, feature_means)
            out[f"{role}.bias"] = bias if linear.bias is None else linear.bias + bias
    return out


@torch.no_grad()
def sliced_state_dict(model: nn.Module, adapter: ModelAdapter, masks: Masks, means: InputMeans | None = None,
                      added_biases: list[str] | tuple = ()) -> SlicedModel:
    """The base state dict with every projection cut to ``masks`` (plus compensation biases from
    the dense weights when ``means`` is given), empty layers dropped and the rest renumbered.
    ``added_biases``: modules of ``model`` whose bias the stock class lacks (a working model that
    compensation already gave biases)."""
    names = {id(m): n for n, m in model.named_modules()}
    shape = layer_shape(model, adapter, compensate=means is not None or bool(added_biases))
    hd = shape.geometry.head_dim
    state = dict(model.state_dict())
    sizes, added, sources = [], list(added_biases), []
    for layer, mods in enumerate(adapter.all_layer_modules(model)):
        plan = attention_plan(masks.heads[layer], shape)
        sources.append(plan.q_sources)
        sliced = _sliced_attention(mods, plan, hd) | _sliced_mlp(mods, masks.channels[layer])
        if means is not None:
            sliced |= _compensated_biases(mods, masks, layer, means, hd)
        _write(state, sliced, mods, names, adapter, added)
        sizes.append(LayerSizes(plan.num_heads, plan.num_kv_heads, int(masks.channels[layer].sum())))
    dropped = set(masks.empty_layers()) if shape.droppable else set()
    kept = [i for i in range(len(sizes)) if i not in dropped]
    rename = _renumber([names[id(layer)] for layer in adapter.layers(model)], kept)
    state = {new: state[old] for old, new in _renamed_keys(state, rename)}
    added = [new for old, new in _renamed_keys(dict.fromkeys(added), rename)]
    return SlicedModel(state, [sizes[i] for i in kept], kept, added, [sources[i] for i in kept])


def _write(state: dict, sliced: dict[str, torch.Tensor], mods, names: dict, adapter: ModelAdapter,
           added: list[str]) -> None:
    """Put one layer's sliced tensors (``"q.weight"`` ...) into ``state`` under their module names;
    the blocks of a fused linear are re-fused in their dense row order (:meth:`ModelAdapter.fuse`)."""
    projections = mods.linears()
    parts: dict[tuple[int, str], list[tuple[int, torch.Tensor]]] = {}
    for key, tensor in sliced.items():
        role, param = key.split(".")
        projection = projections[role]
        linear = base_linear(projection)
        start = projection.start if isinstance(projection, FusedRows) else 0
        parts.setdefault((id(linear), param), []).append((start, tensor))
        if param == "bias" and linear.bias is None and names[id(linear)] not in added:
            added.append(names[id(linear)])
    for (linear_id, param), blocks in parts.items():
        tensors = [t for _, t in sorted(blocks, key=lambda b: b[0])]
        state[f"{names[linear_id]}.{param}"] = (adapter.fuse(tensors) if len(tensors) > 1 else tensors[0]).clone()


def _renumber(layer_names: list[str], kept: list[int]) -> dict[str, str | None]:
    """Old layer prefix -> new prefix (``None``: dropped). ``model.layers.7`` -> ``model.layers.5``."""
    container = layer_names[0].rsplit(".", 1)[0]
    mapping: dict[str, str | None] = {name: None for name in layer_names}
    for new, old in enumerate(kept):
        mapping[layer_names[old]] = f"{container}.{new}"
    return mapping


def _renamed_keys(keys, rename: dict[str, str | None]):
    """``(old, new)`` for every key, keys under a dropped layer left out."""
    for key in keys:
        for old, new in rename.items():
            if key == old or key.startswith(old + "."):
                if new is not None:
                    yield key, new + key[len(old):]
                break
        else:
            yield key, key


def export_config(base_config, adapter: ModelAdapter, sliced: SlicedModel, classes: ExportClasses):
    """Config for the sliced model, and whether it needs ``modeling_gisp.py``.

    Equal layers, no added bias and sizes the stock config accepts: a stock config. Otherwise
    the generic remote config built on ``classes``, with transformers' ``per_layer_config`` for
    layers that differ. Its ``config.json`` also sets ``allow_global_per_layer_attribute_access``,
    so stock code that reads the config without the remote code (``AutoTokenizer``,
    ``AutoConfig``) loads it: the global values are the dense model's, the per-layer ones are in
    ``per_layer_config``.
    """
    values = {k: v for k, v in base_config.to_dict().items() if k not in _DROP_CONFIG_KEYS}
    values["head_dim"] = adapter.geometry().head_dim
    dense_layers = values["num_hidden_layers"]
    if len(sliced.kept_layers) != dense_layers:  # per-layer lists (e.g. layer_types) follow the kept layers
        values = {k: [v[i] for i in sliced.kept_layers] if isinstance(v, list) and len(v) == dense_layers else v
                  for k, v in values.items()}
        values["num_hidden_layers"] = len(sliced.kept_layers)
    uniform = len(set(sliced.sizes)) <= 1
    if uniform and sliced.sizes:
        values.update(asdict(sliced.sizes[0]))
    if uniform and not sliced.added_biases:
        try:
            return type(base_config)(**values), False
        except Exception:  # stock validation, e.g. hidden_size % num_heads == 0
            pass
    values[modeling_gisp.REMOTE_KEY] = {"config": classes.config, "model": classes.model, "layers": classes.layers,
                                        "added_biases": list(sliced.added_biases)}
    if not uniform:
        values["per_layer_config"] = {i: asdict(s) for i, s in enumerate(sliced.sizes)}
    config = modeling_gisp.config_class(classes.config)(**values)
    if not uniform:
        config.allow_global_per_layer_attribute_access = True
    config.auto_map = {"AutoConfig": "modeling_gisp.GispConfig", "AutoModelForCausalLM": "modeling_gisp.GispForCausalLM"}
    return config, True


def build_pruned_model(model: nn.Module, masks: Masks, means: InputMeans | None = None,
                       added_biases: list[str] | tuple = ()) -> tuple[nn.Module, bool]:
    """A new, physically smaller model equal to ``model`` under ``masks`` (and compensation
    ``means``; ``added_biases`` as for :func:`sliced_state_dict`); and whether it needs remote code."""
    pruned, remote, _ = build_sliced_model(model, masks, means, added_biases)
    return pruned, remote


def build_sliced_model(model: nn.Module, masks: Masks, means: InputMeans | None = None,
                       added_biases: list[str] | tuple = ()) -> tuple[nn.Module, bool, SlicedModel]:
    """:func:`build_pruned_model`, also returning the :class:`SlicedModel` (which dense layers and
    heads each part came from)."""
    adapter = adapter_for(model.config)
    sliced = sliced_state_dict(model, adapter, masks, means, added_biases)
    config, remote = export_config(model.config, adapter, sliced, adapter.export_classes(model))
    dtype = next(model.parameters()).dtype
    pruned = _instantiate(config, remote, type(model), dtype)
    pruned.load_state_dict(sliced.state, strict=True)
    return pruned.eval(), remote, sliced


def _instantiate(config, remote: bool, stock: type, dtype: torch.dtype) -> nn.Module:
    """An empty model for ``config``: the remote class, or the dense model's own stock class."""
    cls = modeling_gisp.GispForCausalLM if remote else stock
    with _default_dtype(dtype):
        return cls(config)


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)

"""Modeling code for gisp exports whose layers differ: one file, the same for every model family.

This file is copied into an exported checkpoint and loaded by
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``. It must stay
self-contained: it imports only ``torch`` and ``transformers``, never ``gisp``, and it names no
model family. The export's ``config.json`` says what to build on, under ``gisp_remote``:

- ``config`` / ``model``: import paths of the stock config class and ``*ForCausalLM`` class;
- ``layers``: the attribute path of the decoder-layer list in that model (``model.layers``);
- ``added_biases``: linear layers that carry a bias the stock class lacks (FLAP-style bias
  compensation), e.g. ``model.layers.3.self_attn.o_proj``; they get one, filled from the weights.

Per-layer sizes follow transformers' ``per_layer_config`` convention: global values are the dense
model's and ``per_layer_config[i]`` overrides e.g. ``num_attention_heads``,
``num_key_value_heads`` and ``intermediate_size`` of layer ``i``. :class:`GispConfig` and
:class:`GispForCausalLM` are the names ``auto_map`` points at; loading one gives an instance of a
subclass of the stock class named in the config, made here, which rebuilds each decoder layer
from its own per-layer config, so the stock forward code runs unchanged.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import logging

REMOTE_KEY = "gisp_remote"


def _import(path: str) -> type:
    """The class at ``package.module.Name``."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _remote(values) -> dict:
    spec = values.get(REMOTE_KEY) if isinstance(values, dict) else getattr(values, REMOTE_KEY, None)
    if not spec:
        raise ValueError(f"this config has no {REMOTE_KEY!r} entry: it is not a gisp export")
    return spec


class GispConfig(PretrainedConfig):
    """The config ``auto_map`` names. Loading it returns the family's config subclass
    (:func:`config_class`), which validates each layer's shape instead of the global one."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if cls is not GispConfig:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        config_dict, _ = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **kwargs)
        return config_class(_remote(config_dict)["config"]).from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        if cls is not GispConfig:
            return super().from_dict(config_dict, **kwargs)
        return config_class(_remote(config_dict)["config"]).from_dict(config_dict, **kwargs)

    def validate(self) -> None:
        """The stock validators, except that the architecture check runs per layer: the stock one
        (e.g. ``hidden_size % num_attention_heads == 0``) stops holding once heads are pruned, as
        head_dim stays explicit; every layer only needs whole KV groups."""
        for validator in self.__class_validators__:
            if validator.__name__ != "validate_architecture":
                validator(self)
        layers = self.per_layer_config if self.is_heterogeneous else [self]
        for i, layer in enumerate(layers):
            heads, kv = layer.num_attention_heads, layer.num_key_value_heads
            if kv < 1 or heads < 1 or heads % kv != 0:
                raise ValueError(f"layer {i}: {heads} attention heads cannot be grouped over {kv} KV heads")


@lru_cache(maxsize=None)
def config_class(stock: str) -> type:
    """``GispConfig`` built on the stock config class at import path ``stock``."""
    base = _import(stock)
    return type("GispConfig", (GispConfig, base), {"__module__": __name__, "__doc__": GispConfig.__doc__})


class GispForCausalLM(PreTrainedModel):
    """The model ``auto_map`` names. Constructing or loading it gives the family's subclass
    (:func:`model_class`), which builds each decoder layer from ``config.per_layer_config[i]``."""

    config_class = GispConfig

    def __new__(cls, config, *args, **kwargs):
        if cls is GispForCausalLM:
            cls = model_class(_remote(config)["model"], type(config))
        return super().__new__(cls)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        if cls is not GispForCausalLM:
            return super().from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)
        if not isinstance(config, PretrainedConfig):
            config = GispConfig.from_pretrained(pretrained_model_name_or_path, **_config_kwargs(kwargs))
        family = model_class(_remote(config)["model"], type(config))
        return family.from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config, **kwargs):
        if cls is not GispForCausalLM:
            return super()._from_config(config, **kwargs)
        return model_class(_remote(config)["model"], type(config))._from_config(config, **kwargs)

    def __init__(self, config, *args, **kwargs) -> None:
        # The stock constructor reads per-layer sizes from the global config; let it see the
        # dense values, then replace every layer with one built from its own config.
        spec = _remote(config)
        quiet = logging.get_logger("transformers.integrations.heterogeneity.configuration_utils")
        level, allowed = quiet.level, config.__dict__.get("allow_global_per_layer_attribute_access", False)
        config.allow_global_per_layer_attribute_access = True
        quiet.setLevel(logging.ERROR)  # the global read is intended: those layers are replaced below
        try:
            super().__init__(config, *args, **kwargs)
        finally:
            config.allow_global_per_layer_attribute_access = allowed
            quiet.setLevel(level)
        if config.is_heterogeneous:
            stock_layers = self.get_submodule(spec["layers"])
            layer_class = type(stock_layers[0])
            parent, _, attr = spec["layers"].rpartition(".")
            setattr(self.get_submodule(parent) if parent else self, attr,
                    nn.ModuleList(layer_class(config.per_layer_config[i], i) for i in range(len(stock_layers))))
        for name in spec.get("added_biases") or []:
            linear = self.get_submodule(name)
            linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype))
        self.post_init()


def _config_kwargs(kwargs: dict) -> dict:
    """The loading options a config also takes (where to find the files), not model options."""
    keys = ("cache_dir", "force_download", "proxies", "token", "revision", "local_files_only", "subfolder",
            "trust_remote_code", "code_revision")
    return {k: kwargs[k] for k in keys if k in kwargs}


@lru_cache(maxsize=None)
def model_class(stock: str, config: type) -> type:
    """``GispForCausalLM`` built on the stock model class at import path ``stock``."""
    base = _import(stock)
    return type("GispForCausalLM", (GispForCausalLM, base),
                {"__module__": __name__, "__doc__": GispForCausalLM.__doc__, "config_class": config})

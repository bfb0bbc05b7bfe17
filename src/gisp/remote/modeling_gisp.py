"""Modeling code for gisp exports whose layers have different sizes.

This file is copied into an exported checkpoint and loaded by
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``. It must stay
self-contained: it imports only ``torch`` and ``transformers``, never ``gisp``.

The config follows transformers' ``per_layer_config`` convention: global values are the
dense model's, and ``per_layer_config[i]`` overrides ``num_attention_heads``,
``num_key_value_heads`` and ``intermediate_size`` of layer ``i``. Each model class
subclasses the stock transformers class and only rebuilds its decoder layers from the
per-layer configs, so the stock forward code runs unchanged. ``added_biases`` names linear
layers (e.g. ``model.layers.3.self_attn.o_proj``) that carry a bias the stock class lacks
(bias compensation); they get one, filled from the checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama.configuration_llama import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaForCausalLM
from transformers.models.mistral.configuration_mistral import MistralConfig
from transformers.models.mistral.modeling_mistral import (
    MistralDecoderLayer,
    MistralForCausalLM,
)
from transformers.models.qwen2.configuration_qwen2 import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2ForCausalLM
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3ForCausalLM
from transformers.utils import logging


class _PerLayerConfigMixin:
    """Validates each layer's attention shape instead of the global one.

    The stock check (``hidden_size % num_attention_heads == 0``) does not hold once heads are
    pruned; head_dim stays explicit, so every layer only needs whole KV groups.
    """

    def validate(self) -> None:
        for validator in self.__class_validators__:
            if validator.__name__ == "validate_architecture":
                self._validate_layer_shapes()
            else:
                validator(self)

    def _validate_layer_shapes(self) -> None:
        for i, layer in enumerate(self.per_layer_config):
            heads, kv = layer.num_attention_heads, layer.num_key_value_heads
            if kv < 1 or heads < 1 or heads % kv != 0:
                raise ValueError(f"layer {i}: {heads} attention heads cannot be grouped over {kv} KV heads")


class _PerLayerModelMixin:
    """Builds each decoder layer from ``config.per_layer_config[i]``."""

    decoder_layer_class: type[nn.Module]

    def __init__(self, config) -> None:
        # The stock constructor reads per-layer sizes from the global config; let it see the
        # dense values, then replace every layer with one built from its own config.
        quiet = logging.get_logger("transformers.integrations.heterogeneity.configuration_utils")
        level = quiet.level
        config.allow_global_per_layer_attribute_access = True
        quiet.setLevel(logging.ERROR)  # the global read is intended: those layers are replaced below
        try:
            super().__init__(config)
        finally:
            config.__dict__.pop("allow_global_per_layer_attribute_access", None)
            quiet.setLevel(level)
        self.model.layers = nn.ModuleList(
            self.decoder_layer_class(config.per_layer_config[i], i) for i in range(config.num_hidden_layers)
        )
        for name in getattr(config, "added_biases", None) or []:
            linear = self.get_submodule(name)
            linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype))
        self.post_init()


class GispLlamaConfig(_PerLayerConfigMixin, LlamaConfig):
    pass


class GispLlamaForCausalLM(_PerLayerModelMixin, LlamaForCausalLM):
    config_class = GispLlamaConfig
    decoder_layer_class = LlamaDecoderLayer


class GispMistralConfig(_PerLayerConfigMixin, MistralConfig):
    pass


class GispMistralForCausalLM(_PerLayerModelMixin, MistralForCausalLM):
    config_class = GispMistralConfig
    decoder_layer_class = MistralDecoderLayer


class GispQwen2Config(_PerLayerConfigMixin, Qwen2Config):
    pass


class GispQwen2ForCausalLM(_PerLayerModelMixin, Qwen2ForCausalLM):
    config_class = GispQwen2Config
    decoder_layer_class = Qwen2DecoderLayer


class GispQwen3Config(_PerLayerConfigMixin, Qwen3Config):
    pass


class GispQwen3ForCausalLM(_PerLayerModelMixin, Qwen3ForCausalLM):
    config_class = GispQwen3Config
    decoder_layer_class = Qwen3DecoderLayer

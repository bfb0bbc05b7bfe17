"""Llama-style decoder layers: Llama, Mistral, Qwen2 (q/k/v biases) and Qwen3 (q/k norms).

All four keep ``model.model.layers[i].self_attn.{q,k,v,o}_proj`` and
``.mlp.{gate,up,down}_proj``; Qwen3's per-head ``q_norm``/``k_norm`` act on ``head_dim``, which
pruning never changes.
"""

from __future__ import annotations

from torch import nn

from gisp.adapters.base import LayerModules, ModelAdapter, register_adapter


class _LlamaLayout(ModelAdapter):
    """Shared layout of the Llama family."""

    def layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.model.layers)

    def layer_modules(self, layer: nn.Module) -> LayerModules:
        attn, mlp = layer.self_attn, layer.mlp
        return LayerModules(
            q=attn.q_proj, k=attn.k_proj, v=attn.v_proj, o=attn.o_proj,
            gate=mlp.gate_proj, up=mlp.up_proj, down=mlp.down_proj,
        )


@register_adapter
class LlamaAdapter(_LlamaLayout):
    model_types = ("llama",)
    remote_class_prefix = "GispLlama"


@register_adapter
class MistralAdapter(_LlamaLayout):
    model_types = ("mistral",)
    remote_class_prefix = "GispMistral"


@register_adapter
class Qwen2Adapter(_LlamaLayout):
    model_types = ("qwen2",)
    remote_class_prefix = "GispQwen2"


@register_adapter
class Qwen3Adapter(_LlamaLayout):
    model_types = ("qwen3",)
    remote_class_prefix = "GispQwen3"

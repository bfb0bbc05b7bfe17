"""Llama-style decoder layers: Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms)
and Granite (embedding/attention/residual/logit multipliers, kept in the config).

All keep ``model.model.layers[i].self_attn.{q,k,v,o}_proj`` and ``.mlp.{gate,up,down}_proj``;
Qwen3's ``q_norm``/``k_norm`` act on ``head_dim``, which pruning never changes.
"""

from __future__ import annotations

import torch
from torch import nn

from gisp.adapters.base import LayerModules, ModelAdapter, register_adapter


class LlamaLayout(ModelAdapter):
    """Separate q/k/v/o and gate/up/down projections under ``self_attn`` and ``mlp``."""

    def layer_modules(self, layer: nn.Module) -> LayerModules:
        attn, mlp = layer.self_attn, layer.mlp
        return LayerModules(
            q=attn.q_proj, k=attn.k_proj, v=attn.v_proj, o=attn.o_proj,
            gate=mlp.gate_proj, up=mlp.up_proj, down=mlp.down_proj,
        )


@register_adapter
class LlamaAdapter(LlamaLayout):
    model_types = ("llama", "mistral", "qwen2", "qwen3", "granite")

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Granite divides its logits by ``logits_scaling``; the others leave them as they are."""
        return super().logits(model, hidden) / getattr(self.config, "logits_scaling", 1.0)

    def gguf_architecture(self) -> str | None:
        """Llama, and Mistral without a sliding window, are llama.cpp's ``llama`` (``deci`` when
        layers differ); the others need their own llama.cpp graphs (biases' RoPE layout, q/k
        norms, multipliers), which have no per-layer sizes."""
        c = self.config
        if c.model_type == "llama" or (c.model_type == "mistral" and getattr(c, "sliding_window", None) is None):
            return "llama"
        return None

"""Phi-3 / Phi-4-mini: fused ``qkv_proj`` (rows ``[q; k; v]``) and ``gate_up_proj`` (rows
``[gate; up]``, split by ``chunk(2)``). Each role is a block of the fused rows; the export slices
every block exactly and concatenates them back in the same order.
"""

from __future__ import annotations

from torch import nn

from gisp.adapters.base import FusedRows, LayerModules, ModelAdapter, register_adapter


@register_adapter
class Phi3Adapter(ModelAdapter):
    model_types = ("phi3",)

    def layer_modules(self, layer: nn.Module) -> LayerModules:
        g = self.geometry()
        attn, mlp = layer.self_attn, layer.mlp
        q_rows, kv_rows = g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim
        f = mlp.gate_up_proj.out_features // 2
        qkv, gate_up = attn.qkv_proj, mlp.gate_up_proj
        return LayerModules(
            q=FusedRows(qkv, 0, q_rows), k=FusedRows(qkv, q_rows, q_rows + kv_rows),
            v=FusedRows(qkv, q_rows + kv_rows, q_rows + 2 * kv_rows), o=attn.o_proj,
            gate=FusedRows(gate_up, 0, f), up=FusedRows(gate_up, f, 2 * f), down=mlp.down_proj,
        )

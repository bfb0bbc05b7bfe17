"""``wanda-sp``: structured Wanda (An et al. 2024, the FLAP paper's baseline).

Each input column ``j`` of ``o_proj`` / ``down_proj`` scores ``mean_i |W_ij| * ||X_j||_2`` over
the calibration tokens; a head is the sum of its ``head_dim`` columns, a channel its ``down_proj``
column. Every unprotected layer loses the same fraction of heads and channels. Layers are scored
in order, each fed the outputs of the earlier layers already pruned to that fraction; a layer's
own statistics come from its unpruned forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gisp import saliency
from gisp.statistics import LayerStats, layerwise_input_stats
from gisp.adapters.base import ModelAdapter
from gisp.importance import Scores, StepContext
from gisp.methods.base import Method, register_method
from gisp.selection import block_fractions
from gisp.structures import uniform_ratio


@dataclass
class WandaSPImportance:
    batches: list[dict]
    progress: bool = True

    @torch.no_grad()
    def __call__(self, model: nn.Module, adapter: ModelAdapter, context: StepContext) -> Scores:
        geo = adapter.geometry()
        mods = adapter.all_layer_modules(model)
        masks = context.masks
        heads = torch.zeros(geo.num_layers, geo.num_heads)
        channels = torch.zeros(geo.num_layers, geo.intermediate_size)
        ratio = uniform_ratio(context.target, context.shape, list(context.protected))

        def on_layer(layer: int, stats: LayerStats) -> tuple[torch.Tensor, torch.Tensor]:
            columns = saliency.wanda_columns(mods[layer].o.weight.cpu(), stats.attention.sq_norm)
            heads[layer] = saliency.head_reduce(columns, geo.head_dim, "sum")
            channels[layer] = saliency.wanda_columns(mods[layer].down.weight.cpu(), stats.mlp.sq_norm)
            keep_heads, keep_channels = masks.heads[layer].clone(), masks.channels[layer].clone()
            if layer not in context.protected:  # what this step will remove here, for the next layers
                keep_heads &= block_fractions(heads[layer], masks.heads[layer]) > ratio
                keep_channels &= block_fractions(channels[layer], masks.channels[layer]) > ratio
            return keep_heads.repeat_interleave(geo.head_dim), keep_channels  # [H] -> [H*hd]

        layerwise_input_stats(model, adapter, self.batches, on_layer, self.progress)
        return Scores(heads, channels)


register_method(Method(
    name="wanda-sp", summary="|W| x input norm of o_proj/down_proj columns, same ratio per layer, layers in order",
    build=lambda inputs: WandaSPImportance(inputs.batches, inputs.progress), scope="layer",
))

"""``flap``: FLAP (An et al. 2024), the fluctuation metric with adaptive structure and bias compensation.

Each input feature ``j`` of ``o_proj`` / ``down_proj`` gets ``v_j = Var(x_j) * ||W[:, j]||^2``
over the calibration tokens (attention uses ``v_j^2``, as the official code does). Scores are
standardised within each (layer, block type), a head scoring the mean of its features' z-scores,
and all heads and channels are ranked globally (FLAP's adaptive structure search; the budget walk
counts exact parameters). Each removed feature's mean input, pushed through its column, becomes a
bias of ``o_proj`` / ``down_proj`` (:mod:`gisp.compensation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gisp import saliency
from gisp.statistics import input_means, input_stats
from gisp.adapters.base import ModelAdapter
from gisp.importance import Scores, StepContext
from gisp.methods.base import Method, register_method


@dataclass
class FlapImportance:
    batches: list[dict]
    progress: bool = True

    @torch.no_grad()
    def __call__(self, model: nn.Module, adapter: ModelAdapter, context: StepContext) -> Scores:
        geo = adapter.geometry()
        stats = input_stats(model, adapter, self.batches, self.progress)
        heads, channels = [], []
        for layer, mods in enumerate(adapter.all_layer_modules(model)):
            attention = saliency.fluctuation(mods.o.weight.cpu(), stats[layer].attention.variance).pow(2)
            alive = context.masks.heads[layer].repeat_interleave(geo.head_dim)  # [H] -> [H*hd]
            heads.append(saliency.head_reduce(saliency.standardize(attention, alive), geo.head_dim, "mean"))
            mlp = saliency.fluctuation(mods.down.weight.cpu(), stats[layer].mlp.variance)
            channels.append(saliency.standardize(mlp, context.masks.channels[layer]))
        return Scores(torch.stack(heads), torch.stack(channels), input_means=input_means(stats))


register_method(Method(
    name="flap", summary="fluctuation of o_proj/down_proj inputs, standardised per block, global, bias compensation",
    build=lambda inputs: FlapImportance(inputs.batches, inputs.progress), scope="global",
    compensate=True, can_compensate=True, searchable=False,
))

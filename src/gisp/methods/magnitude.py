"""``magnitude``: the weight norm of each structure, per parameter, one global ranking (a floor).

A head's weights are its q rows and o columns (and K/V rows without GQA), a channel's its gate/up
rows and down column, as for ``gisp``; the score is the squared norm divided by the structure's
parameter count (``params`` normalisation), so heads and channels compare. No data is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gisp import saliency
from gisp.adapters.base import ModelAdapter
from gisp.importance import Scores, StepContext
from gisp.methods.base import Method, register_method


@dataclass
class MagnitudeImportance:
    @torch.no_grad()
    def __call__(self, model: nn.Module, adapter: ModelAdapter, context: StepContext) -> Scores:
        geo = adapter.geometry()
        mha = geo.num_kv_heads == geo.num_heads
        heads, channels = [], []
        for mods in adapter.all_layer_modules(model):
            sq = {role: saliency.squared_weights(lin.weight.cpu()) for role, lin in mods.linears().items()}
            heads.append(saliency.head_scores(sq["q"], sq["o"], geo.head_dim,
                                              k=sq["k"] if mha else None, v=sq["v"] if mha else None))
            channels.append(saliency.channel_scores(sq.get("gate"), sq["up"], sq["down"]))
        return Scores(torch.stack(heads), torch.stack(channels))


register_method(Method(
    name="magnitude", summary="squared weight norm per parameter of each structure, global ranking",
    build=lambda inputs: MagnitudeImportance(), scope="global", normalize="params", uses_data=False,
))

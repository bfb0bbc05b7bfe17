"""``shortgpt``: ShortGPT (Men et al. 2024), removal of whole layers by Block Influence.

A layer's influence is ``1 - cos(h_in, h_out)`` averaged over the calibration tokens; whole
unprotected layers are removed, lowest influence first, while the budget allows. An export drops
the emptied layers (``num_hidden_layers`` shrinks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gisp.statistics import block_influence
from gisp.adapters.base import ModelAdapter
from gisp.importance import Scores, StepContext
from gisp.methods.base import Method, register_method


@dataclass
class BlockInfluenceImportance:
    batches: list[dict]
    progress: bool = True

    @torch.no_grad()
    def __call__(self, model: nn.Module, adapter: ModelAdapter, context: StepContext) -> Scores:
        geo = adapter.geometry()
        influence = block_influence(model, adapter, self.batches, self.progress)
        return Scores(influence[:, None].expand(-1, geo.num_heads).clone(),
                      influence[:, None].expand(-1, geo.intermediate_size).clone(), layers=influence)


register_method(Method(
    name="shortgpt", summary="whole layers with the lowest block influence 1 - cos(h_in, h_out)",
    build=lambda inputs: BlockInfluenceImportance(inputs.batches, inputs.progress), scope="depth",
))

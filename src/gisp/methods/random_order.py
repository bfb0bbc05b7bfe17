"""``random``: seeded random scores, one global ranking (the floor every method must clear).

Scores are drawn from ``--seed`` and the step, so a run is reproducible; no data is read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gisp.adapters.base import ModelAdapter
from gisp.importance import Scores, StepContext
from gisp.methods.base import Method, register_method


@dataclass
class RandomImportance:
    seed: int = 0

    @torch.no_grad()
    def __call__(self, model: nn.Module, adapter: ModelAdapter, context: StepContext) -> Scores:
        geo = adapter.geometry()
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + context.step)
        return Scores(torch.rand(geo.num_layers, geo.num_heads, generator=gen),
                      torch.rand(geo.num_layers, geo.intermediate_size, generator=gen))


register_method(Method(
    name="random", summary="seeded random scores, global ranking",
    build=lambda inputs: RandomImportance(inputs.seed), scope="global", uses_data=False,
))

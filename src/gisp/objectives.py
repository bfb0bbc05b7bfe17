"""Objectives: ``(model, batch) -> scalar loss`` callables that importance differentiates.

Any callable with this signature can be passed to :func:`gisp.prune` (``objective=...``) to prune
for a user's own loss.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

Objective = Callable[[nn.Module, dict], torch.Tensor]


def lm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy on every token (labels default to the inputs; ``-100`` is ignored)."""
    labels = batch.get("labels", batch["input_ids"])
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=labels).loss


OBJECTIVES: dict[str, Objective] = {"lm": lm_loss}

"""Pure tensor math of GISP importance: per-weight saliency, aggregation, normalisation.

No model, no data: these functions take weights, gradients and scores, so they are unit-tested
against hand computations.
"""

from __future__ import annotations

from typing import Literal

import torch

NORMALIZATIONS = ("reference", "params", "zscore")
Normalization = Literal["reference", "params", "zscore"]


def weight_saliency(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """First-order Taylor saliency ``|W * g|`` per weight, in float32.

    ``grad`` is the gradient already averaged over the calibration set: the absolute value is
    taken after averaging, not per sample.
    """
    return (weight.float() * grad.float()).abs()


def head_scores(
    q: torch.Tensor, o: torch.Tensor, head_dim: int,
    k: torch.Tensor | None = None, v: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum saliency over each query head's weights -> [H].

    ``q``: [H*hd, d] saliency of q_proj; ``o``: [d, H*hd] saliency of o_proj. ``k``/``v`` are given
    only for multi-head attention, where each head owns its K/V rows; under GQA K/V are shared and
    not part of a head's score.
    """
    num_heads = q.shape[0] // head_dim
    score = q.reshape(num_heads, -1).sum(1)  # [H, hd*d] -> [H]
    score = score + o.reshape(o.shape[0], num_heads, head_dim).sum((0, 2))  # [d, H, hd] -> [H]
    for kv in (k, v):
        if kv is not None:
            score = score + kv.reshape(num_heads, -1).sum(1)
    return score


def channel_scores(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Sum saliency over each MLP channel: a row of gate and up ([F, d]), a column of down ([d, F]) -> [F]."""
    return gate.sum(1) + up.sum(1) + down.sum(0)


def _zscore(scores: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Standardise each row over its alive entries; dead entries become +inf (never re-selected)."""
    out = torch.full_like(scores, float("inf"))
    for row in range(scores.shape[0]):
        vals = scores[row][alive[row]]
        if vals.numel() == 0:
            continue
        std = vals.std(unbiased=False) if vals.numel() > 1 else vals.new_tensor(0.0)
        out[row][alive[row]] = (vals - vals.mean()) / (std + 1e-12)
    return out


def normalize(
    heads: torch.Tensor, channels: torch.Tensor, method: Normalization, *,
    hidden_size: int, head_dim: int, intermediate_size: int, mha: bool,
    heads_alive: torch.Tensor | None = None, channels_alive: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make head and channel scores comparable in one global ranking.

    - ``reference``: heads / (4 * hd * d), channels / (3 * d_ff), as the GISP reference code does.
    - ``params``: each structure divided by its own parameter count (a GQA head owns only its q rows
      and o columns, 2 * hd * d; an MHA head 4 * hd * d; a channel 3 * d).
    - ``zscore``: standardised within each (layer, block type) over the structures still alive.
    """
    if method == "reference":
        return heads / (4 * head_dim * hidden_size), channels / (3 * intermediate_size)
    if method == "params":
        head_params = (4 if mha else 2) * head_dim * hidden_size
        return heads / head_params, channels / (3 * hidden_size)
    if method == "zscore":
        ha = heads_alive if heads_alive is not None else torch.ones_like(heads, dtype=torch.bool)
        ca = channels_alive if channels_alive is not None else torch.ones_like(channels, dtype=torch.bool)
        return _zscore(heads, ha), _zscore(channels, ca)
    raise ValueError(f"unknown normalization {method!r}; choose from {', '.join(NORMALIZATIONS)}")

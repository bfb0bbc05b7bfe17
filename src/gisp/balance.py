"""How many heads against how many channels: the exchange rate of a global ranking, chosen by loss.

A global ranking compares a head's score with a channel's. Scores per parameter saved
(``params``) are the natural common unit, but first-order scores of the two block types are not
calibrated against each other: on SmolLM2-135M the best rate differs 4x between WikiText and
GSM8K calibration, and any fixed divisor (the GISP reference's included) is far from the best on
one of them (``benchmarks/exchange_rate.py``, ``docs/results/history.md``). So ``--normalize search`` lets the
calibration loss decide, at every step (:func:`search_step`):

1. for each rate ``r`` in :data:`EXCHANGE_RATES`, multiply the heads' per-parameter scores by
   ``r`` (``r > 1``: heads look more important, fewer are removed) and select, from the current
   masks, everything up to the run's *final* sparsity in one shot (a look-ahead);
2. measure the calibration loss of each distinct look-ahead (masks applied through removable
   hooks, weights untouched) and keep the rate of the lowest;
3. remove only this step's share with that rate (:func:`select_at_rate`).

Comparing candidates at the final sparsity, not at the step's, matters: a small step almost always
looks cheapest with MLP channels only (a few channels per layer cost little loss; a head is a big
indivisible block), so a per-step choice drifts to removing no heads, which is not the best end
point (on SmolLM2-135M / WikiText it ended at 50% with a higher calibration loss than the
look-ahead). The look-ahead compares where each rate leads. The chosen rate and every look-ahead's
loss are recorded in the step's record.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

from gisp.adapters.base import ModelAdapter
from gisp.compensation import InputMeans
from gisp.masking import masked_view
from gisp.selection import global_ranking, select_under_budget
from gisp.structures import LayerShape, Masks, Structure

#: Head-score multipliers tried at every step: a geometric grid around 1 (per parameter saved) in
#: steps of sqrt(2). On SmolLM2-135M the best one-shot rate was 0.5 on WikiText and between 1 and 2
#: on GSM8K; 1/8 and 8 were never useful (``benchmarks/results/exchange_rate.md``).
EXCHANGE_RATES = tuple(round(2 ** (k / 2), 4) for k in range(-4, 5))  # 0.25 ... 4


@dataclass
class Candidate:
    """One look-ahead: the masks some exchange rates lead to (several rates can give the same),
    the heads those rates remove on the way, and the calibration loss once measured."""

    rates: list[float]
    heads: int
    masks: Masks
    loss: float | None = None


def candidates(
    heads: torch.Tensor, channels: torch.Tensor, masks: Masks, protected: list[int], shape: LayerShape,
    removed: int, target_removed: float, rates: tuple[float, ...] = EXCHANGE_RATES,
) -> list[Candidate]:
    """One selection under the step's budget per rate (``heads`` and ``channels`` normalised per
    parameter); rates giving the same selection share one candidate."""
    out: dict[tuple, Candidate] = {}
    for rate in rates:
        trial = masks.clone()
        chosen = select_at_rate(heads, channels, trial, protected, shape, removed, target_removed, rate)
        key = (trial.heads.numpy().tobytes(), trial.channels.numpy().tobytes())
        if key in out:
            out[key].rates.append(rate)
        else:
            out[key] = Candidate([rate], sum(1 for s in chosen if s.kind == "head"), trial)
    return list(out.values())


def preferred_rate(rates: list[float]) -> float:
    """Of rates giving the same selection, the one nearest 1 (per parameter saved) in log scale."""
    return min(rates, key=lambda r: (abs(math.log2(r)), r))


def select_at_rate(
    heads: torch.Tensor, channels: torch.Tensor, masks: Masks, protected: list[int], shape: LayerShape,
    removed: int, target_removed: float, rate: float,
) -> list[Structure]:
    """This step's removals with the head scores scaled by ``rate`` (``masks`` updated in place)."""
    return select_under_budget(global_ranking(heads * rate, channels, masks, protected), masks, shape, removed, target_removed)


View = Callable[[Masks, InputMeans | None], AbstractContextManager[nn.Module]]


def choose(model: nn.Module, adapter: ModelAdapter, options: list[Candidate], loss: Callable[[nn.Module], float],
           means: InputMeans | None = None, view: View | None = None) -> Candidate:
    """The candidate with the lowest calibration loss (ties: the rate nearest 1); every
    candidate's ``loss`` is filled in (bias-compensated with ``means``). A single candidate is
    returned without a forward pass. ``view(masks, means)`` gives the model to measure a
    candidate on (default: ``model`` under :func:`gisp.masking.masked_view`; a compacted copy
    under :mod:`gisp.compaction`)."""
    if len(options) == 1:
        return options[0]
    view = view or (lambda masks, fill: masked_view(model, adapter, masks, fill))
    for option in options:
        with view(option.masks, means) as candidate:
            option.loss = loss(candidate)
    return min(options, key=lambda o: (o.loss, abs(math.log2(preferred_rate(o.rates)))))


def search_step(
    model: nn.Module, adapter: ModelAdapter, heads: torch.Tensor, channels: torch.Tensor, masks: Masks,
    protected: list[int], shape: LayerShape, removed: int, step_removed: float, final_removed: float,
    loss: Callable[[nn.Module], float], means: InputMeans | None = None, view: View | None = None,
) -> tuple[list[Structure], float, list[Candidate]]:
    """One step of ``--normalize search``: look-aheads to ``final_removed`` at every rate, the rate
    of the lowest calibration loss (compensated with ``means`` when the run compensates), and this
    step's removals (up to ``step_removed``) at that rate.

    ``masks`` is updated in place; returns the removals, the rate and every look-ahead."""
    options = candidates(heads, channels, masks, protected, shape, removed, final_removed)
    rate = preferred_rate(choose(model, adapter, options, loss, means, view).rates)
    return select_at_rate(heads, channels, masks, protected, shape, removed, step_removed, rate), rate, options

"""``gisp`` (GISP, Wang et al. 2026) and ``llm-pruner`` (Ma et al. 2023, block-wise Taylor).

Both score with Taylor importance from the objective's gradient over the calibration set, summed
per structure. They differ in what a structure is and how it is ranked:

- ``gisp``: a head is scored by its ``o_proj`` columns and a channel by its ``down_proj`` column
  (``taylor_weights="output"``), as a removal whose mean input is kept as an output bias (bias
  compensation, ``compensate=True``, the driver adds the bias). The score is the sum over
  calibration tokens of the squared first-order loss change of that removal
  (``saliency="fisher"``, :func:`gisp.saliency.fisher_scores`); ``--saliency first-order`` is the
  paper's ``|W * g|`` of the mean gradient (:func:`gisp.saliency.compensated_saliency`), which
  cancels across tokens and ranks worse (``docs/results/history.md``). Each score is divided by the
  parameters its removal saves, with the
  head/channel exchange rate chosen by calibration loss at every step (``normalize="search"``,
  :mod:`gisp.balance`), and all are ranked globally across layers; iterative (scores recomputed on
  the pruned model at every step). The reference code's scoring, q rows + o columns of a head and
  gate/up rows + down column of a channel with its ``reference`` divisors, is ``--taylor-weights
  all --normalize reference``: on SmolLM2-135M it ranks worse (``benchmarks/quality.py``,
  ``benchmarks/exchange_rate.py``; ``docs/results/history.md`` explains why).
- ``llm-pruner``: a head is its whole coupled KV group (q/k/v rows and o columns), removed
  together; no normalisation; the same fraction of every unprotected layer; one shot, no LoRA.
"""

from __future__ import annotations

from gisp.gradients import TaylorImportance
from gisp.methods.base import Method, MethodInputs, register_method


def _taylor(aggregate: str):
    def build(inputs: MethodInputs) -> TaylorImportance:
        return TaylorImportance(inputs.batches, inputs.objective, progress=inputs.progress, aggregate=aggregate,
                                weights=inputs.taylor_weights, compensate=inputs.compensate,
                                saliency=inputs.saliency, checkpointing=inputs.checkpointing)
    return build


register_method(Method(
    name="gisp", summary="Fisher (per-token squared first-order) loss change of removing o/down columns with bias "
            "compensation, head/channel rate searched, global ranking, iterative",
    build=_taylor("head"), scope="global", normalize="search", steps=8, uses_gradients=True, taylor_weights="output",
    compensate=True, can_compensate=True, saliency="fisher",
))
register_method(Method(
    name="llm-pruner", summary="first-order Taylor |W*g| per coupled KV group and channel, same ratio per layer",
    build=_taylor("kv-group"), scope="layer", head_unit="kv-group", uses_gradients=True, taylor_weights="all",
    saliency="first-order",
))

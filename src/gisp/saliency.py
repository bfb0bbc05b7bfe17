"""Pure tensor math of every importance: per-weight saliency, aggregation, normalisation.

No model, no data: these functions take weights, gradients, activation statistics and scores, so
they are unit-tested against hand computations. Conventions: ``q``/``k``/``v``/``gate``/``up``
saliencies are ``[out, d]`` (a structure owns rows), ``o``/``down`` are ``[d, in]`` (a structure
owns columns).
"""

from __future__ import annotations

from typing import Literal

import torch

TAYLOR_WEIGHTS = ("all", "output")
SALIENCIES = ("first-order", "fisher")
FIXED_NORMALIZATIONS = ("params", "reference", "zscore", "none")  # rules normalize() applies
NORMALIZATIONS = ("search", *FIXED_NORMALIZATIONS)  # --normalize; "search" is gisp.ranking's ExchangeRateSearch
Normalization = Literal["params", "reference", "zscore", "none"]


def weight_saliency(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """First-order Taylor saliency ``|W * g|`` per weight, in float32.

    ``grad`` is the gradient already averaged over the calibration set: the absolute value is
    taken after averaging, not per sample.
    """
    return (weight.float() * grad.float()).abs()


def compensated_saliency(weight: torch.Tensor, grad: torch.Tensor, output_grad: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """First-order saliency of removing an output projection's input columns *with bias
    compensation*, per weight -> [d, in].

    Compensation replaces input ``x_j`` by its calibration mean ``mu_j`` instead of zero, so the
    output changes by ``W[:, j] * (x_j - mu_j)`` and the first-order loss change is
    ``sum_i W_ij * (g_ij - mu_j * b_i)``, with ``g`` [d, in] the mean gradient of ``W`` and ``b`` [d]
    the mean gradient of the projection's output summed over tokens (a bias's gradient). A feature
    whose input is nearly constant costs almost nothing to remove once compensated.
    """
    return (weight.float() * (grad.float() - output_grad.float()[:, None] * means.float()[None, :])).abs()


def fisher_moments(grad_in: torch.Tensor, inputs: torch.Tensor, group: int,
                   samples: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token moments of an output projection's input features, grouped into structures of
    ``group`` features (a head's ``head_dim`` columns, a channel's one), summed over tokens.

    ``grad_in`` [N, n] is ``dL/dx`` of each token's input ``x`` = ``inputs`` [N, n]. With
    ``p = grad_in * inputs`` per feature and ``A = sum_group p`` per structure, returns (float64)
    ``sum_t A^2`` [G], ``sum_t A * grad_in`` [G, group] and ``sum_t grad_in grad_in^T`` [G, group, group]:
    what :func:`fisher_scores` needs to evaluate the squared effect of replacing ``x`` by any
    constant, without a second pass once that constant (the mean) is known.

    ``samples`` [N] (indices, from 0): the objective's sample each token belongs to, when its loss
    is not a sum of per-token terms of one sign. A margin loss differs the CE of a question's
    options: a removal that raises every option's CE alike leaves it unchanged, which per-token
    squares would count in full. With ``samples`` the first-order effects are summed within each
    sample before squaring (``A`` and ``s`` become per-sample sums), the empirical Fisher of the
    objective's own samples.
    """
    s = grad_in.float().reshape(grad_in.shape[0], -1, group)  # [N, n] -> [N, G, g]
    a = (s * inputs.float().reshape(s.shape)).sum(-1)  # [N, G]
    if samples is not None:  # per-sample sums: [N, G] -> [Q, G], [N, G, g] -> [Q, G, g]
        count = int(samples.max()) + 1 if samples.numel() else 0
        a = a.new_zeros(count, a.shape[1]).index_add_(0, samples, a)
        s = s.new_zeros(count, *s.shape[1:]).index_add_(0, samples, s)
    moments = a.pow(2).sum(0), torch.einsum("ng,ngi->gi", a, s), torch.einsum("ngi,ngj->gij", s, s)
    return tuple(m.double() for m in moments)


def fisher_scores(aa: torch.Tensor, a_s: torch.Tensor, ss: torch.Tensor, means: torch.Tensor | None) -> torch.Tensor:
    """Empirical-Fisher importance of each structure -> [G]: ``sum_t (sum_j dL/dx_j(t) * (x_j(t) - mu_j))^2``.

    Removing a structure moves each token's input features from ``x_j(t)`` to ``mu_j`` (its
    calibration mean under bias compensation, 0 without: ``means=None``); the loss change of a
    token is to first order ``sum_j dL/dx_j(t) (x_j(t) - mu_j)``. The first-order sum over tokens
    can cancel (a trained model sits near a minimum); the sum of squares is the Fisher
    (Gauss-Newton) estimate of the second-order loss increase, which cannot. ``aa``, ``a_s``, ``ss``
    come from :func:`fisher_moments`; ``means`` is [G * g].
    """
    if means is None:
        return aa.float()
    mu = means.double().reshape(a_s.shape)  # [G*g] -> [G, g]
    score = aa - 2 * (a_s * mu).sum(-1) + torch.einsum("gi,gij,gj->g", mu, ss, mu)
    return score.clamp(min=0).float()


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


def channel_scores(gate: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Sum saliency over each MLP channel: a row of gate (``None`` for a non-gated MLP) and up
    ([F, d]), a column of down ([d, F]) -> [F]."""
    score = up.sum(1) + down.sum(0)
    return score if gate is None else score + gate.sum(1)


def kv_group_scores(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, head_dim: int, group_size: int,
) -> torch.Tensor:
    """Sum saliency over each coupled KV group -> [KV] (LLM-Pruner's head groups).

    A group is one KV head's k and v rows plus the q rows and o columns of the ``group_size`` query
    heads that read it (query head ``h`` reads KV head ``h // group_size``, as ``repeat_kv``).
    Under multi-head attention (``group_size`` 1) it is one head with its own q/k/v rows.
    """
    num_kv = k.shape[0] // head_dim
    score = q.reshape(num_kv, -1).sum(1)  # [KV*g*hd, d] -> [KV]
    score = score + o.reshape(o.shape[0], num_kv, group_size * head_dim).sum((0, 2))  # [d, KV, g*hd] -> [KV]
    return score + k.reshape(num_kv, -1).sum(1) + v.reshape(num_kv, -1).sum(1)


def head_reduce(columns: torch.Tensor, head_dim: int, how: Literal["sum", "mean"] = "sum") -> torch.Tensor:
    """Per-feature scores of ``o_proj``'s inputs ([H*hd]) -> per-head scores ([H])."""
    per_head = columns.reshape(-1, head_dim)  # [H*hd] -> [H, hd]
    return per_head.sum(1) if how == "sum" else per_head.mean(1)


def wanda_columns(weight: torch.Tensor, input_sq_norm: torch.Tensor) -> torch.Tensor:
    """Wanda-sp's score of each input column of an output projection -> [in].

    ``weight`` [d, in]; ``input_sq_norm`` [in] is the squared L2 norm of each input feature over
    all calibration tokens. Score ``mean_i |W_ij| * ||X_j||_2``.
    """
    return weight.float().abs().mean(0) * input_sq_norm.float().clamp(min=0).sqrt()


def fluctuation(weight: torch.Tensor, input_variance: torch.Tensor) -> torch.Tensor:
    """FLAP's fluctuation (WIFV) of each input column -> [in]: ``Var(x_j) * ||W[:, j]||^2``."""
    return input_variance.float() * weight.float().pow(2).sum(0)


def standardize(scores: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
    """``(x - mean) / std`` over the alive entries of a 1-D score vector, unbiased std (FLAP);
    dead entries become ``+inf``. A block with one alive entry (or zero spread) gets zeros."""
    alive = torch.ones_like(scores, dtype=torch.bool) if alive is None else alive
    out = torch.full_like(scores, float("inf"), dtype=torch.float32)
    vals = scores[alive].double()
    if vals.numel() == 0:
        return out
    std = vals.std() if vals.numel() > 1 else vals.new_tensor(0.0)
    out[alive] = ((vals - vals.mean()) / std if float(std) > 0 else torch.zeros_like(vals)).float()
    return out


def squared_weights(weight: torch.Tensor) -> torch.Tensor:
    """Per-weight ``W^2``: summed per structure it gives the structure's squared weight norm."""
    return weight.float().pow(2)


def block_influence(hidden_in: torch.Tensor, hidden_out: torch.Tensor) -> torch.Tensor:
    """ShortGPT's per-token Block Influence ``1 - cos(h_in, h_out)`` ([N, d] each -> [N])."""
    return 1 - torch.nn.functional.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1)


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


def output_head_scores(o: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Sum saliency over each head's ``o_proj`` columns only ([d, H*hd] -> [H])."""
    return o.reshape(o.shape[0], o.shape[1] // head_dim, head_dim).sum((0, 2))  # [d, H, hd] -> [H] (d may be 0: a shard)


def output_channel_scores(down: torch.Tensor) -> torch.Tensor:
    """Sum saliency over each channel's ``down_proj`` column only ([d, F] -> [F])."""
    return down.sum(0)


def check_columns(taylor_weights: str, saliency: str | None, compensate: bool) -> None:
    """Compensated and Fisher scores are defined for output columns (``o_proj`` / ``down_proj``)
    only: refuse them with ``--taylor-weights all``, one line each."""
    from gisp.errors import GispError, check_choice

    check_choice("taylor-weights", taylor_weights, TAYLOR_WEIGHTS)
    if saliency is not None:
        check_choice("saliency", saliency, SALIENCIES)
    if compensate and taylor_weights != "output":
        raise GispError("--compensate scores o_proj/down_proj columns; use it with --taylor-weights output")
    if saliency == "fisher" and taylor_weights != "output":
        raise GispError("--saliency fisher scores o_proj/down_proj columns; use it with --taylor-weights output")


def normalize(
    heads: torch.Tensor, channels: torch.Tensor, method: Normalization, *,
    head_size: int, channel_size: int, hidden_size: int, head_dim: int, intermediate_size: int,
    heads_alive: torch.Tensor | None = None, channels_alive: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make head and channel scores comparable in one global ranking.

    ``head_size`` / ``channel_size``: the parameters removing one head / channel saves (a GQA
    head's q rows and o columns, 2 * hd * d; an MHA head's 4 * hd * d; a channel's 3 * d).

    - ``reference``: heads / (4 * hd * d), channels / (3 * d_ff), as the GISP reference code does.
    - ``params``: each score divided by the parameters its removal saves: estimated loss per
      parameter, the ratio a greedy walk under a parameter budget should rank by.
    - ``zscore``: standardised within each (layer, block type) over the structures still alive.
    - ``none``: scores are already comparable (e.g. FLAP's standardised fluctuation).
    """
    if method == "none":
        return heads, channels
    if method == "reference":
        return heads / (4 * head_dim * hidden_size), channels / (3 * intermediate_size)
    if method == "params":
        return heads / head_size, channels / channel_size
    if method == "zscore":
        ha = heads_alive if heads_alive is not None else torch.ones_like(heads, dtype=torch.bool)
        ca = channels_alive if channels_alive is not None else torch.ones_like(channels, dtype=torch.bool)
        return _zscore(heads, ha), _zscore(channels, ca)
    raise ValueError(f"unknown normalization {method!r}; choose from {', '.join(FIXED_NORMALIZATIONS)}")

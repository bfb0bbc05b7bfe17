"""Perplexity by the FLAP / LLM-Pruner / GISP protocol (GISP.md section 8).

Join the split, tokenise once, cut into non-overlapping windows of ``seq_len`` tokens, drop the
remainder, ``PPL = exp(mean NLL over every predicted token)`` (``seq_len - 1`` per window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gisp.data import consecutive_windows, joined_text, tokenize
from gisp.runtime import progress_bar


@dataclass
class PerplexityResult:
    ppl: float
    nll: float
    tokens: int
    windows: int
    seq_len: int


@torch.no_grad()
def window_nll(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of a batch of windows ([B, T] -> scalar float64)."""
    logits = model(input_ids=windows, use_cache=False).logits[:, :-1]  # [B, T-1, V]
    targets = windows[:, 1:]  # [B, T-1]
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").double()


def perplexity(
    model: nn.Module, tokenizer, data: str, seq_len: int = 128, *,
    batch_size: int = 8, limit_windows: int | None = None, progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on DATA (a spec from :mod:`gisp.data`) at ``seq_len``."""
    windows = consecutive_windows(tokenize(tokenizer, joined_text(data, "eval")), seq_len)
    if limit_windows is not None:
        windows = windows[:limit_windows]
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float64)
    for batch in progress_bar(windows.split(batch_size), desc=f"ppl@{seq_len}", enabled=progress, leave=False):
        total += window_nll(model, batch.to(device)).cpu()
    tokens = windows.shape[0] * (seq_len - 1)
    nll = float(total) / tokens
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=tokens, windows=windows.shape[0], seq_len=seq_len)

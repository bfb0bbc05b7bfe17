"""Zero-shot multiple choice by log-likelihood, the lm-evaluation-harness way.

Each option is scored by the summed log-probability of its tokens given the context (split as
lm-eval splits them, :func:`gisp.data.encode_pair`). ``acc`` takes the argmax; ``acc_norm`` the
argmax of log-likelihood divided by the option's length in characters (lm-eval's ``acc_norm``),
``acc_bytes`` by its length in UTF-8 bytes (GISP.md; lm-eval's ``acc_bytes``). Lengths are of the
option text without the delimiter that joins it to the context, as in lm-eval.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gisp.data import pad_id, pad_sequences, scored_sequence
from gisp.errors import GispError
from gisp.evaluation.stats import proportion_stderr
from gisp.examples import AnswerExample, ChoiceExample
from gisp.objectives import token_ce
from gisp.runtime import progress_bar


@dataclass
class ChoiceResult:
    acc: float
    acc_norm: float
    acc_bytes: float
    questions: int
    acc_stderr: float = 0.0  # standard errors as lm-eval reports them, sqrt(p(1-p)/(n-1))
    acc_norm_stderr: float = 0.0


@dataclass
class AnswerPerplexityResult:
    ppl: float
    nll: float
    tokens: int
    examples: int


@torch.no_grad()
def continuation_logprobs(model: nn.Module, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16,
                          progress: bool = True, max_len: int = 2048) -> list[tuple[float, int]]:
    """Summed log-probability of each continuation given its context, and its token count, in the
    order of ``pairs``.

    Sequences are batched longest first (lm-eval's order): neighbours in length share a batch, so
    little of it is padding (GSM8K solutions vary several-fold in length), and the largest batch
    comes first, so running out of memory shows at once. Padding is on the right and attention is
    causal, so the values do not depend on the batching (up to float rounding)."""
    device = next(model.parameters()).device
    pid = pad_id(tokenizer)
    encoded = [scored_sequence(tokenizer, c, x, max_len) for c, x in pairs]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    for start in progress_bar(range(0, len(order), batch_size), desc="scoring", enabled=progress, leave=False):
        chunk = order[start:start + batch_size]
        batch = pad_sequences([encoded[i][0] for i in chunk], [encoded[i][1] for i in chunk], pid)
        batch = {k: v.to(device) for k, v in batch.items()}
        ce, scored = token_ce(model, batch)  # [B, T-1] each
        for i, total, n in zip(chunk, ce.sum(1), scored.sum(1)):
            out[i] = (-float(total), int(n))
    return out


def multiple_choice(model: nn.Module, tokenizer, examples: list[ChoiceExample], *, batch_size: int = 16,
                    progress: bool = True, records: str | Path | None = None) -> ChoiceResult:
    """``acc``, ``acc_norm`` and ``acc_bytes`` over ``examples``, with standard errors; ``records``:
    a JSONL file of every question's option log-likelihoods and picks (written whole at the end,
    through a temporary name), so two models can be compared question by question."""
    if records is not None and (Path(records).is_dir() or not Path(records).parent.is_dir()):
        raise GispError(f"--records {records}: give a file in an existing folder")
    pairs = [(e.context, c) for e in examples for c in e.continuations()]
    scores = iter(continuation_logprobs(model, tokenizer, pairs, batch_size, progress))
    hits = torch.zeros(3, dtype=torch.float64)
    lines = []
    for index, e in enumerate(examples):
        ll = torch.tensor([next(scores)[0] for _ in e.choices], dtype=torch.float64)
        chars = torch.tensor([len(c) for c in e.choices], dtype=torch.float64)
        nbytes = torch.tensor([len(c.encode("utf-8")) for c in e.choices], dtype=torch.float64)
        picks = [int(v.argmax()) for v in (ll, ll / chars, ll / nbytes)]
        hits += torch.tensor([p == e.label for p in picks], dtype=torch.float64)
        lines.append(json.dumps({"index": index, "label": e.label, "loglikelihoods": ll.tolist(), "pick": picks[0],
                                 "pick_norm": picks[1], "pick_bytes": picks[2]}) + "\n")
    n = len(examples)
    acc, acc_norm, acc_bytes = (hits / n).tolist()
    if records is not None:
        path = Path(records)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, path)
    return ChoiceResult(acc=acc, acc_norm=acc_norm, acc_bytes=acc_bytes, questions=n,
                        acc_stderr=proportion_stderr(int(hits[0]), n), acc_norm_stderr=proportion_stderr(int(hits[1]), n))


def answer_perplexity(model: nn.Module, tokenizer, examples: list[AnswerExample], *, batch_size: int = 8,
                      progress: bool = True) -> AnswerPerplexityResult:
    """``exp`` of the mean NLL over all answer tokens given their prompts."""
    import math

    scored = continuation_logprobs(model, tokenizer, [(e.prompt, e.answer) for e in examples], batch_size, progress)
    nll = -sum(lp for lp, _ in scored)
    tokens = sum(n for _, n in scored)
    return AnswerPerplexityResult(ppl=math.exp(nll / tokens), nll=nll / tokens, tokens=tokens, examples=len(examples))

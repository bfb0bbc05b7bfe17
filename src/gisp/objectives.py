"""Objectives: ``(model, batch) -> scalar loss`` callables that importance differentiates,
and the builders of the batches each one expects.

- ``lm``: next-token cross-entropy on every token of random text windows.
- ``answer``: cross-entropy on answer tokens only (the batch's ``target_mask``).
- ``margin``: multiple choice, one sequence per option, loss on option tokens only;
  ``M = mean CE(correct options) - mean CE(incorrect options)``.

Any callable with the same signature can be passed to :func:`gisp.prune` (``objective=...``)
with batches it understands.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gisp.adapters import adapter_for  # the adapter knows how hidden states become logits
from gisp.data import pad_id, pad_sequences, scored_sequence
from gisp.errors import GispError
from gisp.examples import AnswerExample, ChoiceExample

Objective = Callable[[nn.Module, dict], torch.Tensor]

_LOSS_CHUNK: ContextVar[int] = ContextVar("gisp_loss_chunk", default=0)


@contextmanager
def chunked_loss(positions: int) -> Iterator[None]:
    """Within the block, the objectives take next-token cross-entropy ``positions`` positions at a
    time (0: all at once). Each chunk's logits are recomputed in the backward pass instead of kept,
    so a gradient pass holds one chunk of ``[B, positions, vocab]`` logits instead of the whole
    sequence's: the largest activation of a small model with a big vocabulary. Same losses."""
    token = _LOSS_CHUNK.set(positions)
    try:
        yield
    finally:
        _LOSS_CHUNK.reset(token)


def per_token_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position: logits [B, T, V], targets [B, T] -> [B, T] (-100: 0), in float32.

    Flattened to [B*T, V] rows: on a CPU, ``cross_entropy`` over the class dimension of a transposed
    [B, V, T] view is about 5x slower, forward and backward (strided softmax;
    ``benchmarks/cross_entropy_layout.py``); the values are the same."""
    b, t, v = logits.shape
    return F.cross_entropy(logits.reshape(b * t, v).float(), targets.reshape(b * t), reduction="none",
                           ignore_index=-100).view(b, t)


def _chunk_ce(adapter, model: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one chunk: hidden [B, c, d], targets [B, c] -> [B, c] (-100: 0)."""
    return per_token_ce(adapter.logits(model, hidden), targets)  # logits [B, c, V]


@torch.no_grad()
def check_adapter_logits(model: nn.Module, adapter) -> None:
    """Refuse an adapter whose :meth:`~gisp.adapters.ModelAdapter.logits` does not reproduce the
    model's own logits (a family that scales or caps them, with no override): chunked losses
    would be silently wrong. One 8-token forward (every rank runs it alike), before any scoring
    hooks are in place."""
    device = next(model.parameters()).device
    ids = (torch.arange(8, device=device) * 7 % model.config.vocab_size)[None]  # [1, 8]
    full = model(input_ids=ids, use_cache=False).logits.float()
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    ours = adapter.logits(model, hidden).float()
    tolerance = (1e-3 if full.dtype == torch.float32 and hidden.dtype == torch.float32 else 3e-2) * max(1.0, full.abs().max().item())
    diff = (ours - full).abs().max().item() if ours.shape == full.shape else float("inf")
    if not diff <= tolerance:
        raise GispError(f"{type(adapter).__name__}.logits() does not give the model's logits (max difference {diff:.3g}): "
                        "the family scales or caps them after the output embedding; override logits(model, hidden) "
                        "(see docs/model-families.md), or run without --loss-chunk")


def chunked_ce(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               targets: torch.Tensor, positions: int) -> torch.Tensor:
    """Next-token cross-entropy [B, T-1] of ``targets`` [B, T-1] (-100 ignored), ``positions``
    at a time, each chunk checkpointed so its logits are not kept for the backward pass."""
    adapter = adapter_for(model.config, pruned_ok=True)  # exports are evaluated this way too
    if callable(getattr(model, "unshard", None)):  # FSDP2's root: the decoder and the head below run its own
        model.unshard()  # parameters (embeddings, final norm, lm_head), which only its forward would gather
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    hidden = hidden[:, :-1]  # [B, T-1, d]: position t predicts token t+1
    pieces = []
    for start in range(0, hidden.shape[1], positions):
        h, t = hidden[:, start:start + positions], targets[:, start:start + positions]
        pieces.append(checkpoint(_chunk_ce, adapter, model, h, t, use_reentrant=False) if torch.is_grad_enabled()
                      else _chunk_ce(adapter, model, h, t))
    return torch.cat(pieces, 1)


def lm_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens (labels default to the inputs)."""
    labels = batch.get("labels", batch["input_ids"])
    if _LOSS_CHUNK.get():
        targets = labels[:, 1:]  # [B, T-1]
        ce = chunked_ce(model, batch["input_ids"], batch.get("attention_mask"), targets, _LOSS_CHUNK.get())
        return ce.sum() / (targets != -100).sum().clamp(min=1)
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=labels,
                 use_cache=False).loss


def token_ce(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every scored token -> ([B, T-1] CE, [B, T-1] bool mask of scored tokens).

    Which tokens count comes from ``target_mask`` (answer / option tokens), never from labels, so
    prompt tokens cannot leak into the loss whatever a batch's labels say.
    """
    targets = batch["input_ids"][:, 1:]  # [B, T-1]: position t predicts token t+1
    scored = batch["target_mask"][:, 1:]
    if _LOSS_CHUNK.get():
        ce = chunked_ce(model, batch["input_ids"], batch["attention_mask"], targets, _LOSS_CHUNK.get())
        return ce * scored, scored
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits[:, :-1]  # [B, T-1, V]
    ce = per_token_ce(logits, targets)  # [B, T-1]
    return ce * scored, scored


def answer_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of the batch (prompt tokens are context only)."""
    if "target_mask" not in batch:
        raise GispError("the answer objective needs batches with a target_mask marking answer tokens")
    ce, scored = token_ce(model, batch)
    return ce.sum() / scored.sum().clamp(min=1)


def sequence_ce(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over each sequence's scored tokens -> [B]."""
    ce, scored = token_ce(model, batch)
    return ce.sum(1) / scored.sum(1).clamp(min=1)


def margin_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """``mean CE(correct options) - mean CE(incorrect options)`` over the batch's sequences."""
    ce = sequence_ce(model, batch)
    correct = batch["correct"]
    return ce[correct].mean() - ce[~correct].mean()


OBJECTIVES: dict[str, Objective] = {"lm": lm_loss, "answer": answer_loss, "margin": margin_loss}


def _take(items: list, samples: int | None, max_tokens: int | None, cost, seed: int) -> list:
    """A seeded shuffle of ``items``, cut at ``samples`` items or once ``max_tokens`` are used."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    chosen, used = [], 0
    for i in order:
        if samples is not None and len(chosen) >= samples:
            break
        c = cost(items[i])
        if max_tokens is not None and chosen and used + c > max_tokens:
            break
        chosen.append(items[i])
        used += c
    if samples is not None and samples > len(items):
        raise GispError(f"calibration asks for {samples} examples, more than the {len(items)} the data holds; "
                        "lower --samples or give more data")
    if max_tokens is not None and len(chosen) == len(items) and used < max_tokens:
        raise GispError(f"calibration asks for {max_tokens:,} tokens, more than the {used:,} the data holds; "
                        "lower --max-tokens or give more data")
    return chosen


def answer_batches(
    tokenizer, examples: list[AnswerExample], *, samples: int | None, max_tokens: int | None,
    seq_len: int, batch_size: int, seed: int,
) -> list[dict]:
    """Batches for the answer objective: prompt+answer, labels on answer tokens only."""
    encoded = [scored_sequence(tokenizer, e.prompt, e.answer, seq_len) for e in examples]
    chosen = _take(encoded, samples, max_tokens, lambda e: len(e[0]), seed)
    pid = pad_id(tokenizer)
    return [pad_sequences([s for s, _ in chunk], [start for _, start in chunk], pid)
            for chunk in (chosen[i:i + batch_size] for i in range(0, len(chosen), batch_size))]


def choice_batches(
    tokenizer, examples: list[ChoiceExample], *, samples: int | None, max_tokens: int | None,
    seq_len: int, batch_size: int, seed: int,
) -> list[dict]:
    """Batches for the margin objective: every option of a question in the same batch.

    ``batch_size`` counts questions; each batch carries ``correct`` [B] marking the gold options
    and ``question`` [B], each option's question within the batch (the margin's samples, which
    Fisher scores square: :func:`gisp.saliency.fisher_moments`).
    """
    questions = [[scored_sequence(tokenizer, e.context, c, seq_len) for c in e.continuations()] for e in examples]
    keyed = list(zip(questions, [e.label for e in examples]))
    chosen = _take(keyed, samples, max_tokens, lambda q: sum(len(s) for s, _ in q[0]), seed)
    pid = pad_id(tokenizer)
    batches = []
    for i in range(0, len(chosen), batch_size):
        seqs, starts, correct, question = [], [], [], []
        for q, (options, gold) in enumerate(chosen[i:i + batch_size]):
            for j, (s, start) in enumerate(options):
                seqs.append(s)
                starts.append(start)
                correct.append(j == gold)
                question.append(q)
        batch = pad_sequences(seqs, starts, pid)
        batch["correct"] = torch.tensor(correct)
        batch["question"] = torch.tensor(question)
        batches.append(batch)
    return batches

"""Calibration batches: read the data of a run (before any model is loaded, so bad data fails
fast), tokenise it into the micro-batches its objective expects, and the small helpers every pass
over those batches shares (size, real tokens, samples, device)."""

from __future__ import annotations

from typing import Any

import torch

from gisp.data import calibration_batches, joined_text
from gisp.examples import answer_examples, chat_rendered, choice_examples
from gisp.objectives import answer_batches, choice_batches


def read_source(config: Any):
    """The raw calibration data of ``config`` (a :class:`gisp.config.PruneConfig`): text for ``lm``, examples otherwise."""
    if config.objective == "lm":
        return joined_text(config.data, "calibration")
    if config.objective == "answer":
        return answer_examples(config.data, config.prompt_field, config.answer_field, chat=config.chat_template)
    return choice_examples(config.data)


def build_batches(config: Any, source, tokenizer) -> list[dict]:
    """Tokenised micro-batches. ``max_tokens``, when set, replaces ``samples`` as the budget."""
    if config.objective == "lm":
        samples = config.samples if config.max_tokens is None else max(1, config.max_tokens // config.seq_len)
        return calibration_batches(tokenizer, source, samples, config.seq_len, config.seed, config.batch_size)
    if config.objective == "answer" and config.chat_template:  # as a chat model is prompted at deployment
        source = chat_rendered(tokenizer, source)
    build = answer_batches if config.objective == "answer" else choice_batches
    samples = config.samples if config.max_tokens is None else None
    return build(tokenizer, source, samples=samples, max_tokens=config.max_tokens, seq_len=config.seq_len,
                 batch_size=config.batch_size, seed=config.seed)


def batch_size(batch: dict) -> int:
    return int(batch["input_ids"].shape[0])


def token_mask(batch: dict) -> torch.Tensor | None:
    """Real (unpadded) tokens of a batch, [B, T] bool; None when every token is real."""
    mask = batch.get("attention_mask")
    return None if mask is None else mask.bool()


def token_samples(batch: dict) -> torch.Tensor | None:
    """For an objective whose samples are groups of sequences (``question`` [B]: the margin's
    questions), each real token's sample index -> [N]; None when every token is its own sample."""
    if "question" not in batch:
        return None
    rows = batch["question"][:, None].expand_as(batch["input_ids"])  # [B] -> [B, T]
    mask = token_mask(batch)
    return rows.flatten() if mask is None else rows[mask]


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

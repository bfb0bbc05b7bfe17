"""Calibration sets per objective: read the data (before any model is loaded, so bad data fails
fast), then tokenise it into the batches the objective expects."""

from __future__ import annotations

from gisp.config import PruneConfig
from gisp.data import calibration_batches, joined_text
from gisp.examples import answer_examples, choice_examples
from gisp.objectives import answer_batches, choice_batches


def read_source(config: PruneConfig):
    """The raw calibration data of ``config``: text for ``lm``, examples otherwise."""
    if config.objective == "lm":
        return joined_text(config.data, "calibration")
    if config.objective == "answer":
        return answer_examples(config.data, config.prompt_field, config.answer_field)
    return choice_examples(config.data)


def build_batches(config: PruneConfig, source, tokenizer) -> list[dict]:
    """Tokenised micro-batches. ``max_tokens``, when set, replaces ``samples`` as the budget."""
    if config.objective == "lm":
        samples = config.samples if config.max_tokens is None else max(1, config.max_tokens // config.seq_len)
        return calibration_batches(tokenizer, source, samples, config.seq_len, config.seed, config.batch_size)
    build = answer_batches if config.objective == "answer" else choice_batches
    samples = config.samples if config.max_tokens is None else None
    return build(tokenizer, source, samples=samples, max_tokens=config.max_tokens, seq_len=config.seq_len,
                 batch_size=config.batch_size, seed=config.seed)

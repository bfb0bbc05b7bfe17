"""GSM8K by greedy generation with fixed n-shot chain-of-thought exemplars.

Exemplars are the first problems of the GSM8K train split (shipped in ``gisp/resources``), their
solutions with calculator annotations removed and ``#### N`` rewritten as ``The answer is N.``.
The prediction is the number after "The answer is" in the generated text, else its last number;
exact match against the number after ``####`` in the gold answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gisp.data import pad_id, read_jsonl
from gisp.runtime import progress_bar

EXEMPLARS = Path(__file__).resolve().parent.parent / "resources" / "gsm8k_train_exemplars.jsonl"
_NUMBER = r"-?[\d,]*\.?\d+"


@dataclass
class Gsm8kResult:
    exact_match: float
    correct: int
    problems: int
    shots: int


def gold_number(answer: str) -> str:
    """The final number of a GSM8K solution (after ``####``)."""
    return _normalize(answer.split("####")[-1])


def _normalize(text: str) -> str:
    m = re.search(_NUMBER, text.replace("$", ""))
    return m.group(0).replace(",", "").rstrip(".") if m else ""


def extract_answer(generated: str) -> str:
    """The number after "The answer is", else the last number in ``generated``."""
    m = re.search(r"The answer is\s*\$?\s*(" + _NUMBER + ")", generated)
    if m:
        return _normalize(m.group(1))
    numbers = re.findall(_NUMBER, generated.replace("$", ""))
    return numbers[-1].replace(",", "").rstrip(".") if numbers else ""


def chain_of_thought(answer: str) -> str:
    """A gold solution as an exemplar: no ``<<...>>`` annotations, a closing "The answer is N."."""
    body = re.sub(r"<<[^>]*>>", "", answer.split("####")[0]).strip()
    return f"{body} The answer is {gold_number(answer)}."


def fewshot_prefix(shots: int) -> str:
    records = read_jsonl(EXEMPLARS)[:shots]
    return "".join(f"Q: {r['question']}\nA: {chain_of_thought(r['answer'])}\n\n" for r in records)


@torch.no_grad()
def gsm8k_exact_match(model: nn.Module, tokenizer, problems: list[dict], *, shots: int = 8, max_new_tokens: int = 256,
                      batch_size: int = 4, progress: bool = True) -> Gsm8kResult:
    """Greedy n-shot chain-of-thought exact match on ``problems`` (``question``/``answer`` records)."""
    prefix = fewshot_prefix(shots)
    device = next(model.parameters()).device
    side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    if tokenizer.eos_token is not None:  # pad with a token the model surely has (see gisp.data.pad_id)
        tokenizer.pad_token = tokenizer.eos_token
    pad = pad_id(tokenizer)
    correct = 0
    try:
        for start in progress_bar(range(0, len(problems), batch_size), desc="gsm8k", enabled=progress, leave=False):
            chunk = problems[start:start + batch_size]
            prompts = [f"{prefix}Q: {p['question']}\nA:" for p in chunk]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 stop_strings=["\n\nQ:", "\nQ:"], tokenizer=tokenizer)
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            for p, text in zip(chunk, texts):
                correct += extract_answer(text.split("Q:")[0]) == gold_number(p["answer"])
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad_token
    return Gsm8kResult(exact_match=correct / len(problems), correct=correct, problems=len(problems), shots=shots)

"""Structured task data: prompt/answer pairs and multiple-choice questions.

Specs (each takes a trailing slice over examples, e.g. ``piqa:dev.jsonl[:500]``):

- answer data: ``gsm8k`` / ``gsm8k:PATH`` (prompt ``"Q: {question}\\nA: "``, answer = the gold
  solution), or ``jsonl:PATH`` with ``prompt_field`` / ``answer_field``;
- multiple choice: ``piqa:PATH`` (``goal``/``sol1``/``sol2``, labels from the sibling
  ``*-labels.lst``; prompt ``"Question: {goal}\\nAnswer:"``, options ``" {sol}"``), or ``mc:PATH``
  with the generic schema ``{"context": ..., "choices": [...], "label": i}``; options follow the
  context after a space, as lm-eval joins them (``"delimiter"`` in a record overrides it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gisp.data import packaged_gsm8k_path, read_jsonl, split_slice
from gisp.errors import GispError

GSM8K_PROMPT = "Q: {question}\nA: "
PIQA_PROMPT = "Question: {goal}\nAnswer:"


@dataclass(frozen=True)
class AnswerExample:
    prompt: str
    answer: str


@dataclass(frozen=True)
class ChoiceExample:
    """A question; option ``i`` is scored as the continuation ``delimiter + choices[i]`` of ``context``
    (lm-eval's ``target_delimiter``, a space by default)."""

    context: str
    choices: tuple[str, ...]
    label: int
    delimiter: str = " "

    def continuations(self) -> list[str]:
        return [self.delimiter + c for c in self.choices]


def _field(record: dict, name: str, where: str):
    if name not in record:
        raise GispError(f"{where}: record has no field {name!r} (fields: {', '.join(record)})")
    return record[name]


def _parse(spec: str) -> tuple[str, str, slice]:
    """``'kind:path[a:b]'`` -> (kind, path, slice)."""
    base, part = split_slice(spec)
    kind, _, path = base.partition(":")
    return kind, path, part


def _select(items: list, part: slice, spec: str, what: str) -> list:
    """The slice of ``items`` a spec asks for; an empty selection is an error."""
    items = items[part]
    if not items:
        raise GispError(f"{spec!r} selects no {what}")
    return items


def answer_examples(spec: str, prompt_field: str = "prompt", answer_field: str = "answer") -> list[AnswerExample]:
    """Prompt/answer pairs for the answer objective and answer perplexity."""
    kind, path, part = _parse(spec)
    if kind == "gsm8k":
        records = read_jsonl(path or packaged_gsm8k_path())
        out = [AnswerExample(GSM8K_PROMPT.format(question=_field(r, "question", spec)), _field(r, "answer", spec)) for r in records]
    elif kind == "jsonl" and path:
        out = [AnswerExample(str(_field(r, prompt_field, spec)), str(_field(r, answer_field, spec))) for r in read_jsonl(path)]
    else:
        raise GispError(f"unknown answer data {spec!r}; use gsm8k[:PATH] or jsonl:PATH (with --prompt-field/--answer-field)")
    return _select(out, part, spec, "examples")


def _piqa_labels(path: Path) -> list[int]:
    labels_path = path.with_name(re.sub(r"\.jsonl$", "", path.name) + "-labels.lst")
    if not labels_path.is_file():
        raise GispError(f"PIQA labels not found: {labels_path} (expected beside {path.name})")
    return [int(line) for line in labels_path.read_text().split()]


def choice_examples(spec: str) -> list[ChoiceExample]:
    """Multiple-choice questions for the margin objective and ``mc`` evaluation."""
    kind, path, part = _parse(spec)
    if kind == "piqa" and path:
        records = read_jsonl(path)
        labels = _piqa_labels(Path(path))
        if len(labels) != len(records):
            raise GispError(f"{path}: {len(records)} questions but {len(labels)} labels")
        bad = next((i for i, y in enumerate(labels) if y not in (0, 1)), None)
        if bad is not None:
            raise GispError(f"{path}: question {bad + 1} has label {labels[bad]}; PIQA labels are 0 (sol1) or 1 (sol2)")
        out = [ChoiceExample(PIQA_PROMPT.format(goal=_field(r, "goal", spec)), (r["sol1"], r["sol2"]), y)
               for r, y in zip(records, labels)]
    elif kind == "mc" and path:
        out = []
        for r in read_jsonl(path):
            choices = tuple(str(c) for c in _field(r, "choices", spec))
            label = int(_field(r, "label", spec))
            if not 0 <= label < len(choices) or len(choices) < 2:
                raise GispError(f"{spec}: label {label} does not index {len(choices)} choices")
            out.append(ChoiceExample(str(_field(r, "context", spec)), choices, label, str(r.get("delimiter", " "))))
    else:
        raise GispError(f"unknown multiple-choice data {spec!r}; use piqa:PATH or mc:PATH")
    return _select(out, part, spec, "questions")


def gsm8k_problems(spec: str) -> list[dict]:
    """GSM8K records (``question``/``answer``) for generation: ``gsm8k`` or ``gsm8k:PATH``, sliceable."""
    kind, path, part = _parse(spec)
    if kind != "gsm8k":
        raise GispError(f"the gsm8k task reads gsm8k or gsm8k:PATH data, not {spec!r}")
    records = _select(read_jsonl(path or packaged_gsm8k_path()), part, spec, "problems")
    for r in records:
        _field(r, "question", spec)
        _field(r, "answer", spec)
    return records

"""Structured task data: prompt/answer pairs and multiple-choice questions.

Specs (each takes a trailing slice over examples, e.g. ``piqa:dev.jsonl[:500]``):

- answer data: ``gsm8k`` / ``gsm8k:PATH`` (prompt ``"Q: {question}\\nA: "``, answer = the gold
  solution; for a chat model, :func:`chat_rendered` of the question with :data:`CHAT_INSTRUCTION`
  and the solution's steps ending in ``\\boxed{N}``), or ``jsonl:PATH`` with ``prompt_field`` /
  ``answer_field``;
- multiple choice: ``piqa:PATH`` (``goal``/``sol1``/``sol2``, labels from the sibling
  ``*-labels.lst``; prompt ``"Question: {goal}\\nAnswer:"``, options ``" {sol}"``), or ``mc:PATH``
  with the generic schema ``{"context": ..., "choices": [...], "label": i}``; options follow the
  context after a space, as lm-eval joins them (``"delimiter"`` in a record overrides it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from gisp.data import packaged_gsm8k_path, read_jsonl_lines, read_text_file, split_slice, text_field
from gisp.errors import GispError

GSM8K_PROMPT = "Q: {question}\nA: "
PIQA_PROMPT = "Question: {goal}\nAnswer:"
#: The instruction chat models such as Qwen2.5 are tuned with for math word problems: the gsm8k
#: task's chat format asks it, and chat-rendered GSM8K calibration data carries it.
CHAT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
NUMBER = r"-?[\d,]*\.?\d+"


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


def normalize_number(text: str) -> str:
    """The first number in ``text``, without ``$``, thousands commas or a final period ('' if none)."""
    m = re.search(NUMBER, text.replace("$", ""))
    return m.group(0).replace(",", "").rstrip(".") if m else ""


def gold_number(answer: str) -> str:
    """The final number of a GSM8K solution (after ``####``)."""
    return normalize_number(answer.split("####")[-1])


def solution_steps(answer: str) -> str:
    """A GSM8K solution's reasoning without its ``<<...>>`` calculator annotations and ``#### N`` line."""
    return re.sub(r"<<[^>]*>>", "", answer.split("####")[0]).strip()


def chain_of_thought(answer: str) -> str:
    """A gold solution as a few-shot exemplar: no annotations, a closing "The answer is N."."""
    return f"{solution_steps(answer)} The answer is {gold_number(answer)}."


def _gsm8k_example(record: dict, where: str, chat: bool) -> AnswerExample:
    """A GSM8K problem as prompt/answer: ``Q: ...\\nA: `` and the solution as written; or, for a chat
    model (``chat``), the question with :data:`CHAT_INSTRUCTION` and the solution's steps ending in
    ``\\boxed{N}``, as the gsm8k task's chat format prompts and expects."""
    question, answer = text_field(record, "question", where), text_field(record, "answer", where)
    if chat:
        return AnswerExample(f"{question}\n{CHAT_INSTRUCTION}",
                             f"{solution_steps(answer)}\nThe answer is \\boxed{{{gold_number(answer)}}}.")
    return AnswerExample(GSM8K_PROMPT.format(question=question), answer)


def answer_examples(spec: str, prompt_field: str = "prompt", answer_field: str = "answer",
                    chat: bool = False) -> list[AnswerExample]:
    """Prompt/answer pairs for the answer objective and answer perplexity (``chat``: GSM8K problems
    in the form a chat model is prompted with; render them with :func:`chat_rendered`)."""
    kind, path, part = _parse(spec)
    if kind == "gsm8k":
        path = path or packaged_gsm8k_path()
        out = [_gsm8k_example(r, f"{path}:{n}", chat) for n, r in read_jsonl_lines(path)]
    elif kind == "jsonl" and path:
        out = [AnswerExample(text_field(r, prompt_field, f"{path}:{n}", numbers=True),
                             text_field(r, answer_field, f"{path}:{n}", numbers=True)) for n, r in read_jsonl_lines(path)]
    else:
        raise GispError(f"unknown answer data {spec!r}; use gsm8k[:PATH] or jsonl:PATH (with --prompt-field/--answer-field)")
    return _select(out, part, spec, "examples")


def chat_rendered(tokenizer, examples: list[AnswerExample]) -> list[AnswerExample]:
    """``examples`` through the tokenizer's chat template: the prompt as a user turn with the
    assistant's turn opened (what a chat model is prompted with at deployment), the answer as the
    assistant's reply up to and including its end-of-turn token."""
    if not getattr(tokenizer, "chat_template", None):
        raise GispError("--chat-template needs a tokenizer with a chat template; this one has none")
    out = []
    for e in examples:
        turn = [{"role": "user", "content": e.prompt}]
        prompt = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(turn + [{"role": "assistant", "content": e.answer}], tokenize=False)
        if not whole.startswith(prompt):
            raise GispError("this chat template renders a reply that does not continue its generation prompt; "
                            "calibrate without --chat-template")
        out.append(AnswerExample(prompt, whole[len(prompt):]))
    return out


def piqa_labels(path: Path) -> list[int]:
    """The labels of a PIQA file, from its sibling ``*-labels.lst``: one 0 or 1 a line (blank lines
    only at the end)."""
    labels_path = path.with_name(re.sub(r"\.jsonl$", "", path.name) + "-labels.lst")
    if not labels_path.is_file():
        raise GispError(f"PIQA labels not found: {labels_path} (expected beside {path.name})")
    lines = read_text_file(labels_path).rstrip().splitlines()
    bad = next((n for n, line in enumerate(lines, 1) if line.strip() not in ("0", "1")), None)
    if bad is not None:
        raise GispError(f"{labels_path}:{bad}: label {lines[bad - 1].strip()!r} is not 0 (sol1) or 1 (sol2)")
    return [int(line) for line in lines]


def _mc_example(record: dict, where: str) -> ChoiceExample:
    """One ``mc:`` record: ``context`` a string, ``choices`` a list of at least two strings,
    ``label`` an integer that indexes them, ``delimiter`` (optional) a string."""
    context = text_field(record, "context", where)
    choices = record.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise GispError(f"{where}: field 'choices' must be a list of at least two strings, got "
                        f"{json.dumps(choices)[:40]}")
    label = record.get("label")
    if not isinstance(label, int) or isinstance(label, bool):
        raise GispError(f"{where}: field 'label' must be an integer, got {json.dumps(label)[:40]}")
    if not 0 <= label < len(choices):
        raise GispError(f"{where}: label {label} does not index {len(choices)} choices")
    delimiter = text_field(record, "delimiter", where) if "delimiter" in record else " "
    return ChoiceExample(context, tuple(choices), label, delimiter)


def choice_examples(spec: str) -> list[ChoiceExample]:
    """Multiple-choice questions for the margin objective and ``mc`` evaluation."""
    kind, path, part = _parse(spec)
    if kind == "piqa" and path:
        records = read_jsonl_lines(path)
        labels = piqa_labels(Path(path))
        if len(labels) != len(records):
            raise GispError(f"{path}: {len(records)} questions but {len(labels)} labels")
        out = [ChoiceExample(PIQA_PROMPT.format(goal=text_field(r, "goal", f"{path}:{n}")),
                             (text_field(r, "sol1", f"{path}:{n}"), text_field(r, "sol2", f"{path}:{n}")), y)
               for (n, r), y in zip(records, labels)]
    elif kind == "mc" and path:
        out = [_mc_example(r, f"{path}:{n}") for n, r in read_jsonl_lines(path)]
    else:
        raise GispError(f"unknown multiple-choice data {spec!r}; use piqa:PATH or mc:PATH")
    return _select(out, part, spec, "questions")


def gsm8k_problems(spec: str) -> list[dict]:
    """GSM8K records (``question``/``answer``) for generation: ``gsm8k`` or ``gsm8k:PATH``, sliceable."""
    kind, path, part = _parse(spec)
    if kind != "gsm8k":
        raise GispError(f"the gsm8k task reads gsm8k or gsm8k:PATH data, not {spec!r}")
    path = path or packaged_gsm8k_path()
    records = _select(read_jsonl_lines(path), part, spec, "problems")
    for n, r in records:
        text_field(r, "question", f"{path}:{n}")
        text_field(r, "answer", f"{path}:{n}")
    return [r for _, r in records]

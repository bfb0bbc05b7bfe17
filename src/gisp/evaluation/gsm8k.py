"""GSM8K by batched greedy generation (KV cache, left padding, stop strings), in two prompt formats.

- ``fewshot``: n chain-of-thought exemplars, ``Q: ...\nA: ...`` (lm-eval's ``gsm8k_cot`` layout).
  Exemplars are the first problems of the GSM8K train split (shipped in ``gisp/resources``), their
  solutions with calculator annotations removed and ``#### N`` rewritten as ``The answer is N.``.
- ``chat``: zero-shot through the tokenizer's chat template, the question followed by
  :data:`gisp.examples.CHAT_INSTRUCTION` (the instruction chat models such as Qwen2.5 are tuned with).

The prediction (:func:`extract_answer`) is the number in the last ``\boxed{...}``, else the number
after the first "The answer is" (lm-eval ``gsm8k_cot``'s strict-match), else the last number in the
text (its flexible-extract). It is correct when it equals the number after ``####`` in the gold
answer *as a number* (:func:`same_number`: ``57.00`` is ``57``); lm-eval compares the strings, so it
counts ``The answer is 57.00`` wrong where gisp counts it right. Records are re-scored from their
text whenever they are read, so a cell never mixes scoring rules.

In the ``fewshot`` format every prompt starts with the same exemplars (about 900 tokens for 8
shots) and the question adds a few dozen: the exemplars' keys and values are computed once
(:func:`prefix_cache`) and every batch continues from a copy, its left padding moved after the
shared prefix (the attention mask skips it and positions stay contiguous, so each row sees what it
would see alone). Greedy tokens are those of the plain path up to float rounding. With
``records`` every problem's prediction is appended to a JSONL file as its batch finishes, and a
rerun skips the problems already there: a long evaluation resumes where it stopped.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import torch
from torch import nn

from gisp.errors import GispError

from gisp.data import pad_id, read_jsonl
from gisp.examples import CHAT_INSTRUCTION, NUMBER, chain_of_thought, gold_number, normalize_number
from gisp.evaluation.kvcache import cache_kwargs, returned_cache
from gisp.evaluation.stats import proportion_stderr
from gisp.runtime import progress_bar

EXEMPLARS = Path(__file__).resolve().parent.parent / "resources" / "gsm8k_train_exemplars.jsonl"
PROMPT_FORMATS = ("fewshot", "chat")
#: Where a ``fewshot`` continuation stops: the model starting the next exemplar question.
FEWSHOT_STOPS = ["\n\nQ:", "\nQ:"]


@dataclass
class Gsm8kResult:
    exact_match: float
    correct: int
    problems: int
    shots: int
    prompt_format: str = "fewshot"
    stderr: float = 0.0  # standard error of the exact match, sqrt(p(1-p)/(n-1))


def extract_answer(generated: str) -> str:
    """The number in the last ``\\boxed{}`` (a model that revises itself boxes its final answer
    last), else after the first "The answer is" (lm-eval's strict-match), else the last number in
    ``generated``."""
    boxed = re.findall(r"\\boxed\{\s*\$?\s*(" + NUMBER + ")", generated)
    if boxed:
        return normalize_number(boxed[-1])
    m = re.search(r"The answer is\s*\$?\s*(" + NUMBER + ")", generated)
    if m:
        return normalize_number(m.group(1))
    numbers = re.findall(NUMBER, generated.replace("$", ""))
    return normalize_number(numbers[-1]) if numbers else ""


def same_number(prediction: str, gold: str) -> bool:
    """Whether two extracted numbers are equal as numbers (``57.00`` and ``57``; ``.5`` and ``0.5``)."""
    try:
        return Decimal(prediction) == Decimal(gold)
    except InvalidOperation:  # an empty prediction (no number at all)
        return False


def score(record: dict, prompt_format: str) -> dict:
    """``record`` with its prediction and correctness derived from its generated text by the current
    rules (records written by an older gisp are scored as new ones)."""
    answer = record["text"].split("Q:")[0] if prompt_format == "fewshot" else record["text"]
    prediction = extract_answer(answer)
    return record | {"prediction": prediction, "correct": same_number(prediction, record["gold"])}


def check_shots(shots: int) -> list[dict]:
    """The first ``shots`` shipped exemplars; more than are shipped is refused, so a result never
    claims more shots than its prompt had."""
    records = read_jsonl(EXEMPLARS)
    if shots > len(records):
        raise GispError(f"--shots {shots}: gisp ships {len(records)} GSM8K exemplars; use --shots {len(records)} or fewer")
    return records[:shots]


def fewshot_prefix(shots: int) -> str:
    """The first ``shots`` exemplars as ``Q: ...\\nA: ...`` blocks."""
    records = check_shots(shots)
    return "".join(f"Q: {r['question']}\nA: {chain_of_thought(r['answer'])}\n\n" for r in records)


def build_prompt(question: str, tokenizer, prompt_format: str = "fewshot", prefix: str = "") -> str:
    """The text generation continues from: ``prefix`` + ``Q: {question}\\nA:`` (``fewshot``), or the
    chat template's user turn with :data:`CHAT_INSTRUCTION` and the assistant's opening (``chat``)."""
    if prompt_format == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise GispError("--prompt-format chat needs a tokenizer with a chat template; this one has none (use fewshot)")
        return tokenizer.apply_chat_template([{"role": "user", "content": f"{question}\n{CHAT_INSTRUCTION}"}],
                                             tokenize=False, add_generation_prompt=True)
    return f"{prefix}Q: {question}\nA:"


@dataclass
class PrefixCache:
    """The keys and values of a token prefix every prompt shares, computed once (batch 1)."""
    ids: torch.Tensor  # (L,) the prefix's tokens
    cache: object  # a transformers Cache holding L positions


@torch.no_grad()
def prefix_cache(model: nn.Module, tokenizer, prefix: str) -> PrefixCache | None:
    """The cache of ``prefix``'s tokens (``None`` for an empty prefix)."""
    ids = tokenizer(prefix, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if ids.numel() < 2:
        return None
    device = next(model.parameters()).device
    return PrefixCache(ids=ids, cache=returned_cache(model(input_ids=ids[None].to(device), use_cache=True)))


def _end_ids(model: nn.Module) -> set[int]:
    """The token ids that end a generation (the generation config's end-of-sequence ids)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _shared_length(shared: torch.Tensor, rows: list[list[int]]) -> int:
    """How many leading tokens of ``shared`` every row starts with (a boundary token may merge with
    the question's first one, so the usable prefix can be a token or two shorter)."""
    n = len(shared)
    for row in rows:
        head = torch.tensor(row[:n])
        differs = (head != shared[:len(head)]).nonzero()
        n = min(n, len(head), int(differs[0]) if len(differs) else n)
    return n


def _continue_from_prefix(shared: PrefixCache, rows: list[list[int]], pad: int) -> dict | None:
    """generate() inputs for ``rows`` (full prompts' tokens) that reuse ``shared``: the prefix,
    then each row's rest left-padded, the attention mask zero on the padding, and a copy of the
    prefix cache repeated once per row (cropped if a row's tokenisation leaves the prefix early);
    ``None`` where the rows share no prefix token (the caller pads as usual)."""
    n = min(_shared_length(shared.ids, rows), min(len(r) for r in rows) - 1)  # every row keeps a token to feed
    if n < 1:
        return None
    rest = [row[n:] for row in rows]
    width = max(len(r) for r in rest)
    suffix = torch.tensor([[pad] * (width - len(r)) + r for r in rest])  # (B, width)
    suffix_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest])  # (B, width)
    batch = len(rows)
    cache = copy.deepcopy(shared.cache)
    if n < len(shared.ids):
        cache.crop(n - len(shared.ids))  # negative: how many positions to drop
    cache.batch_repeat_interleave(batch)
    input_ids = torch.cat([shared.ids[:n].expand(batch, n), suffix], dim=1)  # (B, n + width)
    attention_mask = torch.cat([torch.ones(batch, n, dtype=suffix_mask.dtype), suffix_mask], dim=1)  # (B, n + width)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache}


def generated_lengths(generated: torch.Tensor, pad: int, end_ids: set[int] | None = None,
                      stopped: list[bool] | None = None) -> list[int]:
    """Tokens each row of ``generated`` (B, steps) produced. generate() fills a finished row with
    ``pad``: a row counts up to and including its first token in ``end_ids`` (its end-of-sequence
    token; ``pad`` is one when the tokenizer pads with it), but not the padding after a row that a
    stop string ended (``stopped``); a row that never ended counts every step."""
    ends = torch.isin(generated, torch.tensor(sorted((end_ids or set()) | {pad}), device=generated.device))  # (B, steps)
    lengths = []
    for row, ended, was_stopped in zip(generated, ends, stopped or [False] * len(generated)):
        if not ended.any():
            lengths.append(len(row))
            continue
        first = int(ended.int().argmax())
        lengths.append(first if was_stopped and int(row[first]) == pad else first + 1)
    return lengths


_RECORD_KEYS = ("index", "gold", "prediction", "correct", "settings")


def read_records(path: Path | None) -> dict[int, dict]:
    """Problems already answered in a records file, by index (a torn or foreign line is ignored:
    that problem runs again)."""
    done: dict[int, dict] = {}
    if path is None or not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            record = json.loads(line)
            if isinstance(record, dict) and all(k in record for k in _RECORD_KEYS):
                done[int(record["index"])] = record
        except (ValueError, TypeError):
            continue
    return done


def exact_match_stderr(correct: int, n: int) -> float:
    """Standard error of the exact match (:func:`gisp.evaluation.stats.proportion_stderr`)."""
    return proportion_stderr(correct, n)


@torch.no_grad()
def gsm8k_exact_match(model: nn.Module, tokenizer, problems: list[dict], *, shots: int = 8, max_new_tokens: int = 256,
                      batch_size: int = 4, progress: bool = True, prompt_format: str = "fewshot",
                      records: str | Path | None = None, reuse_prefix: bool = True) -> Gsm8kResult:
    """Greedy exact match on ``problems`` (``question``/``answer`` records) in ``prompt_format``;
    ``records``: a JSONL file of per-problem predictions, appended as batches finish and read back
    on a rerun, so an interrupted evaluation resumes (the file must belong to the same problems);
    ``reuse_prefix``: compute the few-shot exemplars' cache once (module docstring)."""
    if prompt_format not in PROMPT_FORMATS:
        raise GispError(f"unknown prompt format {prompt_format!r}; choose from {', '.join(PROMPT_FORMATS)}")
    prefix = fewshot_prefix(shots) if prompt_format == "fewshot" else ""
    path = Path(records) if records is not None else None
    if path is not None and not path.parent.is_dir():
        raise GispError(f"--records {path}: the folder {path.parent} does not exist")
    # what the predictions depend on: a records file made otherwise is refused, not silently reused
    settings = {"model": str(getattr(model, "name_or_path", "") or type(model).__name__),
                "parameters": sum(p.numel() for p in model.parameters()), "prompt_format": prompt_format,
                "shots": shots if prompt_format == "fewshot" else 0, "max_new_tokens": max_new_tokens}
    if path is not None and path.is_dir():
        raise GispError(f"--records {path} is a folder; give a file name (predictions are appended to it)")
    # problems past this selection are left as they are (a records file of a longer run serves a shorter one)
    done = {i: score(r, prompt_format) for i, r in read_records(path).items() if i < len(problems)}
    for index, record in done.items():
        if record.get("gold") != gold_number(problems[index]["answer"]):
            raise GispError(f"{path} holds predictions for other problems (problem {index}); use a new records file")
        if record["settings"] != settings:
            raise GispError(f"{path} holds predictions made with other settings ({record['settings']} there, {settings} "
                            "here); use a new records file")
    if path is not None and path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with path.open("a", encoding="utf-8") as f:  # a line torn by a crash: new records start on their own line
            f.write("\n")
    todo = [i for i in range(len(problems)) if i not in done]
    device = next(model.parameters()).device
    side, pad_token = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    if tokenizer.eos_token is not None:  # pad with a token the model surely has (see gisp.data.pad_id)
        tokenizer.pad_token = tokenizer.eos_token
    pad = pad_id(tokenizer)
    stops = FEWSHOT_STOPS if prompt_format == "fewshot" else None
    end_ids = _end_ids(model)
    shared = prefix_cache(model, tokenizer, prefix) if reuse_prefix and prefix and todo else None
    try:
        for start in progress_bar(range(0, len(todo), batch_size), desc=f"gsm8k ({len(done)} done)", enabled=progress,
                                  leave=False):
            chunk = todo[start:start + batch_size]
            prompts = [build_prompt(problems[i]["question"], tokenizer, prompt_format, prefix) for i in chunk]
            reused = None if shared is None else \
                _continue_from_prefix(shared, tokenizer(prompts, add_special_tokens=False)["input_ids"], pad)
            if reused is not None:
                enc = {"input_ids": reused["input_ids"].to(device), "attention_mask": reused["attention_mask"].to(device),
                       **cache_kwargs(model, reused["cache"])}
            else:
                enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 stop_strings=stops, tokenizer=tokenizer if stops else None)
            generated = out[:, enc["input_ids"].shape[1]:]  # (B, steps): a finished row is padded to the longest
            texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
            lines = []
            stopped = [any(stop in text for stop in stops or ()) for text in texts]
            for i, text, length in zip(chunk, texts, generated_lengths(generated, pad, end_ids, stopped)):
                record = score({"index": i, "gold": gold_number(problems[i]["answer"]), "text": text,
                                "new_tokens": length, "out_of_tokens": length >= max_new_tokens,
                                "settings": settings}, prompt_format)
                done[i] = record
                lines.append(json.dumps(record) + "\n")
            if path is not None:
                with path.open("a", encoding="utf-8") as f:
                    f.writelines(lines)
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad_token
    correct = sum(bool(done[i]["correct"]) for i in range(len(problems)))
    return Gsm8kResult(exact_match=correct / len(problems), correct=correct, problems=len(problems),
                       shots=shots if prompt_format == "fewshot" else 0, prompt_format=prompt_format,
                       stderr=exact_match_stderr(correct, len(problems)))

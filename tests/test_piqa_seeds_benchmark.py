"""benchmarks/piqa_seeds.py's arithmetic: the paired difference of two calibrations on the same
questions, and a table that says which seeds it has."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import piqa_seeds  # noqa: E402  (a failing import fails these tests, it does not skip them)


def _records(picks: list[int], labels: list[int]) -> list[dict]:
    return [{"index": i, "label": y, "pick": p, "pick_norm": y} for i, (p, y) in enumerate(zip(picks, labels))]


def test_paired_difference_and_its_standard_error():
    labels = [0, 1, 0, 1]
    a = _records([0, 1, 0, 0], labels)  # 3 right
    b = _records([1, 1, 0, 0], labels)  # 2 right: the first question differs
    diff, se = piqa_seeds.paired(a, b)
    d = [1, 0, 0, 0]
    var = sum((x - 0.25) ** 2 for x in d) / 3
    assert diff == 0.25 and math.isclose(se, math.sqrt(var / 4))
    assert piqa_seeds.paired(a, b, "pick_norm") == (0.0, 0.0)


def test_report_tables_the_seeds_it_has(tmp_path, monkeypatch):
    monkeypatch.setattr(piqa_seeds, "RESULTS", tmp_path)
    monkeypatch.setattr(piqa_seeds, "OUT", tmp_path / "records")
    (tmp_path / "records").mkdir()
    labels = [0, 1, 0, 1]
    for cell, picks in {"margin-s0": [0, 1, 0, 0], "lm-s0": [1, 1, 0, 0]}.items():
        text = "".join(json.dumps(r) + "\n" for r in _records(picks, labels))
        (tmp_path / "records" / f"{cell}.jsonl").write_text(text)
    cell = {"acc_stderr": 0.1, "acc_norm": 0.5, "acc_norm_stderr": 0.1, "questions": 4}
    piqa_seeds.report({"cells": {"margin-s0": cell | {"acc": 0.75, "seed": 0}, "lm-s0": cell | {"acc": 0.5, "seed": 0}}})
    text = (tmp_path / "piqa_seeds.md").read_text()
    assert "| margin | 1 | 0.750 | 0.750 | - |" in text
    assert "| margin - lm | 0 | +0.250 |" in text
    assert "flap" not in text and "seeds measured: 0 (" in text


def _report(tmp_path, monkeypatch, picks: dict[str, list[int]], seed: int) -> str:
    """piqa_seeds.report over cells whose records pick ``picks`` on four questions; the table's text."""
    monkeypatch.setattr(piqa_seeds, "RESULTS", tmp_path)
    monkeypatch.setattr(piqa_seeds, "OUT", tmp_path / "records")
    (tmp_path / "records").mkdir()
    labels = [0, 1, 0, 1]
    for cell, p in picks.items():
        (tmp_path / "records" / f"{cell}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(p, labels)))
    cell = {"acc_stderr": 0.1, "acc_norm": 0.5, "acc_norm_stderr": 0.1, "questions": 4, "seed": seed}
    piqa_seeds.report({"cells": {k: cell | {"acc": sum(x == y for x, y in zip(p, labels)) / 4} for k, p in picks.items()}})
    return (tmp_path / "piqa_seeds.md").read_text()


def test_report_pairs_the_search_over_all_questions_with_the_default(tmp_path, monkeypatch):
    picks = {"margin-s1": [0, 1, 0, 0], "margin-search-all-s1": [0, 1, 0, 1], "flap-s1": [1, 0, 0, 0]}
    text = _report(tmp_path, monkeypatch, picks, seed=1)
    assert "| margin-search-all - margin | 1 | +0.250 |" in text
    assert "| margin-search-all - flap | 1 | +0.750 |" in text
    assert "| margin - flap | 1 | +0.500 |" in text and "- lm |" not in text


def test_a_16k_cell_is_named_and_paired_within_its_budget(tmp_path, monkeypatch):
    assert piqa_seeds.cell_key("margin", 0, 16384) == "margin-16k-s0" and piqa_seeds.cell_key("margin", 0) == "margin-s0"
    picks = {"margin-16k-s0": [0, 1, 0, 1], "flap-16k-s0": [0, 1, 0, 0], "flap-s0": [1, 0, 1, 0]}
    text = _report(tmp_path, monkeypatch, picks, seed=0)
    assert "| margin - flap (16K) | 0 | +0.250 |" in text  # not against the 4K FLAP cell
    assert "| margin (16K) | 1 | 1.000 |" in text and "| flap | 1 | 0.000 |" in text


def test_pooled_difference_averages_each_question_over_seeds():
    labels = [0, 1, 0, 1]
    seed0 = (_records([0, 1, 0, 0], labels), _records([1, 1, 0, 0], labels))  # a - b per question: 1, 0, 0, 0
    seed1 = (_records([0, 1, 1, 1], labels), _records([0, 1, 0, 1], labels))  # 0, 0, -1, 0
    diff, se = piqa_seeds.pooled([seed0, seed1])
    d = [0.5, 0.0, -0.5, 0.0]  # each question's mean over the two seeds
    var = sum(x ** 2 for x in d) / 3
    assert diff == 0.0 and math.isclose(se, math.sqrt(var / 4))
    assert piqa_seeds.pooled([seed0]) == piqa_seeds.paired(*seed0)  # one seed: the paired difference itself


def test_report_pools_the_seeds_both_calibrations_have(tmp_path, monkeypatch):
    monkeypatch.setattr(piqa_seeds, "RESULTS", tmp_path)
    monkeypatch.setattr(piqa_seeds, "OUT", tmp_path / "records")
    (tmp_path / "records").mkdir()
    labels = [0, 1, 0, 1]
    picks = {"margin-s0": [0, 1, 0, 0], "flap-s0": [1, 1, 0, 0], "margin-s1": [0, 1, 1, 1], "flap-s1": [0, 1, 0, 1],
             "margin-s2": [0, 1, 0, 1]}  # no flap at seed 2: seed 2 is not pooled
    for cell, p in picks.items():
        (tmp_path / "records" / f"{cell}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(p, labels)))
    cell = {"acc_stderr": 0.1, "acc_norm": 0.5, "acc_norm_stderr": 0.1, "questions": 4}
    piqa_seeds.report({"cells": {k: cell | {"acc": 0.5, "seed": int(k[-1])} for k in picks}})
    text = (tmp_path / "piqa_seeds.md").read_text()
    assert "| **margin - flap** | 2 pooled | **+0.000** | 0.204 |" in text

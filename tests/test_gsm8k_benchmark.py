"""benchmarks/gsm8k.py's bookkeeping: a multi-hour, multi-session benchmark must never lose or
mislabel a cell when its prompt setting changes or its scoring rules do."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gsm8k  # noqa: E402  (benchmarks/gsm8k.py: a failing import fails these tests, it does not skip them)


def _record(index: int, gold: str, text: str) -> str:
    settings = {"model": "m", "parameters": 1, "prompt_format": "chat", "shots": 0, "max_new_tokens": 256}
    return json.dumps({"index": index, "gold": gold, "prediction": "?", "correct": False, "text": text,
                       "settings": settings}) + "\n"


@pytest.fixture
def out(tmp_path, monkeypatch):
    monkeypatch.setattr(gsm8k, "OUT", tmp_path)
    (tmp_path / "records").mkdir()
    return tmp_path / "records"


def _cell(setting: str, correct: int = 0) -> dict:
    return {"prompt_format": "chat", "setting": setting, "max_new_tokens": 256, "problems": 2, "correct": correct,
            "exact_match": correct / 2, "stderr": 0.0, "answer_ppl": 3.0, "commands": ["a", "b"]}


def test_supersede_moves_the_cell_its_records_and_its_rerun_under_fresh_names(out):
    (out / "dense.jsonl").write_text("new\n")
    (out / "dense-rerun.jsonl").write_text("rerun\n")
    (out / "dense-chat.jsonl").write_text("an earlier move\n")
    results = {"cells": {"dense": _cell("chat", 1)}, "superseded": {"dense:chat": _cell("chat", 2)},
               "reruns": {"dense": {"correct": 1}}}
    gsm8k.supersede(results, "dense")
    assert "dense" not in results["cells"] and results["reruns"] == {}
    assert results["superseded"]["dense:chat"]["correct"] == 2  # the earlier move is kept as it was
    moved = results["superseded"]["dense:chat:2"]
    assert moved["records_key"] == "dense-chat-2" and moved["rerun"] == {"correct": 1}
    assert (out / "dense-chat-2.jsonl").read_text() == "new\n"
    assert (out / "dense-chat-2-rerun.jsonl").read_text() == "rerun\n"
    assert (out / "dense-chat.jsonl").read_text() == "an earlier move\n"
    assert not (out / "dense.jsonl").exists() and not (out / "dense-rerun.jsonl").exists()


def test_rescore_recomputes_every_cell_from_its_records(out):
    (out / "dense.jsonl").write_text(_record(0, "57", "so \\boxed{57.00}.") + _record(1, "3", "it is 4"))
    (out / "dense-chat.jsonl").write_text(_record(0, "57", "\\boxed{-5} no, \\boxed{57}") + _record(1, "3", "3"))
    results = {"cells": {"dense": _cell("chat512"), "gone": _cell("chat512", 1)}, "superseded": {"dense:chat": _cell("chat")}}
    gsm8k.rescore(results)
    assert results["cells"]["dense"]["correct"] == 1 and results["cells"]["dense"]["exact_match"] == 0.5
    assert results["superseded"]["dense:chat"]["correct"] == 2  # found by its label: dense-chat.jsonl
    assert results["cells"]["gone"]["correct"] == 1  # no records: the figures it was measured with stay


def test_a_cell_under_another_setting_is_marked_and_kept_off_the_comparisons():
    results = {"chosen_format": "chat512"}
    assert gsm8k._current(results, "dense-chat-100", _cell("chat"))  # a format cell has its own setting
    assert not gsm8k._current(results, "gisp-lm@30", _cell("chat"))
    assert gsm8k._current(results, "gisp-lm@30", _cell("chat512"))


def test_crosstask_evaluates_each_model_once_and_tables_it(monkeypatch, tmp_path):
    monkeypatch.setattr(gsm8k, "save_results", lambda results: None)
    monkeypatch.setattr(gsm8k, "prune", lambda runner, results, key, spec: tmp_path / key)
    commands = []

    class Runner:
        def run(self, cmd):
            commands.append(cmd)
            row = {"acc": 0.6, "acc_norm": 0.5, "questions": 500} if "mc" in cmd else {"ppl": 20.0, "tokens": 51200}
            return json.dumps({"rows": [row | {"parameters": 7}]} if "--levels" in cmd else row) + "\n", 1.0, 1.0

    results = {"cells": {"gisp-answer@20": _cell("chat512", 1)}, "runs": {}}
    gsm8k.crosstask(Runner(), results)
    assert len(commands) == 6  # dense + two runs, two tasks each
    assert results["crosstask"]["gisp-lm@20"]["piqa"]["acc"] == 0.6
    assert results["crosstask"]["gisp-answer@20"]["wikitext2"]["parameters"] == 7
    assert "--levels" in commands[2] and "0.2" in commands[2] and "--no-dense" in commands[2]
    gsm8k.crosstask(Runner(), results)
    assert len(commands) == 6  # finished measurements are not repeated
    table = gsm8k.crosstask_table(results)
    assert "| gisp-answer@20 | 0.500 | 0.600 +- 0.022 | 0.500 | 20.00 |" in table


def test_recovery_trains_each_method_once_from_one_export_and_evaluates_it(monkeypatch, tmp_path):
    monkeypatch.setattr(gsm8k, "WORK", tmp_path)
    monkeypatch.setattr(gsm8k, "save_results", lambda results: None)
    monkeypatch.setattr(gsm8k, "prune", lambda runner, results, key, spec: tmp_path / key)
    evaluated = []
    monkeypatch.setattr(gsm8k, "evaluate", lambda runner, results, key, model, data, fmt:
                        evaluated.append((key, model, fmt)) or results["cells"].setdefault(key, _cell(fmt)))
    commands = []

    class Runner:
        def run(self, cmd):
            commands.append(cmd[:2])
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True)
            (out / ("gisp_export.json" if cmd[1] == "export" else "gisp_recovery.json")).write_text("{}")
            return "", 2.0, 1.0

    results = {"cells": {}, "runs": {}}
    gsm8k.recovery(Runner(), results, "chat512")
    assert commands == [["gisp", "export"], ["gisp", "recover"], ["gisp", "recover"]]
    assert [e[0] for e in evaluated] == ["gisp-answer+lora@30", "gisp-answer+distill@30"]
    assert evaluated[0][1] == str(tmp_path / "gisp-answer-30-lora")
    assert "--method distill" in results["recovery"]["gisp-answer+distill@30"]["command"]
    assert not (tmp_path / "gisp-answer-30-export").exists()  # 2 GB: rebuilt from the trajectory when needed
    gsm8k.recovery(Runner(), results, "chat512")
    assert len(commands) == 3 and len(evaluated) == 2  # finished cells are not repeated


def test_paired_difference_of_two_cells_on_the_same_problems():
    a = {i: {"correct": i < 6} for i in range(10)}  # solves 0-5
    b = {i: {"correct": 4 <= i < 8} for i in range(10)}  # solves 4-7
    only_a, only_b, n, se = gsm8k.paired_difference(a, b)
    assert (only_a, only_b, n) == (4, 2, 10)
    d = [1] * 4 + [-1] * 2 + [0] * 4  # per-problem differences: their mean's standard error
    mean = sum(d) / 10
    assert se == pytest.approx((sum((x - mean) ** 2 for x in d) / 9 / 10) ** 0.5)


def test_a_report_keeps_the_stamp_of_the_last_measurement(tmp_path, monkeypatch):
    """``--report`` measures nothing: the results file keeps the commit and date that measured it."""
    monkeypatch.setattr(gsm8k, "RESULTS", tmp_path)
    measured = {"date": "2026-01-01T00:00:00+00:00", "git_commit": "abc1234"}
    gsm8k.save_results({"cells": {}, "environment": measured}, stamp=False)
    assert json.loads((tmp_path / f"{gsm8k.NAME}.json").read_text())["environment"] == measured
    gsm8k.save_results({"cells": {}, "environment": measured})
    assert json.loads((tmp_path / f"{gsm8k.NAME}.json").read_text())["environment"]["git_commit"] != "abc1234"

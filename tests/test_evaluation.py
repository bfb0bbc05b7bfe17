"""GSM8K scoring, speed measurement, multi-level evaluation and task-objective pruning via the CLI."""

import json

import pytest
import torch

from gisp.cli import main
from gisp.errors import GispError
from gisp.evaluation.gsm8k import (chain_of_thought, extract_answer, fewshot_prefix, gold_number, gsm8k_exact_match,
                                   read_records)
from gisp.evaluation.speed import measure

from conftest import tiny_model, tiny_tokenizer


def test_gsm8k_answer_extraction():
    assert gold_number("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18") == "18"
    assert gold_number("#### 1,200") == "1200"
    assert extract_answer("So 3 + 4 = 7. The answer is 7.\n\nQ: next") == "7"
    assert extract_answer("The answer is $1,250.50") == "1250.50"
    assert extract_answer("First 12, then 15 apples") == "15"
    assert extract_answer("no numbers here") == ""
    assert extract_answer("so 12 + 3 = 15, and \\boxed{1,215} in all. The answer is 7") == "1215"  # boxed first
    # a model that revises itself boxes its final answer last
    assert extract_answer("win by \\(\\boxed{-20}\\) seconds, they lose by \\(\\boxed{20}\\) seconds.") == "20"


def test_gsm8k_answers_compare_as_numbers():
    from gisp.evaluation.gsm8k import same_number, score

    assert same_number("57.00", "57") and same_number(".5", "0.5") and same_number("-3", "-3.0")
    assert not same_number("57.01", "57") and not same_number("", "57") and not same_number("-57", "57")
    # a record is re-scored from its text: an old record's string comparison ("57.00" != "57") is replaced
    old = {"index": 0, "gold": "57", "prediction": "57.00", "correct": False, "text": "so \\boxed{57.00}."}
    assert score(old, "chat") == old | {"prediction": "57.00", "correct": True}
    fewshot = {"index": 0, "gold": "7", "text": "3 + 4 = 7. The answer is 7.\n\nQ: Next? A: The answer is 8."}
    assert score(fewshot, "fewshot")["prediction"] == "7"  # only the answer before the next exemplar counts


def test_gsm8k_records_resume_per_problem_and_refuse_other_problems(tmp_path):
    model, tok = tiny_model("llama-gqa"), tiny_tokenizer()
    problems = [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"} for i in range(5)]
    records = tmp_path / "em.jsonl"
    first = gsm8k_exact_match(model, tok, problems[:3], shots=1, max_new_tokens=4, batch_size=2, progress=False,
                              records=records)
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert [r["index"] for r in lines] == [0, 1, 2] and [r["gold"] for r in lines] == ["1", "2", "3"]
    assert all(1 <= r["new_tokens"] <= 4 and r["out_of_tokens"] == (r["new_tokens"] == 4) for r in lines)
    calls = []
    generate = model.generate
    model.generate = lambda **kw: calls.append(kw["input_ids"].shape[0]) or generate(**kw)
    with records.open("a") as f:
        f.write('{"index": 3, "gold"')  # a write torn by a crash: that problem runs again
    full = gsm8k_exact_match(model, tok, problems, shots=1, max_new_tokens=4, batch_size=2, progress=False,
                             records=records)
    assert calls == [2] and full.problems == 5  # only problems 3 and 4 were generated
    assert full.correct >= first.correct and full.stderr >= 0
    assert len(read_records(records)) == 5  # the torn line is left behind; the new records start on their own lines
    with pytest.raises(GispError, match="predictions for other problems"):
        gsm8k_exact_match(model, tok, problems[1:], shots=1, max_new_tokens=4, progress=False, records=records)
    with pytest.raises(GispError, match="predictions made with other settings"):  # another generation length
        gsm8k_exact_match(model, tok, problems, shots=1, max_new_tokens=6, progress=False, records=records)
    with pytest.raises(GispError, match="does not exist"):
        gsm8k_exact_match(model, tok, problems, shots=1, progress=False, records=tmp_path / "no" / "em.jsonl")
    with pytest.raises(GispError, match="is a folder"):
        gsm8k_exact_match(model, tok, problems, shots=1, progress=False, records=tmp_path)
    calls.clear()  # a shorter selection reads the first problems' records and ignores the rest
    short = gsm8k_exact_match(model, tok, problems[:2], shots=1, max_new_tokens=4, progress=False, records=records)
    assert calls == [] and short.problems == 2
    with pytest.raises(GispError, match="ships 8 GSM8K exemplars"):
        gsm8k_exact_match(model, tok, problems, shots=9, progress=False)


def test_gsm8k_chat_format_uses_the_chat_template():
    from gisp.evaluation.gsm8k import CHAT_INSTRUCTION, build_prompt

    tok = tiny_tokenizer()
    with pytest.raises(GispError, match="needs a tokenizer with a chat template"):
        build_prompt("2 + 2?", tok, "chat")
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    assert build_prompt("2 + 2?", tok, "chat") == f"<user>2 + 2?\n{CHAT_INSTRUCTION}<assistant>"
    assert build_prompt("2 + 2?", tok, "fewshot", "Q: 1?\nA: 1.\n\n") == "Q: 1?\nA: 1.\n\nQ: 2 + 2?\nA:"


def test_chain_of_thought_exemplars():
    cot = chain_of_thought("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72")
    assert cot == "Natalia sold 48/2 = 24 clips in May. The answer is 72."
    prefix = fewshot_prefix(2)
    assert prefix.count("Q: ") == 2 and prefix.count("The answer is") == 2 and "<<" not in prefix


def test_gsm8k_generation_runs_on_a_tiny_model():
    model, tok = tiny_model("llama-gqa"), tiny_tokenizer()
    problems = [{"question": "What is 3 + 4?", "answer": "#### 7"}, {"question": "2 + 2?", "answer": "#### 4"}]
    result = gsm8k_exact_match(model, tok, problems, shots=1, max_new_tokens=4, batch_size=2, progress=False)
    assert result.problems == 2 and result.shots == 1 and 0 <= result.correct <= 2
    assert tok.padding_side == "right" and tok.pad_token is None  # restored


@pytest.mark.parametrize("family", ["llama-gqa", "qwen2"])
def test_gsm8k_reused_fewshot_prefix_gives_the_plain_paths_tokens(family, tmp_path):
    model, tok = tiny_model(family), tiny_tokenizer()
    problems = [{"question": q, "answer": f"#### {i}"} for i, q in
                enumerate(["What is 3 + 4?", "2 + 2?", "A farmer has 12 cows and buys 30 more; how many now?", "9?"])]
    texts = {}
    for reuse in (False, True):
        records = tmp_path / f"{reuse}.jsonl"
        gsm8k_exact_match(model, tok, problems, shots=2, max_new_tokens=8, batch_size=3, progress=False,
                          records=records, reuse_prefix=reuse)
        texts[reuse] = [r["text"] for r in sorted(read_records(records).values(), key=lambda r: r["index"])]
    assert texts[True] == texts[False] and len(texts[True]) == 4


def test_continue_from_prefix_moves_padding_after_the_prefix():
    from gisp.evaluation.gsm8k import _continue_from_prefix, prefix_cache

    model, tok = tiny_model("llama-gqa"), tiny_tokenizer()
    shared = prefix_cache(model, tok, "Q: 1 + 1?\nA: 2.\n\n")
    n = len(shared.ids)
    rows = [shared.ids.tolist() + [5, 6, 7], shared.ids.tolist() + [8]]
    out = _continue_from_prefix(shared, rows, pad=0)
    assert out["input_ids"].tolist() == [rows[0], shared.ids.tolist() + [0, 0, 8]]
    assert out["attention_mask"].tolist() == [[1] * (n + 3), [1] * n + [0, 0, 1]]
    assert out["cache"].get_seq_length() == n and shared.cache.get_seq_length() == n  # a copy; the shared one intact
    cut = _continue_from_prefix(shared, [shared.ids.tolist()[:-1] + [9]], pad=0)  # the last prefix token merged away
    assert cut["cache"].get_seq_length() == n - 1 and cut["input_ids"][0].tolist()[-1] == 9
    assert _continue_from_prefix(shared, [[shared.ids.tolist()[0] + 1]], pad=0) is None  # nothing shared: plain path
    whole = _continue_from_prefix(shared, [shared.ids.tolist()], pad=0)  # a row that is all prefix keeps its last token
    assert whole["cache"].get_seq_length() == n - 1 and whole["input_ids"].shape == (1, n)


def test_speed_measures_positive_throughput():
    result = measure(tiny_model("qwen2"), "tiny", batch=2, seq_len=16, new_tokens=4, repeats=2, warmup=1)
    assert result.prefill_tokens_per_s > 0 and result.decode_tokens_per_s > 0 and result.peak_memory_mb > 0
    assert result.forward_tokens_per_s > 0
    assert (result.batch, result.seq_len, result.new_tokens) == (2, 16, 4)


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_speed_with_baseline_prints_both_and_ratio(tiny_dir, capsys):
    dense = tiny_dir("llama-gqa")
    out = _cli(capsys, "eval", dense, "--task", "speed", "--baseline", dense, "--seq-len", "16", "--new-tokens", "4",
               "--repeats", "1")
    lines = out.strip().splitlines()
    assert lines[0].startswith("baseline ") and lines[1].startswith("model ") and "decode" in lines[1]
    assert lines[2].startswith("ratio model/baseline: decode_tokens_per_s") and "parameters 1.000x" in lines[2]


@pytest.fixture
def answer_run(tiny_dir, tmp_path, capsys):
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"q": f"Q: what is {i} + 1?\nA: ", "a": f"{i} + 1 = {i + 1}"}) for i in range(12)))
    model = tiny_dir("qwen2")
    _cli(capsys, "prune", "--model", model, "--data", f"jsonl:{qa}", "--objective", "answer", "--prompt-field", "q",
         "--answer-field", "a", "--sparsity", "0.4", "--steps", "2", "--samples", "8", "--seq-len", "32",
         "--protect-first", "0", "--out", tmp_path / "run")
    return tmp_path / "run", qa


def test_prune_with_answer_objective_and_eval_levels(answer_run, tmp_path, capsys):
    run, qa = answer_run
    config = json.loads((run / "run.json").read_text())["config"]
    assert config["objective"] == "answer" and config["prompt_field"] == "q"
    _cli(capsys, "eval", run, "--levels", "0.2,0.4", "--task", "answer_ppl", "--data", f"jsonl:{qa}",
         "--prompt-field", "q", "--answer-field", "a", "--out", tmp_path / "ev")
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())["rows"]
    assert [r["level"] for r in rows] == ["dense", "0.2", "0.4"]
    assert rows[0]["parameters"] > rows[1]["parameters"] > rows[2]["parameters"]
    assert all(r["ppl"] > 1 for r in rows) and (tmp_path / "ev" / "ppl.png").stat().st_size > 0
    # the level's figure equals evaluating its export directly
    _cli(capsys, "export", run, "--sparsity", "0.2", "--out", tmp_path / "e2")
    out = _cli(capsys, "eval", tmp_path / "e2", "--task", "answer_ppl", "--data", f"jsonl:{qa}", "--prompt-field", "q",
               "--answer-field", "a", "--json")
    assert json.loads(out)["ppl"] == pytest.approx(rows[1]["ppl"], rel=1e-5)


def test_eval_levels_gsm8k_keeps_one_records_file_per_level(answer_run, tmp_path, capsys):
    run, _ = answer_run
    problems = tmp_path / "gsm8k.jsonl"
    problems.write_text("\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"})
                                  for i in range(3)))
    records = tmp_path / "em.jsonl"
    out = _cli(capsys, "eval", run, "--levels", "0.2", "--task", "gsm8k", "--data", f"gsm8k:{problems}", "--shots", "1",
               "--max-new-tokens", "3", "--records", records, "--json")
    rows = json.loads(out)["rows"]
    made = {label: read_records(tmp_path / f"em-{label}.jsonl") for label in ("dense", "0.2")}
    assert not records.exists() and all(sorted(r) == [0, 1, 2] for r in made.values())
    assert [r["correct"] for r in rows] == [sum(r["correct"] for r in made[label].values()) for label in ("dense", "0.2")]
    assert made["dense"][0]["settings"]["parameters"] > made["0.2"][0]["settings"]["parameters"]


def test_prune_with_margin_objective(tiny_dir, tmp_path, capsys):
    mc = tmp_path / "mc.jsonl"
    mc.write_text("\n".join(json.dumps({"context": f"Pick {i}:", "choices": [" the fox", " the dog"], "label": i % 2})
                            for i in range(10)))
    _cli(capsys, "prune", "--model", tiny_dir("llama-mha"), "--data", f"mc:{mc}", "--objective", "margin",
         "--sparsity", "0.3", "--steps", "2", "--samples", "6", "--batch-size", "3", "--protect-first", "0",
         "--out", tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["completed_steps"] == 2 and run["steps"][0]["loss"] is not None
    out = _cli(capsys, "eval", tmp_path / "run", "--levels", "0.3", "--task", "mc", "--data", f"mc:{mc}", "--json")
    rows = json.loads(out)["rows"]
    assert rows[1]["questions"] == 10 and 0 <= rows[1]["acc"] <= 1
    out = _cli(capsys, "eval", tmp_path / "run", "--levels", "0.3", "--task", "mc", "--data", f"mc:{mc}", "--json",
               "--no-dense", "--out", tmp_path / "levels")
    assert json.loads(out)["rows"] == rows[1:]


def test_eval_errors(tiny_dir, tmp_path, capsys):
    assert main(["eval", str(tiny_dir("qwen3")), "--task", "mc"]) == 2
    assert "task mc needs --data" in capsys.readouterr().err
    assert main(["eval", str(tiny_dir("qwen3")), "--task", "gsm8k", "--data", "gsm8k", "--shots", "12"]) == 2
    assert capsys.readouterr().err.strip().endswith("gisp ships 8 GSM8K exemplars; use --shots 8 or fewer")
    assert main(["eval", str(tiny_dir("qwen3")), "--levels", "0.1", "--task", "ppl", "--data", "gsm8k"]) == 2
    assert "--levels needs a run directory" in capsys.readouterr().err


def test_kv_cache_helpers_use_the_name_this_transformers_takes():
    import inspect

    from gisp.evaluation.kvcache import cache_kwargs, returned_cache

    model = tiny_model("llama-gqa")
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        first = model(input_ids=ids, use_cache=True)
        cache = returned_cache(first)
        assert cache.get_seq_length() == 3 and list(cache_kwargs(model, cache)) == [name]
        step = model(input_ids=ids[:, :1], use_cache=True, **cache_kwargs(model, cache))
        whole = model(input_ids=torch.tensor([[1, 2, 3, 1]]))
    assert returned_cache(step).get_seq_length() == 4  # the step continued from the cache, not from scratch
    torch.testing.assert_close(step.logits[:, -1], whole.logits[:, -1], rtol=1e-4, atol=1e-5)


def test_generated_lengths_count_up_to_the_first_end_token():
    from gisp.evaluation.gsm8k import generated_lengths

    generated = torch.tensor([[5, 6, 0, 0], [5, 6, 7, 8], [0, 0, 0, 0]])  # pad (= eos) 0
    assert generated_lengths(generated, pad=0) == [3, 4, 1]
    # another end-of-sequence id (9) ends a row too; after a stop string the padding is not a token
    generated = torch.tensor([[5, 9, 0, 0], [5, 6, 7, 0], [5, 6, 7, 0]])
    assert generated_lengths(generated, pad=0, end_ids={0, 9}, stopped=[False, True, False]) == [2, 3, 4]


def test_standard_errors_of_a_proportion_and_of_a_paired_difference():
    """sqrt(p(1-p)/(n-1)); the paired one is the sample sd of the per-item differences over sqrt n."""
    import math
    import statistics

    from gisp.evaluation.stats import paired_stderr, proportion_stderr

    assert math.isclose(proportion_stderr(3, 10), statistics.stdev([1] * 3 + [0] * 7) / math.sqrt(10))
    diffs = [1] * 5 + [-1] * 2 + [0] * 13  # right only for a on 5 items, only for b on 2
    assert math.isclose(paired_stderr(5, 2, 20), statistics.stdev(diffs) / math.sqrt(20))
    assert paired_stderr(0, 0, 20) == 0.0 and paired_stderr(1, 0, 1) == 0.0

"""gisp.batches: calibration batches per objective, and the helpers every pass over them shares."""

from __future__ import annotations

import torch
from conftest import tiny_tokenizer

from gisp.batches import batch_size, build_batches, read_source, to_device, token_mask, token_samples
from gisp.config import PruneConfig


def test_lm_batches_are_seeded_windows_and_max_tokens_replaces_samples(corpus_file):
    tok = tiny_tokenizer()
    config = PruneConfig(model="m", data=f"text:{corpus_file}", samples=10, seq_len=16, batch_size=4, seed=3)
    source = read_source(config)
    first, again = build_batches(config, source, tok), build_batches(config, source, tok)
    assert [batch_size(b) for b in first] == [4, 4, 2]  # 10 windows in micro-batches of 4
    assert all(b["input_ids"].shape[1] == 16 for b in first)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))  # seeded
    budget = PruneConfig(model="m", data=f"text:{corpus_file}", samples=10, seq_len=16, batch_size=4, max_tokens=100)
    assert sum(batch_size(b) for b in build_batches(budget, read_source(budget), tok)) == 100 // 16


def test_margin_batches_keep_each_question_whole_and_number_it(tmp_path):
    import json

    path = tmp_path / "mc.jsonl"
    rows = [{"context": f"Q{i}", "choices": ["yes", "no", "maybe"], "label": i % 3} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = PruneConfig(model="m", data=f"mc:{path}", objective="margin", samples=5, seq_len=32, batch_size=6)
    batches = build_batches(config, read_source(config), tiny_tokenizer())
    for batch in batches:
        questions = batch["question"].tolist()
        assert len(questions) % 3 == 0 and all(questions.count(q) == 3 for q in set(questions))
        samples = token_samples(batch)
        mask = token_mask(batch)
        assert samples.shape == (int(mask.sum()),)  # one sample index per real token
        assert set(samples.tolist()) == set(questions)


def test_token_helpers_without_padding_or_questions():
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long)}
    assert token_mask(batch) is None and token_samples(batch) is None and batch_size(batch) == 2
    padded = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),
              "note": "kept as is"}
    assert token_mask(padded).tolist() == [[True, True, False], [True, True, True]]
    moved = to_device(padded, torch.device("meta"))
    assert moved["input_ids"].device.type == "meta" and moved["note"] == "kept as is"


def test_margin_batches_name_each_options_question():
    from gisp.examples import ChoiceExample
    from gisp.batches import token_samples
    from gisp.objectives import choice_batches

    from conftest import tiny_tokenizer

    examples = [ChoiceExample("Q one", ("a", "b"), 0), ChoiceExample("Q two", ("c", "d", "e"), 2)]
    batch = choice_batches(tiny_tokenizer(), examples, samples=2, max_tokens=None, seq_len=32, batch_size=2, seed=0)[0]
    assert batch["question"].tolist() in ([0, 0, 1, 1, 1], [0, 0, 0, 1, 1])
    samples = token_samples(batch)
    assert samples.shape[0] == int(batch["attention_mask"].sum())
    assert samples.tolist() == [q for row, q in enumerate(batch["question"].tolist())
                                for _ in range(int(batch["attention_mask"][row].sum()))]

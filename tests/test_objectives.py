"""Answer and margin objectives, their batches, and option scoring against hand computations."""

import json

import pytest
import torch
import torch.nn.functional as F

from gisp.data import encode_pair
from gisp.errors import GispError
from gisp.evaluation.choice import answer_perplexity, continuation_logprobs, multiple_choice
from gisp.examples import AnswerExample, ChoiceExample, answer_examples, choice_examples
from gisp.objectives import answer_batches, answer_loss, choice_batches, lm_loss, margin_loss

from conftest import tiny_model, tiny_tokenizer

TOK = tiny_tokenizer()


def _grads(model, loss):
    params = [p for n, p in model.named_parameters() if "layers" in n and p.dim() == 2]
    return torch.autograd.grad(loss, params)


def test_answer_loss_counts_answer_tokens_only():
    model = tiny_model("llama-gqa")
    ex = AnswerExample("Q: Janet has 3 apples\nA: ", "3 + 4 = 7")
    [batch] = answer_batches(TOK, [ex], samples=None, max_tokens=None, seq_len=64, batch_size=1, seed=0)
    ctx, cont = encode_pair(TOK, ex.prompt, ex.answer)
    ids = torch.tensor([ctx + cont])
    assert torch.equal(batch["input_ids"], ids)
    logits = model(ids).logits[0, :-1]
    start = len(ctx) - 1  # the first answer token is predicted from the last prompt position
    expected = F.cross_entropy(logits[start:], ids[0, len(ctx):])
    assert torch.allclose(answer_loss(model, batch), expected, atol=1e-6)
    # The plain LM loss on the same tokens (prompt included) is a different number.
    assert not torch.allclose(lm_loss(model, {"input_ids": ids}), expected)


def test_answer_loss_ignores_the_prompt_labels():
    """Labelling the prompt positions (with anything) changes neither loss nor gradient."""
    model = tiny_model("qwen2")
    [batch] = answer_batches(TOK, [AnswerExample("Q: fox?\nA: ", "lazy dog")], samples=None, max_tokens=None,
                             seq_len=64, batch_size=1, seed=0)
    relabelled = batch | {"labels": torch.randint(0, 320, batch["input_ids"].shape, generator=torch.Generator().manual_seed(3))}
    loss, loss2 = answer_loss(model, batch), answer_loss(model, relabelled)
    assert torch.equal(loss, loss2)
    assert all(torch.equal(a, b) for a, b in zip(_grads(model, loss), _grads(model, loss2)))
    with pytest.raises(GispError, match="needs batches with a target_mask"):
        answer_loss(model, {"input_ids": batch["input_ids"]})


def test_margin_gradient_is_difference_of_answer_gradients():
    model = tiny_model("llama-gqa")
    q = ChoiceExample("Question: what jumps?\nAnswer:", ("the quick brown fox", "tiny text"), 0)
    [batch] = choice_batches(TOK, [q], samples=None, max_tokens=None, seq_len=64, batch_size=1, seed=0)
    assert batch["correct"].tolist() == [True, False]
    margin = _grads(model, margin_loss(model, batch))
    correct = _grads(model, answer_loss(model, answer_batches(TOK, [AnswerExample(q.context, " " + q.choices[0])],
                                                              samples=None, max_tokens=None, seq_len=64, batch_size=1, seed=0)[0]))
    wrong = _grads(model, answer_loss(model, answer_batches(TOK, [AnswerExample(q.context, " " + q.choices[1])],
                                                            samples=None, max_tokens=None, seq_len=64, batch_size=1, seed=0)[0]))
    for m, c, w in zip(margin, correct, wrong):
        assert torch.allclose(m, c - w, atol=1e-5)


def test_choice_batches_keep_questions_whole_and_mark_gold():
    qs = [ChoiceExample(f"ctx {i}", ("a", "b", "c"), i % 3) for i in range(5)]
    batches = choice_batches(TOK, qs, samples=None, max_tokens=None, seq_len=32, batch_size=2, seed=0)
    assert [b["input_ids"].shape[0] for b in batches] == [6, 6, 3]
    assert all(int(b["correct"].sum()) == b["input_ids"].shape[0] // 3 for b in batches)


def test_token_budget_limits_calibration():
    exs = [AnswerExample(f"Q: {i}\nA: ", "the quick brown fox") for i in range(20)]
    batches = answer_batches(TOK, exs, samples=None, max_tokens=40, seq_len=64, batch_size=4, seed=0)
    used = sum(int(b["attention_mask"].sum()) for b in batches)
    assert 0 < used <= 40
    assert sum(b["input_ids"].shape[0] for b in answer_batches(TOK, exs, samples=7, max_tokens=None, seq_len=64,
                                                                batch_size=4, seed=0)) == 7


def test_option_scoring_matches_hand_computation():
    model = tiny_model("llama-mha")
    pairs = [("Question: what jumps?\nAnswer:", " the quick brown fox"), ("A tiny model", " reads tiny text.")]
    got = continuation_logprobs(model, TOK, pairs, batch_size=2, progress=False)
    for (context, cont), (logprob, n) in zip(pairs, got):
        ctx, c = encode_pair(TOK, context, cont)
        ids = torch.tensor([ctx + c])
        with torch.no_grad():
            logp = model(ids).logits[0].log_softmax(-1)
        hand = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(c))
        assert n == len(c) and logprob == pytest.approx(hand, abs=1e-4)


def test_option_scoring_keeps_order_whatever_the_batching():
    """Batched longest first, returned in the given order: the same values as one pair at a time."""
    model = tiny_model("llama-mha")
    pairs = [("Q:", " a"), ("A longer context here", " and a much longer continuation than the others"),
             ("Mid", " three tokens"), ("x", " the quick brown fox jumps"), ("Q:", " b")]
    alone = [continuation_logprobs(model, TOK, [p], batch_size=1, progress=False)[0] for p in pairs]
    batched = continuation_logprobs(model, TOK, pairs, batch_size=3, progress=False)
    assert [n for _, n in batched] == [n for _, n in alone]
    assert [lp for lp, _ in batched] == pytest.approx([lp for lp, _ in alone], abs=1e-4)


def test_multiple_choice_acc_and_normalisations():
    """acc: argmax of summed log-likelihood; acc_norm / acc_bytes: divided by the option's characters / UTF-8
    bytes, the option taken without the space that joins it to the context (as lm-eval does)."""
    model = tiny_model("llama-mha")
    qs = [ChoiceExample("The quick brown", ("fox", "fox jumps over the lazy dog"), 1),
          ChoiceExample("A tiny", ("modél", "text"), 1)]
    scores = continuation_logprobs(model, TOK, [(q.context, " " + c) for q in qs for c in q.choices], progress=False)
    ll = [s for s, _ in scores]

    def hits(length):
        return sum(int(ll[2 * i + 1] / length(q.choices[1]) > ll[2 * i] / length(q.choices[0])) for i, q in enumerate(qs)) / 2

    result = multiple_choice(model, TOK, qs, progress=False)
    assert result.questions == 2
    assert result.acc == hits(lambda c: 1)
    assert result.acc_norm == hits(len)
    assert result.acc_bytes == hits(lambda c: len(c.encode("utf-8")))
    p = result.acc
    assert result.acc_stderr == pytest.approx((p * (1 - p) / 1) ** 0.5)  # lm-eval's sqrt(p(1-p)/(n-1))


def test_multiple_choice_records_every_question(tmp_path):
    model = tiny_model("llama-mha")
    qs = [ChoiceExample("The quick brown", ("fox", "dog"), 1), ChoiceExample("A tiny", ("modél", "text"), 0)]
    result = multiple_choice(model, TOK, qs, progress=False, records=tmp_path / "mc.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "mc.jsonl").read_text().splitlines()]
    assert [r["index"] for r in lines] == [0, 1] and [r["label"] for r in lines] == [1, 0]
    scores = continuation_logprobs(model, TOK, [(q.context, " " + c) for q in qs for c in q.choices], progress=False)
    assert [ll for r in lines for ll in r["loglikelihoods"]] == pytest.approx([s for s, _ in scores])
    assert sum(r["pick"] == r["label"] for r in lines) / 2 == result.acc
    assert not list(tmp_path.glob(".*"))  # written through a temporary name, nothing left behind
    with pytest.raises(GispError, match="give a file in an existing folder"):
        multiple_choice(model, TOK, qs, progress=False, records=tmp_path)


def test_answer_perplexity_is_exp_mean_nll():
    model = tiny_model("qwen3")
    exs = [AnswerExample("Q: a\nA: ", "the lazy dog"), AnswerExample("Q: b\nA: ", "tiny text")]
    scored = continuation_logprobs(model, TOK, [(e.prompt, e.answer) for e in exs], progress=False)
    result = answer_perplexity(model, TOK, exs, progress=False)
    assert result.tokens == sum(n for _, n in scored)
    assert result.nll == pytest.approx(-sum(s for s, _ in scored) / result.tokens)


def test_piqa_and_generic_loaders(tmp_path):
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps({"goal": f"g{i}", "sol1": "x", "sol2": "y"}) for i in range(3)))
    (tmp_path / "dev-labels.lst").write_text("1\n0\n1\n")
    qs = choice_examples(f"piqa:{tmp_path / 'dev.jsonl'}[1:]")
    assert [q.label for q in qs] == [0, 1]
    assert qs[0].context == "Question: g1\nAnswer:" and qs[0].continuations() == [" x", " y"]
    (tmp_path / "mc.jsonl").write_text(json.dumps({"context": "c", "choices": ["a", "b", "c"], "label": 2}))
    assert choice_examples(f"mc:{tmp_path / 'mc.jsonl'}")[0].choices == ("a", "b", "c")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"context": "c", "choices": ["a", "b"], "label": 3}))
    with pytest.raises(GispError, match="bad.jsonl:1: label 3 does not index 2 choices"):
        choice_examples(f"mc:{tmp_path / 'bad.jsonl'}")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"context": "c", "choices": ["a"], "label": 0}))
    with pytest.raises(GispError, match="must be a list of at least two strings"):
        choice_examples(f"mc:{tmp_path / 'bad.jsonl'}")
    (tmp_path / "nolab.jsonl").write_text(json.dumps({"goal": "g", "sol1": "x", "sol2": "y"}))
    with pytest.raises(GispError, match="PIQA labels not found"):
        choice_examples(f"piqa:{tmp_path / 'nolab.jsonl'}")
    (tmp_path / "qa.jsonl").write_text(json.dumps({"q": "why?", "a": "because"}))
    assert answer_examples(f"jsonl:{tmp_path / 'qa.jsonl'}", "q", "a") == [AnswerExample("why?", "because")]
    with pytest.raises(GispError, match="no field 'prompt'"):
        answer_examples(f"jsonl:{tmp_path / 'qa.jsonl'}")
    assert answer_examples("gsm8k[:1]")[0].prompt.startswith("Q: Janet")


CHAT = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_gsm8k_answers_for_a_chat_model(tmp_path):
    from gisp.examples import CHAT_INSTRUCTION

    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "Natalia sold clips. How many?",
                                "answer": "She sold 48/2 = <<48/2=24>>24 in May.\n#### 72"}) + "\n")
    [plain] = answer_examples(f"gsm8k:{data}")
    [chat] = answer_examples(f"gsm8k:{data}", chat=True)
    assert plain == AnswerExample("Q: Natalia sold clips. How many?\nA: ", "She sold 48/2 = <<48/2=24>>24 in May.\n#### 72")
    assert chat == AnswerExample(f"Natalia sold clips. How many?\n{CHAT_INSTRUCTION}",
                                 "She sold 48/2 = 24 in May.\nThe answer is \\boxed{72}.")


def test_chat_rendered_prompts_as_a_user_turn_and_scores_the_reply():
    from gisp.examples import chat_rendered

    tok = tiny_tokenizer()
    with pytest.raises(GispError, match="needs a tokenizer with a chat template"):
        chat_rendered(tok, [AnswerExample("2 + 2?", "4")])
    tok.chat_template = CHAT
    [ex] = chat_rendered(tok, [AnswerExample("2 + 2?", "4")])
    assert ex == AnswerExample("<user>2 + 2?</s><assistant>", "4</s>")  # the reply ends its turn
    tok.chat_template = CHAT + "<bos>"  # a reply that does not continue the generation prompt
    with pytest.raises(GispError, match="does not continue its generation prompt"):
        chat_rendered(tok, [AnswerExample("2 + 2?", "4")])


def test_chat_template_batches_score_the_rendered_reply(tmp_path):
    from gisp.batches import build_batches, read_source
    from gisp.config import PruneConfig, RecoverConfig

    data = tmp_path / "gsm8k.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"})
                              for i in range(3)))
    tok = tiny_tokenizer()
    tok.chat_template = CHAT
    config = PruneConfig(model="m", data=f"gsm8k:{data}", objective="answer", chat_template=True, samples=3,
                         seq_len=256, batch_size=3)
    [batch] = build_batches(config, read_source(config), tok)
    row = batch["input_ids"][0][batch["attention_mask"][0].bool()]
    scored = batch["input_ids"][0][batch["target_mask"][0]]
    assert tok.decode(row).startswith("<user>What is")
    assert tok.decode(scored).strip().endswith("</s>") and "<assistant>" not in tok.decode(scored)
    assert "The answer is \\boxed{" in tok.decode(scored)
    with pytest.raises(GispError, match="--chat-template renders prompt/answer data"):
        PruneConfig(model="m", data="wikitext2", chat_template=True)
    with pytest.raises(GispError, match="--chat-template renders prompt/answer data"):
        RecoverConfig(model="m", data="wikitext2", out="o", chat_template=True)


def test_per_token_ce_matches_cross_entropy_per_position():
    """The flattened layout (fast on a CPU) gives each position's CE, -100 targets 0, in float32."""
    from gisp.objectives import per_token_ce

    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.bfloat16)  # [B, T, V]
    targets = torch.randint(0, 11, (3, 5))
    targets[1, 2] = -100
    ce = per_token_ce(logits, targets)
    assert ce.shape == (3, 5) and ce.dtype == torch.float32
    assert ce[1, 2] == 0
    for b in range(3):
        for t in range(5):
            if targets[b, t] != -100:
                expected = -torch.log_softmax(logits[b, t].float(), -1)[targets[b, t]]
                assert torch.allclose(ce[b, t], expected, atol=1e-5)

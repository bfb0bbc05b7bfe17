"""Saliency, aggregation and normalisation against hand computations."""

import pytest
import torch

from gisp import saliency



def test_weight_saliency_is_abs_of_product_after_averaging():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    g = torch.tensor([[0.5, 0.25], [-1.0, 4.0]])
    assert torch.equal(saliency.weight_saliency(w, g), torch.tensor([[0.5, 0.5], [3.0, 2.0]]))


def test_head_scores_sum_q_rows_and_o_columns():
    hd, d, heads = 2, 3, 3
    q = torch.arange(heads * hd * d, dtype=torch.float32).reshape(heads * hd, d)
    o = torch.arange(d * heads * hd, dtype=torch.float32).reshape(d, heads * hd) * 10
    expected = []
    for h in range(heads):
        rows = range(h * hd, (h + 1) * hd)
        expected.append(sum(float(q[r].sum()) for r in rows) + sum(float(o[:, r].sum()) for r in rows))
    assert saliency.head_scores(q, o, hd).tolist() == expected


def test_mha_head_scores_add_own_k_and_v_rows():
    hd, d = 2, 3
    q, o = torch.zeros(4, d), torch.zeros(d, 4)
    k = torch.tensor([[1.0] * d, [1.0] * d, [2.0] * d, [2.0] * d])
    v = k * 100
    assert saliency.head_scores(q, o, hd, k=k, v=v).tolist() == [606.0, 1212.0]


def test_channel_scores_sum_gate_up_rows_and_down_column():
    gate = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # [F=3, d=2]
    up = gate * 10
    down = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 1.0]])  # [d=2, F=3]
    assert saliency.channel_scores(gate, up, down).tolist() == [35.0, 78.0, 124.0]


def test_normalize_reference_and_params():
    heads, channels = torch.tensor([[64.0]]), torch.tensor([[30.0]])
    kw = dict(hidden_size=4, head_dim=2, intermediate_size=5, head_size=2 * 2 * 4, channel_size=3 * 4)
    h, c = saliency.normalize(heads, channels, "reference", **kw)
    assert h.item() == 64.0 / (4 * 2 * 4) and c.item() == 30.0 / (3 * 5)
    h, c = saliency.normalize(heads, channels, "params", **kw)
    assert h.item() == 64.0 / (2 * 2 * 4) and c.item() == 30.0 / (3 * 4)
    h, _ = saliency.normalize(heads, channels, "params", **(kw | {"head_size": 4 * 2 * 4}))
    assert h.item() == 64.0 / (4 * 2 * 4)  # an MHA head saves its K/V rows too


def test_normalize_zscore_uses_alive_structures_only():
    heads = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    alive = torch.tensor([[True, True, True, False]])
    h, c = saliency.normalize(heads, torch.tensor([[5.0, 5.0]]), "zscore", hidden_size=1, head_dim=1,
                              intermediate_size=2, head_size=1, channel_size=1, heads_alive=alive)
    std = torch.tensor([1.0, 2.0, 3.0]).std(unbiased=False)
    assert torch.allclose(h[0, :3], torch.tensor([-1.0, 0.0, 1.0]) / std)
    assert h[0, 3] == float("inf")
    assert c.tolist() == [[0.0, 0.0]]


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="unknown normalization"):
        saliency.normalize(torch.ones(1, 1), torch.ones(1, 1), "l2", hidden_size=1, head_dim=1, intermediate_size=1,
                            head_size=1, channel_size=1)


def test_compensated_saliency_by_hand_and_free_for_a_constant_input():
    """|W_ij (g_ij - mu_j b_i)|; a feature whose input never varies costs nothing once compensated."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=gen, dtype=torch.float64)  # 50 tokens, 3 input features
    x[:, 1] = 0.7  # feature 1 is constant
    delta = torch.randn(50, 4, generator=gen, dtype=torch.float64)  # dL/dy per token, d = 4
    weight = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    grad, bias_grad, means = delta.T @ x, delta.sum(0), x.mean(0)  # dL/dW, dL/db, mean input
    sal = saliency.compensated_saliency(weight, grad, bias_grad, means)
    expected = (weight * (grad - bias_grad[:, None] * means[None, :])).abs()
    assert torch.allclose(sal.double(), expected, atol=1e-5)
    assert torch.allclose(sal[:, 1], torch.zeros(4), atol=1e-5)  # compensated removal of a constant: free
    assert saliency.weight_saliency(weight, grad)[:, 1].sum() > 0.1  # zeroing it is not
    # the signed column sum is the first-order loss change of replacing x_j by its mean
    signed = (weight * (grad - bias_grad[:, None] * means[None, :])).sum(0)
    assert torch.allclose(signed, ((delta @ weight) * (x - means)).sum(0), atol=1e-9)


def test_fisher_moments_square_each_samples_sum_when_tokens_share_a_sample():
    """Margin: the tokens of a question's options are one sample; a removal's first-order effects
    are summed over them before squaring (a change that moves every option alike can cancel)."""
    from gisp.saliency import fisher_moments, fisher_scores

    gen = torch.Generator().manual_seed(0)
    grad, x = torch.randn(7, 6, generator=gen), torch.randn(7, 6, generator=gen)  # 7 tokens, 3 heads of 2
    samples = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    means = torch.randn(6, generator=gen)
    for mu in (None, means):
        change = grad * (x - (0 if mu is None else mu))  # [N, n]: each token's first-order change per feature
        per_head = change.reshape(7, 3, 2).sum(-1)  # [N, G]
        per_sample = torch.zeros(3, 3).index_add_(0, samples, per_head)  # [Q, G]
        expected = per_sample.pow(2).sum(0)
        got = fisher_scores(*fisher_moments(grad, x, 2, samples), mu)
        assert torch.allclose(got, expected.float(), rtol=1e-5, atol=1e-6)
        tokens = fisher_scores(*fisher_moments(grad, x, 2), mu)  # each token its own sample
        assert torch.allclose(tokens, per_head.pow(2).sum(0).float(), rtol=1e-5, atol=1e-6)
    # two tokens of one sample whose effects cancel: nothing for that sample, while per-token squares count both
    grad, x = torch.tensor([[1.0], [-1.0]]), torch.tensor([[2.0], [2.0]])
    assert float(fisher_scores(*fisher_moments(grad, x, 1, torch.tensor([0, 0])), None)) == 0.0
    assert float(fisher_scores(*fisher_moments(grad, x, 1), None)) == 8.0

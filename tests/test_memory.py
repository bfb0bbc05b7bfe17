"""Memory settings change how gradient passes run, never what they compute: gradient
checkpointing gives bit-identical scores, chunked cross-entropy the same losses, and a run with
both removes exactly what a run without them removes."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import gisp
from gisp.adapters import adapter_for
from gisp.gradients import TaylorImportance
from gisp.objectives import answer_loss, chunked_loss, lm_loss, margin_loss


def _batches(seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (4, 24), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0  # one padded sequence
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[:, 10:] = True
    target &= mask.bool()
    return [{"input_ids": ids[i:i + 2], "attention_mask": mask[i:i + 2], "target_mask": target[i:i + 2],
             "correct": torch.tensor([True, False])} for i in (0, 2)]


@pytest.mark.parametrize("options", [dict(weights="output", compensate=True, saliency="fisher"),
                                     dict(weights="output", compensate=True), dict(weights="all", aggregate="kv-group")],
                         ids=["fisher-compensated", "first-order-compensated", "llm-pruner"])
def test_checkpointing_gives_bit_identical_scores_and_leaves_nothing_behind(options):
    model = tiny_model("llama-gqa")
    adapter = adapter_for(model.config)
    plain = TaylorImportance(_batches(), answer_loss, progress=False, **options)(model, adapter)
    saved = TaylorImportance(_batches(), answer_loss, progress=False, checkpointing=True, **options)(model, adapter)
    assert torch.equal(plain.heads, saved.heads) and torch.equal(plain.channels, saved.channels)
    assert plain.loss == saved.loss
    if plain.input_means is not None:  # inputs counted once, not again when layers re-run
        assert torch.equal(plain.input_means.attention, saved.input_means.attention)
        assert torch.equal(plain.input_means.mlp, saved.input_means.mlp)
    assert saved.heads.grad_fn is None and saved.channels.grad_fn is None
    assert not model.is_activation_checkpointing and not any(layer.training for layer in adapter.layers(model))
    assert getattr(model, "_require_grads_hook", None) is None
    assert not model.get_input_embeddings()._forward_hooks and not any(m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("family", ["llama-gqa", "granite"])  # granite scales its logits: the adapter knows
@pytest.mark.parametrize("objective", [lm_loss, answer_loss, margin_loss], ids=["lm", "answer", "margin"])
def test_chunked_cross_entropy_is_the_same_loss_and_gradient(family, objective):
    model = tiny_model(family)
    batch = _batches()[0]
    if objective is lm_loss:
        batch = {"input_ids": batch["input_ids"]}
    whole = objective(model, batch)
    grad_whole = torch.autograd.grad(whole, model.model.layers[1].mlp.down_proj.weight)[0]
    with chunked_loss(5):  # 23 positions: chunks of 5, 5, 5, 5, 3
        part = objective(model, batch)
    grad_part = torch.autograd.grad(part, model.model.layers[1].mlp.down_proj.weight)[0]
    assert float(part.detach()) == pytest.approx(float(whole.detach()), rel=1e-6)
    torch.testing.assert_close(grad_part, grad_whole, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_a_run_with_memory_settings_removes_exactly_the_same_structures(tiny_dir, corpus_file, tmp_path):
    common = dict(model=str(tiny_dir("llama-gqa")), data=f"text:{corpus_file}", sparsity=0.4, steps=4, samples=16,
                  seq_len=32, batch_size=4)
    plain = gisp.prune(out=tmp_path / "plain", progress=False, **common)
    lean = gisp.prune(out=tmp_path / "lean", progress=False, gradient_checkpointing=True, loss_chunk=8, **common)
    assert torch.equal(plain.head_order, lean.head_order) and torch.equal(plain.channel_order, lean.channel_order)
    assert torch.equal(plain.head_step, lean.head_step) and torch.equal(plain.channel_step, lean.channel_step)
    # memory settings are not part of what a run computes: a run resumes with them changed
    again = gisp.prune(out=tmp_path / "plain", progress=False, gradient_checkpointing=True, **common)
    assert torch.equal(again.head_order, plain.head_order)


def test_large_freed_blocks_go_back_to_the_system_on_glibc():
    import platform

    from gisp.runtime import return_freed_memory

    applied = return_freed_memory()
    assert applied is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_chunked_cross_entropy_reads_a_non_uniform_export(tmp_path):
    """Evaluation under chunked_loss goes through the adapter's logits, which must accept an export
    whose layers differ (pruning one again is still refused)."""
    from conftest import tiny_tokenizer

    from gisp.structures import Masks
    from gisp.slicing import build_pruned_model

    model = tiny_model("llama-gqa")
    adapter = adapter_for(model.config)
    masks = Masks.dense(adapter.geometry())
    masks.heads[1, :2] = False
    masks.channels[2, :7] = False
    pruned, remote = build_pruned_model(model, masks, None)
    assert remote
    batch = _batches()[0]
    whole = answer_loss(pruned, batch)
    with chunked_loss(4):
        part = answer_loss(pruned, batch)
    assert float(part.detach()) == pytest.approx(float(whole.detach()), rel=1e-6)

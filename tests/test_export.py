"""Exported models equal the masked model, load without gisp, and are as small as counted."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gisp.adapters import adapter_for
from gisp.export import save_export, ExportInfo
from gisp.slicing import build_pruned_model
from gisp.masking import apply_masks
from gisp.structures import Masks, decoder_params, layer_shape, model_parameters

from conftest import tiny_model

IDS = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))


def _masks(model, heads: list[list[int]], channels: list[int]) -> Masks:
    """Masks that keep ``heads[l]`` query heads and the first ``channels[l]`` channels (shuffled)."""
    shape = layer_shape(model, adapter_for(model.config))
    masks = Masks.dense(shape.geometry)
    gen = torch.Generator().manual_seed(1)
    for layer, (keep, n) in enumerate(zip(heads, channels)):
        masks.heads[layer] = False
        masks.heads[layer, keep] = True
        masks.channels[layer] = False
        masks.channels[layer, torch.randperm(masks.channels.shape[1], generator=gen)[:n]] = True
    return masks


def _masked_logits(model, masks):
    apply_masks(model, adapter_for(model.config), masks)
    with torch.no_grad():
        return model(IDS).logits


def _export(tmp_path: Path, model, masks) -> tuple[Path, torch.Tensor, bool]:
    """Export ``model`` under ``masks``; return the dir, the masked logits and whether remote code is used."""
    pruned, remote = build_pruned_model(model, masks)
    with torch.no_grad():
        exported = pruned(IDS).logits
    expected = _masked_logits(model, masks)
    assert torch.allclose(exported, expected, atol=1e-4), (exported - expected).abs().max()
    info = ExportInfo(str(tmp_path / "out"), 0.0, 0.0, 0, 0, 0, 0, 0, remote, {})
    save_export(pruned, None, remote, info, tmp_path / "out")
    return tmp_path / "out", expected, remote


RELOAD = textwrap.dedent('''
    import importlib.abc, sys
    class NoGisp(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "gisp" or name.startswith("gisp."):
                raise ImportError("gisp must not be imported here")
    sys.meta_path.insert(0, NoGisp())
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    out, data = sys.argv[1], load_file(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(data["ids"]).logits
    assert "gisp" not in sys.modules
    diff = (logits - data["logits"]).abs().max().item()
    print(type(model).__name__, diff)
    sys.exit(0 if diff < 1e-4 else 1)
''')


def reload_without_gisp(out: Path, logits: torch.Tensor, tmp_path: Path, ids: torch.Tensor = IDS) -> str:
    """Load ``out`` in a fresh interpreter that cannot import gisp, check its logits on ``ids``
    equal ``logits``; return the class name it got."""
    data = tmp_path / "expected.safetensors"
    save_file({"ids": ids, "logits": logits.contiguous()}, data)
    proc = subprocess.run([sys.executable, "-c", RELOAD, str(out), str(data)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.split()[0]


CASES = {
    # name: (model, kept heads per layer, kept channels per layer)
    "llama-mha": ([[0, 2], [1], [0, 1, 2, 3], [3]], [10, 40, 0, 7]),
    "llama-gqa-uneven": ([[0, 1, 2, 4], [5], [0, 3], []], [33, 5, 40, 12]),
    "mistral": ([[0, 1, 4], [2, 3], [0, 1, 2, 3, 4, 5], [1]], [40, 20, 1, 39]),
    "qwen2": ([[0, 1, 3], [4, 5], [2], [0, 1, 2, 3, 4, 5]], [21, 40, 3, 30]),
    "qwen3": ([[1, 2, 3, 5], [0], [], [2, 4]], [40, 0, 11, 25]),
}


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
@pytest.mark.parametrize("case", sorted(CASES))
def test_heterogeneous_export_equals_masked_model_and_loads_without_gisp(case, tmp_path):
    name = case.replace("-uneven", "")
    model = tiny_model(name)
    masks = _masks(model, *CASES[case])
    out, logits, remote = _export(tmp_path, model, masks)
    assert remote
    assert (out / "modeling_gisp.py").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == model.config.model_type
    assert len(config["per_layer_config"]) >= 1
    assert reload_without_gisp(out, logits, tmp_path).startswith("Gisp")


def test_parameter_count_of_export_equals_counted(tmp_path):
    model = tiny_model("qwen2")
    masks = _masks(model, *CASES["qwen2"])
    shape = layer_shape(model, adapter_for(model.config))
    pruned, _ = build_pruned_model(model, masks)
    non_decoder = model_parameters(model) - decoder_params(Masks.dense(shape.geometry), shape)
    assert model_parameters(pruned) == non_decoder + decoder_params(masks, shape)


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_uniform_export_is_a_stock_checkpoint(tmp_path):
    """Qwen2 accepts any head count: equal layers need no remote code."""
    model = tiny_model("qwen2")
    masks = _masks(model, [[0, 1, 3, 4]] * 4, [24] * 4)
    out, logits, remote = _export(tmp_path, model, masks)
    assert not remote and not (out / "modeling_gisp.py").exists()
    config = json.loads((out / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (4, 2, 24)
    assert "auto_map" not in config
    assert reload_without_gisp(out, logits, tmp_path) == "Qwen2ForCausalLM"


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_uniform_llama_with_non_divisor_head_count_uses_remote_config(tmp_path):
    """Stock LlamaConfig refuses hidden_size % heads != 0 (56 % 5): the remote config relaxes only that."""
    model = tiny_model("llama-mha", hidden_size=56, num_attention_heads=7, num_key_value_heads=7)
    masks = _masks(model, [[0, 1, 3, 5, 6]] * 4, [40] * 4)
    out, logits, remote = _export(tmp_path, model, masks)
    config = json.loads((out / "config.json").read_text())
    assert remote and "per_layer_config" not in config and config["num_attention_heads"] == 5
    assert reload_without_gisp(out, logits, tmp_path) == "GispForCausalLM"


def test_export_state_dict_shapes(tmp_path):
    model = tiny_model("llama-gqa")
    masks = _masks(model, *CASES["llama-gqa-uneven"])
    out, _, _ = _export(tmp_path, model, masks)
    state = load_file(out / "model.safetensors")
    assert state["model.layers.0.self_attn.q_proj.weight"].shape == (6 * 8, 48)  # groups 3+1 -> 2 groups of 3
    assert state["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 8, 48)
    assert state["model.layers.1.self_attn.q_proj.weight"].shape == (1 * 8, 48)
    assert state["model.layers.1.self_attn.k_proj.weight"].shape == (1 * 8, 48)
    assert state["model.layers.3.self_attn.o_proj.weight"].abs().sum() == 0  # empty block: one zero head
    assert state["model.layers.0.mlp.down_proj.weight"].shape == (48, 33)
    assert state["model.layers.1.mlp.gate_proj.weight"].shape == (5, 48)


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
@pytest.mark.parametrize("name,heads,kv,hd", [("llama-gqa", 9, 3, 8), ("qwen2", 14, 2, 4)])  # SmolLM2's, Qwen2.5-0.5B's groups
def test_no_level_exports_more_kv_heads_than_dense(name, heads, kv, hd, tmp_path):
    """Uneven query groups are laid out with zero query heads rather than duplicated KV heads
    whenever duplicates would grow the KV cache past the dense model's: at every level of a run."""
    import gisp
    from gisp.config import PruneConfig
    from gisp.structures import kv_heads, kv_values_per_token

    from conftest import tiny_tokenizer

    sizes = dict(num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd, hidden_size=heads * hd)
    model, dense = tiny_model(name, **sizes), tiny_model(name, **sizes)
    config = PruneConfig(model="tiny", data="gsm8k[:8]", sparsity=0.7, steps=7, samples=8, seq_len=32, batch_size=4,
                         protect_first=0.0, protect_last=0)
    traj = gisp.prune(config, model=model, tokenizer=tiny_tokenizer(), progress=False)
    adapter = adapter_for(dense.config)
    shape = layer_shape(dense, adapter, compensate=True)
    uneven = 0
    for step in range(1, traj.completed_steps + 1):
        masks = traj.masks_at_step(step)
        counts = masks.heads.reshape(masks.heads.shape[0], kv, heads // kv).sum(-1)  # [L, H] -> [L, KV] kept per group
        uneven += int(((counts > 0) & (counts < counts.max(-1, keepdim=True).values)).any(-1).sum())
        pruned, _ = build_pruned_model(dense, masks, traj.input_means)
        exported = [layer.self_attn.k_proj.out_features // hd for layer in pruned.model.layers]
        assert max(exported) <= kv and exported == [k for k in kv_heads(masks, shape) if k]
        assert kv_values_per_token(masks, shape) <= kv_values_per_token(Masks.dense(shape.geometry), shape)
    assert uneven > 0  # the run did leave groups of unequal sizes: the layout was tested


def test_masked_level_is_what_the_export_equals(tmp_path):
    """gisp.masked_level: the base model with a level's removals and compensation biases, the
    reference a new family's export is checked against (docs/model-families.md)."""
    import gisp
    from gisp.config import PruneConfig

    from conftest import tiny_tokenizer

    config = PruneConfig(model="tiny", data="gsm8k[:8]", sparsity=0.4, steps=2, samples=8, seq_len=32, batch_size=4,
                         protect_first=0.0)
    traj = gisp.prune(config, model=tiny_model("qwen2"), tokenizer=tiny_tokenizer(), progress=False)
    assert traj.compensated
    dense = tiny_model("qwen2")
    shape = layer_shape(dense, adapter_for(dense.config), compensate=True)  # the dense model's counting
    for level in (0.2, 0.4):
        masked, _ = gisp.masked_level(traj, level, model=tiny_model("qwen2"))
        masks = traj.masks_at_sparsity(level, shape)[0]
        pruned, _ = build_pruned_model(tiny_model("qwen2"), masks, traj.input_means)
        with torch.no_grad():
            reference, exported = masked(IDS).logits, pruned(IDS).logits
        assert torch.allclose(exported, reference, atol=1e-4), (exported - reference).abs().max()
        plain = tiny_model("qwen2")  # masks alone (the old recipe) miss the compensation biases
        apply_masks(plain, adapter_for(plain.config), masks)
        with torch.no_grad():
            assert (plain(IDS).logits - reference).abs().max() > 1e-2

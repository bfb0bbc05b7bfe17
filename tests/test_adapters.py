"""Every family by one adapter: prune -> export -> reload without gisp equals the masked model.

Covers the shipped families with special layouts (Phi-3's fused projections, Granite's
multipliers, OLMo-2's whole-projection q/k norms), a family gisp does not ship whose adapter is
defined here (Starcoder2: non-gated MLP, biases everywhere, LayerNorm), the prune-time refusal of
families that cannot be exported, and stock loading of a non-uniform export's tokenizer.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import gisp
import gisp.remote.modeling_gisp
from gisp.adapters import adapter_for, base
from gisp.errors import GispError
from gisp.export import check_exportable
from gisp.slicing import build_pruned_model
from gisp.masking import apply_masks
from gisp.structures import layer_shape

from conftest import tiny_config, tiny_model, tiny_tokenizer
from test_export import reload_without_gisp

IDS = torch.randint(0, 320, (6, 16), generator=torch.Generator().manual_seed(0))
BATCHES = [{"input_ids": chunk} for chunk in IDS.split(3)]


@pytest.fixture
def registry(monkeypatch):
    """Adapters registered in a test are gone after it."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


class Starcoder2Adapter(gisp.ModelAdapter):
    """A family gisp does not ship, added as docs/model-families.md says: non-gated MLP ``c_fc`` -> ``c_proj``."""

    model_types = ("starcoder2",)
    gated_mlp = False

    def layer_modules(self, layer: nn.Module) -> gisp.LayerModules:
        a, m = layer.self_attn, layer.mlp
        return gisp.LayerModules(q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj, up=m.c_fc, down=m.c_proj)


def _starcoder2():
    return tiny_model("starcoder2")


def _prune_export_reload(dense: nn.Module, tmp_path, method: str = "gisp", sparsity: float = 0.5, **kw):
    """Prune a copy of ``dense`` with ``method``, export the final level, reload it in a fresh
    process without gisp and compare its logits with the pruned (masked) model's; also build an
    intermediate level in-process against its masked model. Returns the trajectory and config."""
    work = copy.deepcopy(dense)
    traj = gisp.prune(model=work, batches=BATCHES, data="unused", method=method, sparsity=sparsity, steps=2,
                      protect_first=0.0, protect_last=0, progress=False, out=tmp_path / "run", **kw)
    gisp.export(tmp_path / "run", sparsity, tmp_path / "out", model=dense)
    with torch.no_grad():
        expected = work(IDS).logits
    reload_without_gisp(tmp_path / "out", expected, tmp_path, IDS)
    adapter = adapter_for(dense.config)
    shape = layer_shape(dense, adapter, compensate=traj.compensated)
    masks, _ = traj.masks_at_sparsity(sparsity / 2, shape)
    masked = copy.deepcopy(dense)
    if traj.compensated:
        from gisp.compensation import compensate
        from gisp.structures import Masks
        compensate(masked, adapter, Masks.dense(shape.geometry), masks, traj.input_means)
    apply_masks(masked, adapter, masks)
    pruned, _ = build_pruned_model(dense, masks, traj.input_means)
    with torch.no_grad():
        assert torch.allclose(pruned(IDS).logits, masked(IDS).logits, atol=1e-4)
    return traj, json.loads((tmp_path / "out" / "config.json").read_text())


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
@pytest.mark.parametrize("family", ["phi3", "granite", "olmo2"])
def test_shipped_family_prunes_exports_and_reloads_equal(family, tmp_path):
    sparsity = 0.4 if family == "olmo2" else 0.5  # olmo2: the MLPs alone hold 48% of the decoder
    traj, config = _prune_export_reload(tiny_model(family), tmp_path, sparsity=sparsity)
    final = traj.steps[-1]
    assert final.sparsity == pytest.approx(sparsity, abs=0.02) and final.channels_removed > 0
    if family == "olmo2":  # heads are never pruned there; the budget comes from the MLPs
        assert all(step.heads_removed == 0 for step in traj.steps)
        assert config["num_attention_heads"] == 6 and all(
            "num_attention_heads" not in layer for layer in config.get("per_layer_config", {}).values())
    else:
        assert final.heads_removed > 0
    assert config["model_type"] == family


def test_phi3_fused_projections_score_like_separate_ones():
    """A Llama model and the Phi-3 model holding the same weights fused give the same logits and
    the same per-role Taylor scores: the fused rows are cut exactly."""
    from gisp.gradients import TaylorImportance

    llama = tiny_model("llama-gqa", rms_norm_eps=1e-5)
    phi3 = tiny_model("phi3", rms_norm_eps=1e-5)
    src = dict(llama.state_dict())
    state = {}
    for key, tensor in phi3.state_dict().items():
        if key.endswith("qkv_proj.weight"):
            p = key[: -len("qkv_proj.weight")]
            state[key] = torch.cat([src[p + "q_proj.weight"], src[p + "k_proj.weight"], src[p + "v_proj.weight"]])
        elif key.endswith("gate_up_proj.weight"):
            p = key[: -len("gate_up_proj.weight")]
            state[key] = torch.cat([src[p + "gate_proj.weight"], src[p + "up_proj.weight"]])
        else:
            state[key] = src[key]
    phi3.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(phi3(IDS).logits, llama(IDS).logits, atol=1e-5)
    for aggregate in ("head", "kv-group"):
        scorer = TaylorImportance(BATCHES, progress=False, weights="all", aggregate=aggregate)
        ours, theirs = scorer(phi3, adapter_for(phi3.config)), scorer(llama, adapter_for(llama.config))
        assert torch.allclose(ours.heads, theirs.heads, rtol=1e-4, atol=1e-7)
        assert torch.allclose(ours.channels, theirs.channels, rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
@pytest.mark.parametrize("method", ["gisp", "llm-pruner", "flap", "magnitude"])
def test_family_defined_outside_gisp(method, registry, tmp_path):
    """Must-show 1: an adapter written here, registered with the public API, prunes, exports and
    reloads (fresh process, no gisp) with the masked model's logits."""
    dense = _starcoder2()
    with pytest.raises(GispError, match="unsupported model type 'starcoder2'"):
        adapter_for(dense.config)
    gisp.register_adapter(Starcoder2Adapter)
    assert "starcoder2" in gisp.supported_model_types()
    traj, config = _prune_export_reload(dense, tmp_path, method=method)
    assert traj.steps[-1].heads_removed > 0 and traj.steps[-1].channels_removed > 0
    assert config["gisp_remote"]["model"].endswith("Starcoder2ForCausalLM")


def test_non_gated_mlp_counts_two_weights_per_channel(registry):
    gisp.register_adapter(Starcoder2Adapter)
    dense = _starcoder2()
    shape = layer_shape(dense, adapter_for(dense.config))
    assert shape.channel_params == 2 * 48 + 1  # an up row with its bias, a down column
    pruned, _ = build_pruned_model(dense, _half_channels(dense))
    assert pruned.model.layers[0].mlp.c_fc.out_features == 20


def _half_channels(model):
    from gisp.structures import Masks

    masks = Masks.dense(adapter_for(model.config).geometry())
    masks.channels[:, ::2] = False
    return masks


# --- refusals --------------------------------------------------------------------------------

class HeadsOlmo2(gisp.ModelAdapter):
    """Claims OLMo-2's heads are prunable: its q/k norms would not be sliced."""

    model_types = ("olmo2",)

    def layer_modules(self, layer):
        a, m = layer.self_attn, layer.mlp
        return gisp.LayerModules(q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj, gate=m.gate_proj, up=m.up_proj,
                                 down=m.down_proj)


class WrongNames(HeadsOlmo2):
    model_types = ("starcoder2",)


def test_half_supported_families_are_refused_before_any_weights(registry):
    gisp.register_adapter(HeadsOlmo2)
    with pytest.raises(GispError, match=r"^gisp cannot prune and export 'olmo2' models \(adapter HeadsOlmo2\): "
                                        r"the export's model\.layers\.\d\.self_attn\.[qk]_norm\.weight would be"):
        check_exportable(tiny_config("olmo2"))
    gisp.register_adapter(WrongNames)
    with pytest.raises(GispError, match="adapter WrongNames.*AttributeError.*gate_proj"):
        check_exportable(tiny_config("starcoder2"))


def test_cli_refuses_a_half_supported_family_with_exit_2_before_loading(registry, tmp_path, capsys, monkeypatch):
    from gisp import cli, models

    gisp.register_adapter(HeadsOlmo2)
    tiny_config("olmo2").save_pretrained(tmp_path / "olmo2")  # a config, no weights: nothing may load them
    (tmp_path / "corpus.txt").write_text("some text " * 200)
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("weights loaded before the refusal"))
    code = cli.main(["prune", "--model", str(tmp_path / "olmo2"), "--data", f"text:{tmp_path / 'corpus.txt'}",
                     "--sparsity", "0.3", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gisp: error: gisp cannot prune and export 'olmo2'")
    assert not (tmp_path / "run").exists()


def test_layer_removal_is_refused_where_heads_cannot_go():
    with pytest.raises(GispError, match="olmo2 normalises q and k over all heads.*shortgpt removes whole layers"):
        gisp.prune(model=tiny_model("olmo2"), batches=BATCHES, data="unused", method="shortgpt", sparsity=0.3,
                   progress=False)


# --- exports load like any model ------------------------------------------------------------

STOCK = textwrap.dedent('''
    import sys, warnings
    import importlib.abc
    class NoGisp(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "gisp" or name.startswith("gisp."):
                raise ImportError("gisp must not be imported here")
    sys.meta_path.insert(0, NoGisp())
    from transformers import AutoConfig, AutoTokenizer, pipeline
    out = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(out)  # no trust_remote_code
    config = AutoConfig.from_pretrained(out)  # the stock class, with transformers' per-layer view
    heads = [config.per_layer_config[i].num_attention_heads for i in range(config.num_hidden_layers)]
    gen = pipeline("text-generation", model=out, trust_remote_code=True)
    text = gen("The quick brown", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    import json
    print(json.dumps({"tokenizer": type(tok).__name__, "config": type(config).__name__, "heads": heads, "text": text}))
''')


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_non_uniform_export_tokenizer_and_pipeline_load_like_any_model(tmp_path):
    """Must-show 3: stock AutoTokenizer (no remote code) and the text-generation pipeline."""
    dense = tiny_model("llama-gqa")
    work = copy.deepcopy(dense)
    gisp.prune(model=work, batches=BATCHES, data="unused", sparsity=0.4, steps=2, progress=False, out=tmp_path / "run")
    gisp.export(tmp_path / "run", 0.4, tmp_path / "out", model=dense, tokenizer=tiny_tokenizer())
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["per_layer_config"] and config["auto_map"]["AutoModelForCausalLM"] == "modeling_gisp.GispForCausalLM"
    proc = subprocess.run([sys.executable, "-c", STOCK, str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["config"] == "LlamaConfig" and got["tokenizer"] == type(tiny_tokenizer()).__name__
    assert got["text"].startswith("The quick brown") and len(got["text"]) > len("The quick brown")
    layers = {int(k): v for k, v in config["per_layer_config"].items()}
    assert got["heads"] == [layers.get(i, {}).get("num_attention_heads", config["num_attention_heads"])
                            for i in range(config["num_hidden_layers"])]
    assert len(set(got["heads"])) > 1 or len({json.dumps(v) for v in layers.values()}) > 1


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
@pytest.mark.parametrize("family", ["phi3", "granite", "olmo2"])
def test_uniform_level_is_a_stock_checkpoint(family, tmp_path):
    """Equal layers export as the stock class (fused rows re-fused; multipliers kept)."""
    from gisp.export import ExportInfo, save_export
    from gisp.structures import Masks

    model = tiny_model(family)
    adapter = adapter_for(model.config)
    masks = Masks.dense(adapter.geometry())
    if adapter.prunable_heads:
        masks.heads[:, [1, 4]] = False  # one head of each of two KV groups: 4 heads (2 KV) or 4 (of 3 KV) per layer
    masks.channels[:, 5:25] = False
    pruned, remote = build_pruned_model(model, masks)
    assert not remote
    save_export(pruned, None, remote, ExportInfo(str(tmp_path / "out"), 0, 0, 0, 0, 0, 0, 0, remote, {}), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "auto_map" not in config and config["intermediate_size"] == 20
    if family == "granite":
        assert (config["embedding_multiplier"], config["residual_multiplier"], config["logits_scaling"]) == (3.0, 0.7, 2.5)
    masked = copy.deepcopy(model)
    apply_masks(masked, adapter, masks)
    with torch.no_grad():
        expected = masked(IDS).logits
    assert reload_without_gisp(tmp_path / "out", expected, tmp_path, IDS) == type(model).__name__


# --- the command line reaches adapters registered outside gisp (plugins) -----------------------

PLUGIN = textwrap.dedent('''
    import gisp

    @gisp.register_adapter
    class Starcoder2Adapter(gisp.ModelAdapter):
        model_types = ("starcoder2",)
        gated_mlp = False

        def layer_modules(self, layer):
            a, m = layer.self_attn, layer.mlp
            return gisp.LayerModules(q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj, up=m.c_fc, down=m.c_proj)
''')


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_cli_prunes_and_exports_a_family_from_a_plugin_file(registry, tiny_dir, corpus_file, tmp_path):
    """GISP_PLUGINS names a .py file that registers an adapter: `gisp prune` and `gisp export`
    (separate processes, as a user runs them) serve the family; without it, prune refuses it
    before loading weights, naming the variable. The CLI export equals the API's."""
    import os

    from safetensors.torch import load_file

    model = tiny_dir("starcoder2")
    (tmp_path / "sc2_adapter.py").write_text(PLUGIN)
    prune = [sys.executable, "-m", "gisp", "prune", "--model", str(model), "--data", f"text:{corpus_file}",
             "--sparsity", "0.4", "--steps", "2", "--samples", "6", "--seq-len", "24", "--batch-size", "3",
             "--protect-first", "0", "--out", str(tmp_path / "run")]
    bare = {k: v for k, v in os.environ.items() if k != base.PLUGIN_ENV}
    proc = subprocess.run(prune, capture_output=True, text=True, env=bare, cwd=tmp_path)
    assert proc.returncode == 2 and not (tmp_path / "run").exists()
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unsupported model type 'starcoder2'" in proc.stderr and base.PLUGIN_ENV in proc.stderr
    env = bare | {base.PLUGIN_ENV: str(tmp_path / "sc2_adapter.py")}
    for argv in (prune, [sys.executable, "-m", "gisp", "export", str(tmp_path / "run"), "--sparsity", "0.4",
                         "--out", str(tmp_path / "cli-out")]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    gisp.register_adapter(Starcoder2Adapter)
    gisp.export(tmp_path / "run", 0.4, tmp_path / "api-out")
    cli, api = load_file(tmp_path / "cli-out" / "model.safetensors"), load_file(tmp_path / "api-out" / "model.safetensors")
    assert sorted(cli) == sorted(api) and all(torch.equal(cli[k], api[k]) for k in api)
    assert json.loads((tmp_path / "cli-out" / "config.json").read_text())["model_type"] == "starcoder2"


def test_plugins_load_once_and_a_broken_one_is_one_clear_error(registry, monkeypatch, tmp_path, capsys):
    from gisp import cli

    monkeypatch.setattr(base, "_plugins_scanned", {"env": None})
    monkeypatch.setattr(base, "_plugins_loaded", set())
    (tmp_path / "sc2_adapter.py").write_text(PLUGIN)
    monkeypatch.setenv(base.PLUGIN_ENV, f" {tmp_path / 'sc2_adapter.py'} ,")
    assert "starcoder2" in gisp.supported_model_types()
    assert base.load_plugins() == []  # loaded once per process
    assert type(adapter_for(tiny_config("starcoder2"))).__name__ == "Starcoder2Adapter"
    monkeypatch.setenv(base.PLUGIN_ENV, "no_such_gisp_plugin_module")
    for _ in range(2):  # a failed plugin is not forgotten: the next lookup fails the same way
        with pytest.raises(GispError, match=r"gisp plugin 'no_such_gisp_plugin_module' failed to load: "
                                            r"ModuleNotFoundError: No module named 'no_such_gisp_plugin_module'"):
            adapter_for(tiny_config("llama-gqa"))
    monkeypatch.setenv(base.PLUGIN_ENV, str(tmp_path / "missing.py"))
    tiny_config("llama-gqa").save_pretrained(tmp_path / "model")
    code = cli.main(["plan", "--model", str(tmp_path / "model"), "--samples", "4", "--seq-len", "16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"gisp: error: gisp plugin '{tmp_path / 'missing.py'}' failed to load: "
                                 f"FileNotFoundError: no such file {tmp_path / 'missing.py'}"]


def test_plugins_from_installed_entry_points(registry, monkeypatch, tmp_path):
    """A package advertising ``[project.entry-points."gisp.adapters"]`` is loaded without any variable."""
    from importlib.metadata import EntryPoint

    (tmp_path / "sc2_entry_point.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sc2_entry_point", raising=False)  # imported afresh, registering again
    monkeypatch.setattr(base, "_plugins_scanned", {"env": None})
    monkeypatch.setattr(base, "_plugins_loaded", set())
    monkeypatch.delenv(base.PLUGIN_ENV, raising=False)
    point = EntryPoint(name="starcoder2", value="sc2_entry_point", group=base.PLUGIN_GROUP)
    monkeypatch.setattr(base, "entry_points", lambda group: [point] if group == base.PLUGIN_GROUP else [])
    assert type(adapter_for(tiny_config("starcoder2"))).__name__ == "Starcoder2Adapter"


# --- loading runs no code a checkpoint ships unless trusted ------------------------------------

@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_gisp_loads_its_exports_with_its_own_code_not_the_directorys(tmp_path, monkeypatch):
    """A non-uniform export's modeling_gisp.py is never executed by gisp (the installed package's
    copy is used): a trapped copy changes nothing and runs nothing."""
    from gisp import models
    from gisp.runtime import TRUST_REMOTE_CODE_ENV

    monkeypatch.delenv(TRUST_REMOTE_CODE_ENV, raising=False)
    dense = tiny_model("llama-gqa")
    work = copy.deepcopy(dense)
    gisp.prune(model=work, batches=BATCHES, data="unused", sparsity=0.4, steps=2, progress=False, out=tmp_path / "run")
    gisp.export(tmp_path / "run", 0.4, tmp_path / "out", model=dense, tokenizer=tiny_tokenizer())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["auto_map"]
    trap = "from pathlib import Path\nPath(__file__).with_name('code-ran').write_text('it ran')\nraise SystemExit(3)\n"
    (tmp_path / "out" / "modeling_gisp.py").write_text(trap)
    model, _ = models.load(str(tmp_path / "out"))
    assert type(model).__module__ == "gisp.remote.modeling_gisp" and not (tmp_path / "out" / "code-ran").exists()
    with torch.no_grad():
        expected = work(IDS).logits
        assert torch.allclose(model(IDS).logits, expected, atol=1e-4)
    # saved again (gisp convert, a user's save_pretrained), it still loads without gisp: the generic code comes along
    model.save_pretrained(tmp_path / "again")
    assert (tmp_path / "again" / "modeling_gisp.py").read_text() == Path(gisp.remote.modeling_gisp.__file__).read_text()
    reload_without_gisp(tmp_path / "again", expected, tmp_path, IDS)
    # its config builds the model class without remote code too (gisp plan, the family check, sharded loading)
    with torch.device("meta"):
        built = models.model_from_config(models.load_config(str(tmp_path / "out")))
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_trust_remote_code_lets_a_models_own_code_run(tmp_path, monkeypatch):
    from gisp import models
    from gisp.runtime import TRUST_REMOTE_CODE_ENV

    config = tiny_config("llama-gqa").to_dict() | {"model_type": "my-own-trusted",
                                                   "auto_map": {"AutoConfig": "custom_trusted.MyConfig"}}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "m" / "custom_trusted.py").write_text(
        "from transformers import LlamaConfig\n"
        "class MyConfig(LlamaConfig):\n    model_type = 'my-own-trusted'\n")
    monkeypatch.delenv(TRUST_REMOTE_CODE_ENV, raising=False)
    with pytest.raises(GispError, match="ships its own model code .* --trust-remote-code"):
        models.load_config(str(tmp_path / "m"))
    monkeypatch.setenv(TRUST_REMOTE_CODE_ENV, "1")
    assert type(models.load_config(str(tmp_path / "m"))).__name__ == "MyConfig"


def test_an_adapter_whose_logits_miss_the_familys_scaling_is_refused_with_loss_chunk(registry):
    """Granite divides its logits by logits_scaling: an adapter without that override would make
    --loss-chunk's losses silently wrong, so prune refuses it; the shipped adapter passes."""
    from gisp.adapters.llama import LlamaAdapter

    model = tiny_model("granite")
    kwargs = dict(batches=BATCHES, data="unused", sparsity=0.2, steps=1, progress=False, loss_chunk=4)
    gisp.prune(model=copy.deepcopy(model), **kwargs)

    @gisp.register_adapter
    class PlainGranite(LlamaAdapter):
        model_types = ("granite",)

        def logits(self, model, hidden):
            return model.get_output_embeddings()(hidden)

    with pytest.raises(GispError, match=r"PlainGranite.logits\(\) does not give the model's logits .*override "
                                        r"logits\(model, hidden\)"):
        gisp.prune(model=copy.deepcopy(model), **kwargs)

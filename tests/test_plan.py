"""gisp plan: the memory model's parts from the config alone, the recommendation at its boundary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gisp.cli import main
from gisp.errors import GispError
from gisp.plan import memory_plan, recommend_batch

from conftest import tiny_config, tiny_model


def test_parts_follow_the_config():
    config = tiny_config("llama-gqa")  # d 48, F 40, 6 heads / 2 KV of 8, 4 layers, vocab 320
    params = sum(p.numel() for p in tiny_model("llama-gqa").parameters())
    fisher = memory_plan(config, 2, 16)
    assert fisher.parameters == params and fisher.weights == 4 * params and fisher.gradients == 0
    per_token_layer = 2 * 48 + 3 * 48 + 2 * 16 + 4 * 40  # norm inputs, q/attention/o input, k/v, gate/up/act/down input
    assert fisher.activations == 4 * per_token_layer * 32 * 4
    assert fisher.logits == 32 * 320 * 12
    first = memory_plan(config, 2, 16, saliency="first-order")  # gisp's default: o_proj / down_proj gradients
    assert first.gradients == 4 * (48 * 48 + 40 * 48) * 8 and first.activations == fisher.activations
    every = memory_plan(config, 2, 16, saliency="first-order", taylor_weights="all")  # llm-pruner: all seven
    projections = 4 * (48 * 48 + 2 * 16 * 48 + 48 * 48 + 3 * 40 * 48)
    assert every.gradients == projections * 8
    assert every.activations == 4 * (per_token_layer + 2 * 48) * 32 * 4  # the two norm outputs kept too
    assert memory_plan(config, 4, 16).activations == 2 * fisher.activations
    assert memory_plan(config, 2, 16, dtype="bfloat16").weights == 2 * params


def test_compaction_counts_the_copy_it_makes():
    """--compact-every adds a second model: at most the dense one, which is what the copy made
    before anything is removed holds (the bound the plan charges)."""
    from gisp.adapters import adapter_for
    from gisp.compaction import compact
    from gisp.structures import Masks

    config = tiny_config("llama-gqa")
    model = tiny_model("llama-gqa")
    adapter = adapter_for(model.config)
    copy = compact(model, adapter, Masks.dense(adapter.geometry())).model
    copy_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in copy.parameters()}.values())
    plain, compacting = memory_plan(config, 2, 16), memory_plan(config, 2, 16, compact_every=1)
    assert plain.compact_copy == 0 and compacting.compact_copy == copy_bytes == plain.weights
    assert compacting.total - plain.total == copy_bytes


def _saved_per_layer_token(name: str, batch: int = 2, seq: int = 16) -> float:
    """Floats autograd saves per layer and token in a Fisher pass (weights frozen, the embeddings'
    output a leaf that requires grad), parameters excluded: the 4-layer minus the 2-layer model."""
    import torch

    totals = []
    for layers in (2, 4):
        model = tiny_model(name, layers=layers).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        owned = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in owned:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.detach().requires_grad_())
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.model(input_ids=torch.randint(0, 320, (batch, seq)))
        totals.append(sum(seen.values()))
    return (totals[1] - totals[0]) / 2 / (batch * seq) / 4


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2"])
def test_activation_count_matches_what_autograd_saves(name):
    """The plan's per-token count is what stock layers save for backward (plus the Fisher hooks'
    o/down inputs, q + f), within the few per-token scalars (norm rstd, attention logsumexp)."""
    from gisp.adapters import adapter_for

    config = tiny_config(name)
    g = adapter_for(config).geometry()
    q, kv = g.num_heads * g.head_dim, g.num_kv_heads * g.head_dim
    planned = memory_plan(config, 1, 1).activations / (g.num_layers * 4)  # floats per layer and token
    saved = _saved_per_layer_token(name) + q + g.intermediate_size  # + what the Fisher hooks keep
    assert saved == pytest.approx(planned, rel=0.05)


def test_recommendation_is_the_largest_batch_that_fits():
    config = tiny_config("llama-gqa")
    budget = memory_plan(config, 5, 64).total
    assert recommend_batch(config, 64, budget) == 5
    assert recommend_batch(config, 64, budget - 1) == 4
    assert recommend_batch(config, 64, memory_plan(config, 1, 64).total - 1) is None


def test_cli_plan_reads_no_weights(tmp_path, capsys):
    tiny_config("qwen2").save_pretrained(tmp_path / "m")  # a config only: nothing else to load
    assert main(["plan", "--model", str(tmp_path / "m"), "--samples", "10", "--seq-len", "32", "--nproc", "2",
                 "--batch-size", "2", "--memory", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples_per_rank"] == 5 and report["micro_batches_per_rank"] == 3 and report["fits"]
    assert report["recommended_batch_size"] == 64  # the search's cap: a tiny model fits anything
    assert main(["plan", "--model", str(tmp_path / "m"), "--seq-len", "1"]) == 2
    assert "seq-len at least 2" in capsys.readouterr().err


def test_checkpointing_and_loss_chunk_shrink_the_right_parts():
    from conftest import tiny_config

    from gisp.plan import memory_plan

    config = tiny_config("llama-gqa")
    kept = memory_plan(config, 4, 64)
    lean = memory_plan(config, 4, 64, checkpointing=True, loss_chunk=16)
    d, layers = config.hidden_size, config.num_hidden_layers
    per_layer = kept.activations // (layers * 4 * 64 * 4)  # values kept per token and layer
    assert lean.activations == (layers * d + per_layer) * 4 * 64 * 4  # layer inputs + one layer recomputed
    assert lean.logits * 4 == kept.logits  # 16 of 64 positions at a time
    assert (lean.weights, lean.gradients, lean.scores) == (kept.weights, kept.gradients, kept.scores)


@pytest.mark.parametrize("shape, billions", [
    (dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32), 8.03),
    (dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64), 70.55),
], ids=["llama-3-8b", "llama-3-70b"])
def test_plan_of_llama_3_shaped_configs_from_the_config_alone(shape, billions, tmp_path, capsys):
    import json

    from transformers import LlamaConfig

    from gisp.cli import main

    LlamaConfig(vocab_size=128256, num_key_value_heads=8, tie_word_embeddings=False, **shape).save_pretrained(tmp_path)
    assert main(["plan", "--model", str(tmp_path), "--samples", "128", "--seq-len", "2048", "--batch-size", "1",
                 "--gradient-checkpointing", "--loss-chunk", "256", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"] / 1e9 == pytest.approx(billions, abs=0.01)
    assert report["bytes"]["weights"] == report["parameters"] * 4 and report["bytes"]["gradients"] == 0
    assert report["bytes"]["total"] > report["bytes"]["weights"]


@pytest.mark.parametrize("tied", [False, True])
def test_fsdp_splits_weights_and_gradients_not_activations(tied):
    """--fsdp over N ranks: a 1/N shard of every parameter, the root (embeddings, final norm,
    lm_head) gathered besides, two decoder layers gathered at a time (tests/test_distributed.py
    checks that a sharded forward never gathers more); first-order gradients 1/N plus one layer's."""
    config = tiny_config("llama-gqa", tie_word_embeddings=tied)
    model = tiny_model("llama-gqa", tie_word_embeddings=tied)
    params = sum(p.numel() for p in model.parameters())
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    root = params - 4 * layer
    assert root == 320 * 48 * (1 if tied else 2) + 48
    whole = memory_plan(config, 2, 16, saliency="first-order")
    for n in (2, 4):
        split = memory_plan(config, 2, 16, saliency="first-order", shards=n)
        assert split.weights == (-(-params // n) + root + 2 * layer) * 4
        o_down = 48 * 48 + 40 * 48  # one layer's scored weights
        assert split.gradients == (-(-4 * o_down // n) + o_down) * 8
        assert (split.activations, split.logits, split.scores) == (whole.activations, whole.logits, whole.scores)
        every = memory_plan(config, 2, 16, saliency="first-order", taylor_weights="all", shards=n)
        seven = 48 * 48 + 2 * 16 * 48 + 48 * 48 + 3 * 40 * 48  # one layer's q, k, v, o, gate, up, down
        assert every.gradients == (-(-4 * seven // n) + seven) * 8
    with pytest.raises(GispError, match="--saliency fisher scores o_proj/down_proj columns"):
        memory_plan(config, 2, 16, taylor_weights="all")
    with pytest.raises(GispError, match="--fsdp and --compact-every cannot be combined"):
        memory_plan(config, 2, 16, shards=2, compact_every=1)


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_cli_plan_fsdp(tmp_path, capsys):
    tiny_config("qwen2", layers=16).save_pretrained(tmp_path / "m")  # deep enough for a shard to be smaller
    args = ["plan", "--model", str(tmp_path / "m"), "--nproc", "2", "--batch-size", "2", "--json"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*args, "--fsdp"]) == 0
    split = json.loads(capsys.readouterr().out)
    assert split["fsdp"] and not plain["fsdp"]
    assert split["bytes"]["weights"] < plain["bytes"]["weights"]
    assert split["bytes"]["activations"] == plain["bytes"]["activations"]
    assert main([*args[:-1], "--fsdp"]) == 0
    assert "parameters split over them (--fsdp)" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["llama-gqa", "qwen2"])
def test_bfloat16_activations_count_the_float32_norm_inputs(name):
    """In bfloat16 the RMS norms keep their float32 upcast for backward: the plan's bytes per layer
    and token are what autograd saves in bfloat16 (plus the Fisher hooks' inputs), within the
    per-token scalars."""
    import torch

    from gisp.adapters import adapter_for

    config = tiny_config(name)
    g = adapter_for(config).geometry()
    q = g.num_heads * g.head_dim
    planned = memory_plan(config, 1, 1, dtype="bfloat16").activations / g.num_layers  # bytes per layer and token
    saved = _saved_bytes_per_layer_token(name, torch.bfloat16) + 2 * (q + g.intermediate_size)
    assert saved == pytest.approx(planned, rel=0.05)
    assert planned > memory_plan(config, 1, 1).activations / g.num_layers / 2  # not simply half of float32


def _saved_bytes_per_layer_token(name: str, dtype, batch: int = 2, seq: int = 16) -> float:
    """Bytes autograd saves per layer and token in a Fisher pass in ``dtype`` (see
    :func:`_saved_per_layer_token`, which counts float32 values)."""
    import torch

    totals = []
    for layers in (2, 4):
        model = tiny_model(name, layers=layers).eval().to(dtype)
        for p in model.parameters():
            p.requires_grad_(False)
        owned = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in owned:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.detach().requires_grad_())
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.model(input_ids=torch.randint(0, 320, (batch, seq)))
        totals.append(sum(seen.values()))
    return (totals[1] - totals[0]) / 2 / (batch * seq)


def test_gpu_plan_counts_the_cuda_context_and_the_allocators_slack():
    from gisp.plan import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES

    config = tiny_config("llama-gqa")
    cpu, gpu = memory_plan(config, 4, 64, dtype="bfloat16"), memory_plan(config, 4, 64, dtype="bfloat16", device="cuda")
    assert gpu.runtime == CUDA_CONTEXT_BYTES and cpu.slack == 0
    assert gpu.slack == int(ALLOCATOR_SLACK * (gpu.activations + gpu.logits + gpu.workspace))
    assert gpu.total - gpu.slack - gpu.runtime == cpu.total - cpu.runtime
    with pytest.raises(GispError, match="unknown plan device"):
        memory_plan(config, 1, 8, device="tpu")


def test_flags_to_fit_are_the_cheapest_that_fit():
    from gisp.plan import flags_to_fit

    config = tiny_config("llama-gqa")
    def total(**kw):
        return memory_plan(config, 8, 2048, dtype="bfloat16", device="cuda", **kw).total
    assert flags_to_fit(config, 8, 2048, total(), "bfloat16", device="cuda") == []
    chunked = total(loss_chunk=1024)
    assert flags_to_fit(config, 8, 2048, chunked, "bfloat16", device="cuda") == ["--loss-chunk 1024"]
    both = total(checkpointing=True, loss_chunk=1024)
    assert both < total(checkpointing=True) and both < chunked
    assert flags_to_fit(config, 8, 2048, both, "bfloat16", device="cuda") == ["--gradient-checkpointing", "--loss-chunk 1024"]
    assert flags_to_fit(config, 8, 2048, both - 1, "bfloat16", device="cuda") is None


def test_step_flops_count_the_gradient_pass_and_the_search():
    from gisp.balance import EXCHANGE_RATES
    from gisp.plan import step_flops

    config = tiny_config("llama-gqa")  # tiny_model's parameters: decoder + lm_head (not tied)
    model = tiny_model("llama-gqa")
    decoder = sum(p.numel() for p in model.model.layers.parameters())
    forward = 64 * (2 * (decoder + 320 * 48) + 4 * 2 * 16 * 48)  # 64 tokens, 4 layers, seq 16, q = 48
    flops = step_flops(config, 64, 16)
    assert flops == {"gradient_pass": 2 * forward, "rate_search": len(EXCHANGE_RATES) * forward / 4}
    first = step_flops(config, 64, 16, saliency="first-order", checkpointing=True, search=False)
    assert first == {"gradient_pass": 3 * forward + 2 * 64 * 4 * (48 * 48 + 48 * 40), "rate_search": 0.0}


PAPER_TOKENS = ["--samples", "2000", "--seq-len", "256"]  # the paper's calibration: 2000 x 256 = 512K tokens


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_llama3_8b_plans_to_fit_one_80gb_gpu_and_70b_eight_with_fsdp(capsys):
    configs = Path(__file__).resolve().parent.parent / "benchmarks" / "configs"
    assert main(["plan", "--model", str(configs / "llama-3-8b"), "--device", "cuda", "--memory", "80", "--dtype",
                 "bfloat16", *PAPER_TOKENS, "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248 parameters" in out and "budget 80.00 GiB: fits" in out
    assert "--batch-size 8 fits with: no extra flag" in out and "cuda context" in out
    step = re.search(r"one step: ~(\d+) s gradient pass \+ up to ~(\d+) s rate search", out)
    assert step and 10 < int(step.group(1)) < 600
    seventy = ["plan", "--model", str(configs / "llama-3-70b"), "--device", "cuda", "--memory", "80", "--dtype",
               "bfloat16", *PAPER_TOKENS, "--batch-size", "2", "--nproc", "8"]
    assert main(seventy + ["--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert not alone["fits"] and alone["flags_to_fit"] == ["--fsdp"]
    assert main(seventy + ["--fsdp", "--json"]) == 0
    sharded = json.loads(capsys.readouterr().out)
    assert sharded["fits"] and sharded["bytes"]["weights"] < alone["bytes"]["weights"] / 4
    assert main(["plan", "--model", str(configs / "llama-3-8b"), "--memory", "-1"]) == 2
    assert "--memory must be a positive number of GiB" in capsys.readouterr().err


def test_plan_flags_agree_with_the_users_own_and_never_combine_fsdp_with_compaction():
    from gisp.plan import memory_plan, plan_report

    config = tiny_config("llama-gqa")
    own = memory_plan(config, 4, 256, "bfloat16", checkpointing=True, loss_chunk=64, device="cuda").total
    report = plan_report(config, 16, 256, 4, dtype="bfloat16", budget=own, checkpointing=True, loss_chunk=64, device="cuda")
    assert report["fits"] and report["flags_to_fit"] == ["--gradient-checkpointing", "--loss-chunk 64"]
    tight = plan_report(config, 16, 256, 4, nproc=2, compact_every=1, budget=2**20, device="cuda")  # nothing fits
    assert not tight["fits"] and tight["flags_to_fit"] is None  # --fsdp is not offered beside --compact-every
    with pytest.raises(GispError, match="--memory must be a positive number"):
        plan_report(config, 16, 256, 4, budget=float("inf"))

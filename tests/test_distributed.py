"""Data-parallel scoring under torchrun (gloo, CPU): the same removal order as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gisp import distributed
from gisp.config import PruneConfig
from gisp.errors import GispError

from conftest import tiny_model, tiny_tokenizer


def _prune(launcher: list[str], model, corpus_file, out, *extra: str) -> None:
    cmd = launcher + ["-m", "gisp", "prune", "--model", str(model), "--data", f"text:{corpus_file}", "--sparsity", "0.4",
                      "--steps", "4", "--samples", "16", "--seq-len", "32", "--batch-size", "2", "--out", str(out), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("run saved to") == 1  # one summary, from rank 0


@pytest.mark.slow  # torchrun / accelerate processes
@pytest.mark.parametrize("family, both, extra", [("llama-gqa", [], []), ("llama-gqa", ["--method", "llm-pruner"], []),
                                                 ("llama-gqa", [], ["--fsdp"]),
                                                 ("llama-gqa", [], ["--fsdp", "--loss-chunk", "8", "--gradient-checkpointing"]),
                                                 ("phi3", [], ["--fsdp"]),
                                                 ("phi3", ["--saliency", "first-order"], ["--fsdp"]),
                                                 ("phi3", ["--method", "llm-pruner"], ["--fsdp"]),
                                                 ("llama-mha", ["--saliency", "first-order", "--taylor-weights", "all"],
                                                  ["--fsdp"])],
                         ids=["gisp", "llm-pruner", "gisp-fsdp", "gisp-fsdp-memory-flags", "gisp-fsdp-fused", "gisp-fsdp-first-order",
                              "llm-pruner-fsdp-fused", "gisp-fsdp-all-weights-mha"])
def test_torchrun_two_ranks_remove_exactly_what_one_process_removes(tiny_dir, corpus_file, tmp_path, family, both, extra):
    """Fisher + compensation (gisp) and weight gradients (llm-pruner) sharded over 2 gloo ranks,
    and gisp with the parameters themselves split over them (FSDP2; fused projections too; Fisher
    from activation gradients, or first-order from the weight gradients FSDP reduce-scatters): the
    trajectory (orders, steps, input means) is identical to the single-process run's. LLM-Pruner's
    scores sum q/k/v/gate/up rows too (--taylor-weights all): each rank sums the rows it holds,
    fused qkv_proj / gate_up_proj cut where a role's rows cross the ranks' split."""
    model = tiny_dir(family)
    _prune([sys.executable], model, corpus_file, tmp_path / "one", *both)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    _prune(torchrun, model, corpus_file, tmp_path / "two", *both, *extra)
    one, two = load_file(tmp_path / "one" / "trajectory.safetensors"), load_file(tmp_path / "two" / "trajectory.safetensors")
    assert one.keys() == two.keys() and "head_order" in one
    for key in one:
        assert torch.equal(one[key].nan_to_num(), two[key].nan_to_num()), key
    runs = [json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "two")]
    assert runs[0]["calibration"] == runs[1]["calibration"] == {"sequences": 16, "tokens": 512}
    for key in ("sparsity", "model_sparsity", "heads_removed", "channels_removed"):
        assert [s[key] for s in runs[0]["steps"]] == [s[key] for s in runs[1]["steps"]], key
    # the losses are the same sums taken in another order
    assert [s["loss"] for s in runs[1]["steps"]] == pytest.approx([s["loss"] for s in runs[0]["steps"]], rel=1e-5)


@pytest.mark.slow  # torchrun / accelerate processes
def test_accelerate_launch_shares_the_work_like_torchrun(tiny_dir, corpus_file, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (it starts the processes as torchrun does, on
    CPUs too; its `--cpu` would force one process) gives the single process's trajectory."""
    model = tiny_dir("llama-gqa")
    _prune([sys.executable], model, corpus_file, tmp_path / "one")
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    _prune(accelerate, model, corpus_file, tmp_path / "two")
    one, two = load_file(tmp_path / "one" / "trajectory.safetensors"), load_file(tmp_path / "two" / "trajectory.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        assert torch.equal(one[key].nan_to_num(), two[key].nan_to_num()), key
    for name, processes in (("one", 1), ("two", 2)):  # each step records how many processes scored it
        steps = json.loads((tmp_path / name / "run.json").read_text())["steps"]
        assert [s["processes"] for s in steps if s["step"] > 0] == [processes] * 4


@pytest.mark.slow  # torchrun / accelerate processes
@pytest.mark.parametrize("family, tied", [("llama-gqa", False), ("phi3", False), ("qwen2", True)],
                         ids=["llama", "phi3-fused", "qwen2-tied-embeddings"])
def test_fsdp_loads_each_rank_only_its_rows(tmp_path, family, tied):
    """--fsdp's loader: each of 2 ranks reads about half of every parameter from the safetensors
    files (never the whole model), the gathered weights equal the whole load's exactly (tied
    lm_head included), the compensation biases it adds are zero, the fingerprint is the whole
    model's (so runs resume and export across both loaders; a sampled -0.0 stays -0.0), and the
    sharded forward gives the same logits."""
    model = tiny_model(family, tie_word_embeddings=tied)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = -0.0  # the first sampled value, in rank 0's rows
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    script = Path(__file__).with_name("sharded_load_check.py")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             str(script), str(tmp_path / "model"), str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    total = ranks[0]["total"]
    added = 2 * model.config.num_hidden_layers  # o_proj and down_proj of every layer
    assert sum(r["held"] for r in ranks) == total + added * model.config.hidden_size
    for r in ranks:
        assert r["held"] < 0.6 * total, r
        # what gisp plan --fsdp charges a rank: its shard, the root gathered, at most two layers gathered
        assert r["root_gathered"] and 1 <= r["gathered_layers_max"] <= 2, r
        assert r["same_weights"] and r["all_sharded"] and r["fingerprint_equal"], r
        assert len(r["added"]) == added and r["added_zero"], r
        assert r["max_logit_diff"] < 1e-5, r


def test_alone_every_batch_is_mine_and_sums_are_identities():
    assert not distributed.init_from_env()
    assert distributed.shard([1, 2, 3]) == [1, 2, 3] and distributed.is_main() and distributed.world_size() == 1
    t = torch.ones(3)
    distributed.all_reduce_sum([t])
    assert torch.equal(t, torch.ones(3)) and distributed.sum_float(2.5) == 2.5


def test_fewer_batches_than_ranks_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 4)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    assert distributed.shard(list(range(10))) == [1, 5, 9]
    with pytest.raises(GispError, match="3 calibration batches cannot be shared by 4 processes"):
        distributed.shard([0, 1, 2])
    # forward-only sums (the --normalize search subset: every fourth batch) may leave a rank empty
    monkeypatch.setattr(distributed, "rank", lambda: 3)
    assert distributed.shard([0, 1, 2], empty_ok=True) == []


def test_fsdp_settings_that_cannot_shard_are_refused():
    with pytest.raises(GispError, match="--fsdp shards gradient scoring .*flap, which scores forward statistics, is "
                                        "not supported sharded"):
        PruneConfig(model="m", data="text:x", fsdp=True, method="flap")
    PruneConfig(model="m", data="text:x", fsdp=True, saliency="first-order")  # weight gradients, sharded
    PruneConfig(model="m", data="text:x", fsdp=True, method="llm-pruner")  # q/k/v/gate/up rows too (--taylor-weights all)
    with pytest.raises(GispError, match="--fsdp and --compact-every cannot be combined"):
        PruneConfig(model="m", data="text:x", fsdp=True, compact_every=1)


def test_local_rows_of_an_unsharded_tensor_are_the_whole_tensor():
    t = torch.arange(6.0).reshape(3, 2)
    rows, first = distributed.local_rows(t)
    assert rows is t and first == 0


@pytest.mark.slow  # torchrun / accelerate processes
def test_fsdp_refuses_micro_batches_that_do_not_split_evenly(tiny_dir, corpus_file, tmp_path):
    """Every forward of a sharded layer is a collective: a rank with one batch fewer would wait
    forever. 10 sequences in batches of 2 are 5 micro-batches for 2 processes: refused, no hang."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "gisp", "prune",
           "--model", str(tiny_dir("llama-gqa")), "--data", f"text:{corpus_file}", "--samples", "10", "--seq-len", "32",
           "--batch-size", "2", "--fsdp", "--out", str(tmp_path / "run")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "gisp: error: --fsdp needs the calibration micro-batches" in result.stderr and "multiple of 8" in result.stderr
    assert not (tmp_path / "run").exists()


def test_which_checkpoints_load_in_shards(tmp_path):
    """Safetensors (one file, or the files an index maps; stray files ignored) load in shards; a
    .bin-only checkpoint, a GGUF file and a quantised config load whole (None)."""
    from gisp import models

    model = tiny_model("llama-gqa")
    model.save_pretrained(tmp_path / "one")
    assert models.sharded_checkpoint(str(tmp_path / "one")) == [tmp_path / "one" / "model.safetensors"]
    model.save_pretrained(tmp_path / "split", max_shard_size="50KB")
    (tmp_path / "split" / "consolidated.safetensors").write_bytes(b"not part of the checkpoint")
    files = models.sharded_checkpoint(str(tmp_path / "split"))
    mapped = json.loads((tmp_path / "split" / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(files) > 1 and set(files) == {tmp_path / "split" / f for f in mapped.values()}
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "bin").mkdir()
    model.config.save_pretrained(tmp_path / "bin")
    (tmp_path / "pytorch_model.bin").rename(tmp_path / "bin" / "pytorch_model.bin")
    assert models.sharded_checkpoint(str(tmp_path / "bin")) is None
    model.config.quantization_config = {"quant_method": "fp8"}
    model.save_pretrained(tmp_path / "quantised")
    assert models.sharded_checkpoint(str(tmp_path / "quantised")) is None


@pytest.mark.slow  # torchrun / accelerate processes
def test_fsdp_from_a_checkpoint_that_loads_whole_matches_one_process(tmp_path, corpus_file):
    """A .bin-only checkpoint cannot be read in shards: every rank loads it whole (with a warning),
    then shards it, and the trajectory is still the single process's."""
    model = tiny_model("llama-gqa")
    model.config.save_pretrained(tmp_path / "bin")
    tiny_tokenizer().save_pretrained(tmp_path / "bin")
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    _prune([sys.executable], tmp_path / "bin", corpus_file, tmp_path / "one", "--allow-pickle")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = torchrun + ["-m", "gisp", "prune", "--model", str(tmp_path / "bin"), "--data", f"text:{corpus_file}",
                      "--sparsity", "0.4", "--steps", "4", "--samples", "16", "--seq-len", "32", "--batch-size", "2",
                      "--fsdp", "--allow-pickle", "--out", str(tmp_path / "two")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "has no plain safetensors checkpoint: every process loads it whole" in result.stderr
    one, two = load_file(tmp_path / "one" / "trajectory.safetensors"), load_file(tmp_path / "two" / "trajectory.safetensors")
    for key in one:
        assert torch.equal(one[key].nan_to_num(), two[key].nan_to_num()), key

"""--device: resolved once and checked before anything loads, threaded through the run, recorded
in run.json; a GPU out of memory is one line, and the run resumes under other memory flags."""

from __future__ import annotations

import json

import pytest
import torch

import gisp
import gisp.api  # noqa: F401  (patched below where prune looks names up)
from gisp import device as devices
from gisp.cli import main
from gisp.config import PruneConfig
from gisp.errors import GispError
from gisp.gradients import TaylorImportance
from gisp.trajectory import Trajectory

from conftest import tiny_model, tiny_tokenizer

PRUNE = ["--sparsity", "0.4", "--steps", "3", "--samples", "6", "--seq-len", "24", "--batch-size", "3",
         "--protect-first", "0"]


def _prune(model_dir, corpus, out, *extra) -> list[str]:
    return ["prune", "--model", str(model_dir), "--data", f"text:{corpus}", *PRUNE, "--out", str(out), *extra]


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "CUDA", ""])
def test_device_specs_are_checked_without_cuda(spec):
    with pytest.raises(GispError, match="unknown device"):
        devices.check_spec(spec)


def test_auto_is_the_cpu_without_cuda_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve("auto") == torch.device("cpu")
    with pytest.raises(GispError, match=r"--device cuda:1: .*use --device cpu or auto"):
        devices.resolve("cuda:1")


def test_cuda_means_each_ranks_own_gpu_under_torchrun(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.resolve("cuda") == devices.resolve("auto") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")  # more ranks than GPUs: auto falls back to the CPU (gloo), cuda is refused
    assert devices.resolve("auto") == torch.device("cpu")
    with pytest.raises(GispError, match="has 2 GPUs"):
        devices.resolve("cuda")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(GispError, match="every rank on one GPU"):
        devices.resolve("cuda:0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert devices.resolve("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(GispError, match=r"has 2 GPUs \(cuda:0 to cuda:1\)"):
        devices.resolve("cuda:2")


def test_cuda_without_cuda_exits_2_before_anything_loads(tiny_dir, corpus_file, tmp_path, capsys, monkeypatch):
    model = tiny_dir("llama-gqa")
    capsys.readouterr()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loads = []
    monkeypatch.setattr("gisp.models.load", lambda *a, **k: loads.append(a))
    monkeypatch.setattr("gisp.api.read_source", lambda *a, **k: loads.append(a))  # where prune looks it up
    out = tmp_path / "new" / "run"
    assert main(_prune(model, corpus_file, out, "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gisp: error: --device cuda: ") and "Traceback" not in err
    assert loads == [] and not out.exists() and not out.parent.exists()


def test_an_explicit_cpu_device_leaves_every_tensor_on_the_cpu(tmp_path):
    model = tiny_model("qwen2")  # biases and compensation: every kind of tensor the run makes
    config = PruneConfig(model="tiny-qwen2", data="gsm8k[:12]", objective="answer", sparsity=0.3, steps=2, samples=12,
                         seq_len=48, batch_size=4, protect_first=0.0, device=torch.device("cpu"))
    traj = gisp.prune(config, model=model, tokenizer=tiny_tokenizer(), out=tmp_path / "run", progress=False)
    assert traj.config["device"] == "cpu"
    tensors = [*model.parameters(), *model.buffers(), traj.head_step, traj.head_order, traj.channel_step,
               traj.channel_order, traj.input_means.attention, traj.input_means.mlp]
    assert {t.device.type for t in tensors} == {"cpu"}
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [s["device"] for s in record["steps"] if s["step"] > 0] == ["cpu", "cpu"]


def test_bfloat16_prune_runs_and_its_first_level_stays_near_float32(tmp_path):
    """bfloat16 weights (as on a GPU) with float32 score sums: the first level removes what float32's
    does up to near-ties. Printed: how many structures differ."""
    def first_level(dtype: str):
        config = PruneConfig(model="tiny-llama", data="gsm8k[:16]", objective="answer", sparsity=0.4, steps=2,
                             samples=16, seq_len=48, batch_size=4, protect_first=0.0, dtype=dtype, device="cpu")
        model = tiny_model("llama-gqa").to(getattr(torch, dtype))
        traj = gisp.prune(config, model=model, tokenizer=tiny_tokenizer(), progress=False)
        return traj.masks_at_step(1), traj.steps[1].sparsity
    (m32, s32), (m16, s16) = first_level("float32"), first_level("bfloat16")
    removed32 = torch.cat([~m32.heads.flatten(), ~m32.channels.flatten()])
    removed16 = torch.cat([~m16.heads.flatten(), ~m16.channels.flatten()])
    differ = int((removed32 ^ removed16).sum())
    print(f"bfloat16 vs float32, first level: {differ} of {int(removed32.sum())} removed structures differ "
          f"(sparsity {s16:.4f} vs {s32:.4f})")
    assert abs(s16 - s32) < 0.02
    assert differ <= 0.25 * int(removed32.sum())  # the same ranking up to near-ties


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_out_of_memory_is_one_line_and_the_run_resumes_with_memory_flags(tiny_dir, corpus_file, tmp_path, capsys,
                                                                        monkeypatch):
    model = tiny_dir("llama-gqa")
    assert main(_prune(model, corpus_file, tmp_path / "full")) == 0
    scores = TaylorImportance.__call__

    def out_of_memory_at_step_3(self, model, adapter, context):  # the GPU running out in step 3's gradient pass
        if context.step == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return scores(self, model, adapter, context)
    monkeypatch.setattr(TaylorImportance, "__call__", out_of_memory_at_step_3)
    capsys.readouterr()
    assert main(_prune(model, corpus_file, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("gisp: error:")]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1] and "Traceback" not in err
    assert "ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in err
    assert "keeps every finished step" in err and "gisp plan --model" in err and "--gradient-checkpointing" in err
    assert Trajectory.load(tmp_path / "run").completed_steps == 2
    monkeypatch.undo()
    assert main(_prune(model, corpus_file, tmp_path / "run", "--gradient-checkpointing", "--loss-chunk", "8")) == 0
    full, resumed = Trajectory.load(tmp_path / "full"), Trajectory.load(tmp_path / "run")
    for name in ("head_step", "head_order", "channel_step", "channel_order"):
        assert torch.equal(getattr(full, name), getattr(resumed, name))
    assert resumed.config["gradient_checkpointing"] and resumed.config["loss_chunk"] == 8


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_a_run_resumes_on_another_device_and_says_so_in_one_line(tiny_dir, corpus_file, tmp_path, capsys):
    """The record of a run scored elsewhere (here: cuda:0, written by hand) resumes on this CPU."""
    model = tiny_dir("llama-gqa")
    out = tmp_path / "run"
    assert main(_prune(model, corpus_file, out, "--sparsity", "0.2", "--steps", "2")) == 0
    traj = Trajectory.load(out)
    traj.steps = traj.steps[:2]  # dense + step 1, as if interrupted after it on a GPU
    traj.steps[1].device = "cuda:0"
    for name in ("head_step", "head_order", "channel_step", "channel_order"):
        tensor = getattr(traj, name)
        tensor[tensor > 1] = -1  # forget step 2
    traj.save(out)
    capsys.readouterr()
    assert main(_prune(model, corpus_file, out, "--sparsity", "0.2", "--steps", "2", "--device", "cpu")) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "resuming" in line]
    assert len(notes) == 1 and "on cpu (scored on cuda:0 until step 1)" in notes[0]
    assert [s.device for s in Trajectory.load(out).steps[1:]] == ["cuda:0", "cpu"]

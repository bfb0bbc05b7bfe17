"""Faults outside the bad-input table (issue #27): arguments no parser checked, silent garbage
(NaN), run records of the wrong shape, a full disk, residue of refused commands, and levels asked
for while a run is unfinished or by the figure a run prints."""

from __future__ import annotations

import errno
import json
import shlex
from pathlib import Path

import pytest
import torch

from gisp.cli import main
from gisp.gradients import TaylorImportance
from gisp.trajectory import Trajectory, _meta_checksum

from conftest import tiny_model

PRUNE = ["--sparsity", "0.4", "--steps", "2", "--samples", "6", "--seq-len", "24", "--batch-size", "3",
         "--protect-first", "0"]


def _one_error(capsys) -> str:
    """The command's one error line (progress bars aside); fails on a traceback or a second line."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gisp:")]
    assert "Traceback" not in err and len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
    return lines[0]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


@pytest.fixture
def setup(tiny_dir, corpus_file, tmp_path, capsys):
    model = tiny_dir("llama-gqa")
    prune = lambda out, *extra: ["prune", "--model", str(model), "--data", f"text:{corpus_file}", *PRUNE, *extra,  # noqa: E731
                                 "--out", str(out)]
    capsys.readouterr()
    return model, corpus_file, prune


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
    (["--seq-len", "1"], "--seq-len must be at least 2 (one predicted token), got 1"),
    (["--seq-len", "100000"], "seq-len 100000 is longer than the model's context of 256 tokens; lower --seq-len"),
    (["--task", "gsm8k", "--shots", "-1"], "--shots must be >= 0, got -1"),
    (["--task", "gsm8k", "--max-new-tokens", "0"], "--max-new-tokens must be a positive integer, got 0"),
])
def test_eval_arguments_are_checked_before_the_model_loads(setup, capsys, monkeypatch, extra, message):
    model, corpus, _ = setup
    monkeypatch.setattr("gisp.models.load", lambda *a, **k: pytest.fail("loaded the model"))
    data = "gsm8k" if "gsm8k" in extra else f"text:{corpus}"
    assert main(["eval", str(model), "--data", data, *(["--task", "ppl"] if "--task" not in extra else []), *extra]) == 2
    assert _one_error(capsys) == f"gisp: error: {message}"


def test_plan_memory_and_an_unwritable_out_are_one_line(setup, tmp_path, capsys):
    model, _, prune = setup
    assert main(["plan", "--model", str(model), "--memory", "-1"]) == 2
    assert "--memory must be a positive number of GiB, got -1" in _one_error(capsys)
    assert main(prune("/proc/gisp-test/run")) == 2
    assert _one_error(capsys) == "gisp: error: cannot create /proc/gisp-test for /proc/gisp-test/run: No such file or directory"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not (locked / "probe").exists() and _writable(locked):
            pytest.skip("running as a user who may write anywhere (root): the permission case cannot be made here")
        assert main(prune(locked / "run")) == 2
        assert "cannot write" in _one_error(capsys)
    finally:
        locked.chmod(0o700)


def _writable(directory: Path) -> bool:
    try:
        (directory / "probe").write_text("")
        (directory / "probe").unlink()
        return True
    except OSError:
        return False


def test_a_refused_command_leaves_no_directories_it_made(setup, tmp_path, capsys, monkeypatch):
    model, corpus, prune = setup
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2", "n_layer": 1}')
    before = _tree(tmp_path)
    assert main(["prune", "--model", str(tmp_path / "gpt2"), "--data", f"text:{corpus}", "--out",
                 str(tmp_path / "new" / "sub" / "run")]) == 2
    assert "unsupported model type 'gpt2'" in _one_error(capsys)
    bad = tmp_path / "piqa.jsonl"
    bad.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
    (tmp_path / "piqa-labels.lst").write_text("abc\n")
    before = _tree(tmp_path)
    assert main(["lm-eval-tasks", str(tmp_path / "tasks"), "--piqa", str(bad)]) == 2
    assert "piqa-labels.lst:1: label 'abc' is not 0 (sol1) or 1 (sol2)" in _one_error(capsys)
    assert _tree(tmp_path) == before
    monkeypatch.setattr("gisp.models.load", lambda *a, **k: pytest.fail("loaded the model"))
    assert main(prune(tmp_path / "new" / "run", "--protect-first", "0.9")) == 2
    assert _one_error(capsys) == "gisp: error: all 4 layers are protected; lower --protect-first/--protect-last"
    assert _tree(tmp_path) == before


def test_the_hint_after_a_run_quotes_a_path_with_spaces(setup, tmp_path, capsys):
    _, _, prune = setup
    out = tmp_path / "my runs" / "run 1"
    assert main(prune(out, "-q")) == 0
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert hint.endswith(f"gisp export {shlex.quote(str(out))} --sparsity X --out DIR")
    assert shlex.split(hint.split("export a level with: ")[1])[2] == str(out)


def test_a_model_without_tokenizer_files_is_named_in_full(tmp_path, corpus_file, capsys):
    tiny_model("llama-gqa").save_pretrained(tmp_path / "m")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m"), "--task", "ppl", "--data", f"text:{corpus_file}"]) == 2
    assert _one_error(capsys).endswith("it has no tokenizer files gisp can read (tokenizer.json, tokenizer.model, or "
                                       "vocab + merges); save the model's tokenizer beside it")


def test_prune_stops_on_non_finite_scores_and_keeps_only_finished_steps(setup, tmp_path, capsys, monkeypatch):
    _, _, prune = setup
    scores = TaylorImportance.__call__

    def nan_at(step: int):
        def call(self, model, adapter, context):
            out = scores(self, model, adapter, context)
            if context.step == step:
                out.channels[0, 0] = float("nan")
            return out
        return call
    monkeypatch.setattr(TaylorImportance, "__call__", nan_at(1))
    before = _tree(tmp_path)
    assert main(prune(tmp_path / "run")) == 2
    assert "step 1: the channel scores are not finite (NaN or Inf)" in _one_error(capsys)
    assert _tree(tmp_path) == before  # nothing at all: not even an empty run directory
    monkeypatch.setattr(TaylorImportance, "__call__", nan_at(2))
    assert main(prune(tmp_path / "run")) == 2
    assert "step 2: the channel scores are not finite" in _one_error(capsys)
    assert Trajectory.load(tmp_path / "run").completed_steps == 1


def test_recover_stops_on_a_nan_loss_and_writes_nothing(setup, tmp_path, capsys, monkeypatch):
    model, corpus, prune = setup
    assert main(prune(tmp_path / "run", "-q")) == 0
    assert main(["export", str(tmp_path / "run"), "--sparsity", "0.2", "--out", str(tmp_path / "exp"), "-q"]) == 0
    assert main(["recover", str(tmp_path / "exp"), "--data", f"text:{corpus}", "--out", str(tmp_path / "rec"),
                 "--lora-alpha", "nan", "-q"]) == 2
    assert _one_error(capsys) == "gisp: error: lora-alpha must be a finite number, got nan"
    from gisp import recovery
    real = recovery._batch_loss
    calls = []

    def nan_later(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) >= 3 else loss
    monkeypatch.setattr(recovery, "_batch_loss", nan_later)
    before = _tree(tmp_path)
    assert main(["recover", str(tmp_path / "exp"), "--data", f"text:{corpus}", "--out", str(tmp_path / "rec"),
                 "--max-tokens", "480", "--seq-len", "24", "--batch-size", "2", "--checkpoint-every", "1", "-q"]) == 2
    assert "the training loss is nan at step 3 of 10" in _one_error(capsys)
    assert _tree(tmp_path) == before  # no recovered model, and the checkpoints this command made are gone


@pytest.mark.parametrize("edit, what", [
    (lambda m: m.__setitem__("steps", None), "'steps' is null"),
    (lambda m: m.__setitem__("config", []), "'config' is []"),
    (lambda m: m["steps"][1].__setitem__("sparsity", None), "step record 1: 'sparsity' is null"),
    (lambda m: m["steps"].__setitem__(0, [1]), "step record 0 is not a step record"),
])
def test_a_run_record_of_the_wrong_shape_is_refused_by_every_reader(setup, tmp_path, capsys, edit, what):
    _, _, prune = setup
    run = tmp_path / "run"
    assert main(prune(run, "-q")) == 0
    meta = json.loads((run / "run.json").read_text())
    edit(meta)
    meta["sha256"] = _meta_checksum(meta) if isinstance(meta["steps"], list) else meta["sha256"]
    (run / "run.json").write_text(json.dumps(meta))
    capsys.readouterr()
    for argv in (["info", str(run)], prune(run), ["export", str(run), "--sparsity", "0.2", "--out", str(tmp_path / "e")]):
        assert main(argv) == 2
        assert f"run.json is not a gisp run record ({what}); the files are truncated or corrupted" in _one_error(capsys)


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(setup, tmp_path, capsys, monkeypatch):
    _, _, prune = setup
    assert main(prune(tmp_path / "run", "-q")) == 0
    capsys.readouterr()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "exp" / "model.safetensors"))
    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", full)
    before = _tree(tmp_path)
    assert main(["export", str(tmp_path / "run"), "--sparsity", "0.2", "--out", str(tmp_path / "exp")]) == 2
    assert _one_error(capsys).startswith("gisp: error: no space left on the device (")
    assert _tree(tmp_path) == before
    from safetensors import SafetensorError
    monkeypatch.setattr("transformers.modeling_utils.safe_save_file", lambda *a, **k: (_ for _ in ()).throw(SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')))
    assert main(["export", str(tmp_path / "run"), "--sparsity", "0.2", "--out", str(tmp_path / "exp")]) == 2
    assert "no space left on the device (writing a safetensors file)" in _one_error(capsys)
    assert _tree(tmp_path) == before


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_levels_of_an_unfinished_run_and_by_their_printed_figure(setup, tmp_path, capsys):
    _, _, prune = setup
    run = tmp_path / "run"
    assert main(prune(run, "--steps", "3", "--round-to", "4", "-q")) == 0
    traj = Trajectory.load(run)
    from gisp.adapters import adapter_for
    from gisp.structures import layer_shape
    model = tiny_model("llama-gqa")
    shape = layer_shape(model, adapter_for(model.config), compensate=traj.compensated)
    for record in traj.steps[1:]:  # by the figure printed for the step, and by its target: that step
        for asked in (float(f"{record.sparsity:.4f}"), record.target_sparsity):
            assert traj.masks_at_sparsity(asked, shape)[1] == record.step, (asked, record)
    # as if the run were still going: the next level is not saved yet (and is not "never reached")
    traj.steps = traj.steps[:2]
    for name in ("head_step", "head_order", "channel_step", "channel_order"):
        tensor = getattr(traj, name)
        tensor[tensor > 1] = -1
    traj.save(run)
    capsys.readouterr()
    assert main(["export", str(run), "--sparsity", "0.4", "--out", str(tmp_path / "e")]) == 2
    line = _one_error(capsys)
    assert "sparsity 0.4 is not saved yet: this run has finished 1 of 3 steps" in line and "never" not in line
    assert main(["export", str(run), "--sparsity", "0.6", "--out", str(tmp_path / "e")]) == 2
    assert "sparsity 0.6 was never reached by this run" in _one_error(capsys)


def test_an_overflowing_loss_is_caught_not_ranked():
    """A real non-finite case without patching: an infinite output embedding makes the loss NaN/Inf."""
    from gisp.config import PruneConfig
    from gisp.errors import GispError
    import gisp
    from conftest import tiny_tokenizer

    model = tiny_model("llama-gqa")
    with torch.no_grad():
        model.lm_head.weight.mul_(float("inf"))
    config = PruneConfig(model="tiny", data="gsm8k[:8]", sparsity=0.3, steps=2, samples=8, seq_len=32, batch_size=4,
                         protect_first=0.0)
    with pytest.raises(GispError, match="step 1: the calibration loss .* not finite"):
        gisp.prune(config, model=model, tokenizer=tiny_tokenizer(), progress=False)

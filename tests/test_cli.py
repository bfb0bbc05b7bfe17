"""The CLI end to end on a tiny model, and one-line errors with exit code 2 for bad input."""

import json
import math

import pytest
import torch

from gisp.cli import main
from gisp.evaluation.perplexity import perplexity
import gisp

from conftest import CORPUS


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _prune_args(model, data, out, **extra):
    args = ["prune", "--model", model, "--data", data, "--sparsity", "0.4", "--steps", "3",
            "--samples", "6", "--seq-len", "24", "--batch-size", "3", "--protect-first", "0", "--out", out]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return args


@pytest.fixture
def run_dir(tiny_dir, corpus_file, tmp_path, capsys):
    model = tiny_dir("llama-gqa")
    code, out, err = _run(capsys, *_prune_args(model, f"text:{corpus_file}", tmp_path / "run"))
    assert code == 0, err
    assert "heads kept /6" in out
    return tmp_path / "run"


def test_prune_info_export_eval(run_dir, corpus_file, tmp_path, capsys):
    code, out, _ = _run(capsys, "info", run_dir)
    assert code == 0 and "steps: 3/3" in out and "channels kept /40" in out
    code, out, _ = _run(capsys, "info", run_dir, "--json")
    summary = json.loads(out)
    assert summary["completed_steps"] == 3 and summary["config"]["sparsity"] == 0.4
    assert summary["calibration"] == {"sequences": 6, "tokens": 6 * 24}
    assert all(r["seconds"] > 0 for r in summary["steps"][1:])

    ppl = {}
    for level in ("0.2", "0.4"):
        code, out, err = _run(capsys, "export", run_dir, "--sparsity", level, "--out", tmp_path / f"exp{level}")
        assert code == 0, err
        info = json.loads((tmp_path / f"exp{level}" / "gisp_export.json").read_text())
        assert info["sparsity"] <= float(level) + 1e-9 and info["parameters"] < info["dense_parameters"]
        code, out, err = _run(capsys, "eval", tmp_path / f"exp{level}", "--task", "ppl", "--data", f"text:{corpus_file}",
                              "--seq-len", "32", "--json")
        assert code == 0, err
        record = json.loads(out)
        assert record["seq_len"] == 32 and math.isfinite(record["ppl"])
        ppl[level] = record["ppl"]
    small = json.loads((tmp_path / "exp0.2" / "gisp_export.json").read_text())["parameters"]
    smaller = json.loads((tmp_path / "exp0.4" / "gisp_export.json").read_text())["parameters"]
    assert smaller < small


def test_eval_prints_seq_len(tiny_dir, corpus_file, capsys):
    code, out, _ = _run(capsys, "eval", tiny_dir("qwen2"), "--data", f"text:{corpus_file}", "--seq-len", "16", "--limit-windows", "3")
    assert code == 0 and "at seq_len 16 (3 windows, 45 predicted tokens)" in out


def test_perplexity_follows_the_protocol(tiny_dir, corpus_file):
    """Non-overlapping windows, remainder dropped, exp(mean NLL over seq_len-1 predictions each)."""
    model, tok = gisp.load(str(tiny_dir("llama-mha")))
    result = perplexity(model, tok, f"text:{corpus_file}", 20, progress=False)
    ids = tok(CORPUS)["input_ids"]
    n = len(ids) // 20
    nll = 0.0
    with torch.no_grad():
        for w in range(n):
            window = torch.tensor(ids[w * 20:(w + 1) * 20])[None]
            logp = model(window).logits[0, :-1].log_softmax(-1)
            nll -= logp.gather(1, window[0, 1:, None]).sum().item()
    assert result.windows == n and result.tokens == n * 19
    assert result.ppl == pytest.approx(math.exp(nll / (n * 19)), rel=1e-5)


# --- bad input: one line on stderr, exit code 2, nothing half-written -----------------------------

def _assert_error(capsys, argv, match):
    capsys.readouterr()  # drop fixture output
    code, _, err = _run(capsys, *argv)
    assert code == 2, err
    # Progress bars may precede it; the message itself is one line, the last, with no traceback.
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert "Traceback" not in err and [l for l in lines if l.startswith("gisp:")] == [lines[-1]], err
    assert lines[-1].startswith("gisp: error:") and match in lines[-1], err


def test_unknown_model_type(tmp_path, corpus_file, capsys):
    from transformers import AutoConfig
    AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path / "gpt2")
    from gisp.adapters import supported_model_types
    _assert_error(capsys, _prune_args(tmp_path / "gpt2", f"text:{corpus_file}", tmp_path / "run"),
                  f"unsupported model type 'gpt2'; gisp supports: {', '.join(supported_model_types())}")
    assert not (tmp_path / "run").exists()


def test_missing_model_path(tmp_path, corpus_file, capsys):
    _assert_error(capsys, _prune_args(tmp_path / "nope", f"text:{corpus_file}", tmp_path / "run"), "model path not found")
    _assert_error(capsys, ["eval", "./no/such/model.gguf", "--data", f"text:{corpus_file}"], "model path not found")


@pytest.mark.parametrize("sparsity", ["0", "1", "1.5", "-0.2"])
def test_sparsity_out_of_range(tmp_path, corpus_file, capsys, sparsity):
    argv = _prune_args("whatever", f"text:{corpus_file}", tmp_path / "run")
    argv[argv.index("--sparsity") + 1] = sparsity
    _assert_error(capsys, argv, "sparsity must be in (0, 1)")


def test_empty_or_missing_data(tiny_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    model = tiny_dir("llama-gqa")
    _assert_error(capsys, _prune_args(model, f"text:{empty}", tmp_path / "run"), "data file is empty")
    _assert_error(capsys, _prune_args(model, f"text:{tmp_path / 'missing.txt'}", tmp_path / "run"), "data file not found")
    _assert_error(capsys, _prune_args(model, "c4", tmp_path / "run"), "unknown data spec 'c4'")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{oops\n')
    _assert_error(capsys, _prune_args(model, f"gsm8k:{bad}", tmp_path / "run"), "bad.jsonl:2: not valid JSON")
    assert not (tmp_path / "run").exists()


def test_export_errors(run_dir, tmp_path, capsys, tiny_dir):
    _assert_error(capsys, ["export", run_dir, "--sparsity", "0.5", "--out", tmp_path / "e"], "sparsity 0.5 was never reached")
    assert not (tmp_path / "e").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    _assert_error(capsys, ["export", run_dir, "--sparsity", "0.2", "--out", busy], "already exists and is not empty")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    _assert_error(capsys, ["export", tmp_path, "--sparsity", "0.2", "--out", tmp_path / "e"], "not a gisp run directory")
    other = tiny_dir("llama-gqa", seed=1)
    _assert_error(capsys, ["export", run_dir, "--sparsity", "0.2", "--out", tmp_path / "e", "--model", other],
                  "not the dense model this run pruned")
    assert not list(tmp_path.glob(".e.*"))


def test_export_force_replaces_an_earlier_export_and_nothing_else(run_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _run(capsys, "export", run_dir, "--sparsity", "0.2", "--out", out)[0] == 0
    small = json.loads((out / "gisp_export.json").read_text())["parameters"]
    _assert_error(capsys, ["export", run_dir, "--sparsity", "0.4", "--out", out], "--force replaces an earlier export")
    code, _, err = _run(capsys, "export", run_dir, "--sparsity", "0.4", "--out", out, "--force")
    assert code == 0, err
    assert json.loads((out / "gisp_export.json").read_text())["parameters"] < small
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".exp")) == []  # no temporary left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    _assert_error(capsys, ["export", run_dir, "--sparsity", "0.4", "--out", mine, "--force"],
                  "holds something other than a gisp export")
    assert (mine / "notes.txt").read_text() == "keep"


def test_prune_into_run_of_another_model(run_dir, tiny_dir, corpus_file, capsys):
    other = tiny_dir("llama-gqa", seed=1)
    _assert_error(capsys, _prune_args(other, f"text:{corpus_file}", run_dir), "belongs to another model")


def test_unknown_task(tiny_dir, corpus_file, capsys):
    _assert_error(capsys, ["eval", tiny_dir("qwen3"), "--task", "mmlu", "--data", f"text:{corpus_file}"], "unknown task 'mmlu'")


def test_wikitext2_without_datasets_package_is_a_clear_error(monkeypatch):
    import sys
    from gisp.data import documents
    from gisp.errors import GispError

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(GispError, match=r"needs the datasets package: pip install 'gisp\[datasets\]'"):
        documents("wikitext2")


def test_data_slices_and_packaged_gsm8k():
    from gisp.data import documents

    docs = documents("gsm8k[1000:]")
    assert len(docs) == 319 and docs[0].startswith("Q: ") and "\nA: " in docs[0] and "####" in docs[0]
    assert documents("gsm8k[:2]") == documents("gsm8k")[:2]


WIKITEXT = (" \n = First = \n \n Some text about it . \n \n = = A section = = \n \n More . \n"
            " \n = Second = \n \n Other text . \n \n = Third = \n \n Last . \n")


def test_local_wikitext_is_split_into_articles_and_slices_join_back(tmp_path):
    from gisp.data import documents, joined_text

    path = tmp_path / "test.txt"
    path.write_text(WIKITEXT)
    docs = documents(f"wikitext2:{path}")
    assert len(docs) == 3 and docs[0].startswith(" \n = First = ") and "A section" in docs[0]
    assert docs[1].startswith(" \n = Second = ")
    assert joined_text(f"wikitext2:{path}[:2]") + joined_text(f"wikitext2:{path}[2:]") == WIKITEXT
    assert "Third" not in joined_text(f"wikitext2:{path}[:2]")


def test_hub_wikitext_rows_group_into_articles_and_keep_the_protocol_text():
    from gisp.data import wikitext_articles

    rows = WIKITEXT.splitlines(keepends=True)
    articles = ["\n\n".join(a) for a in wikitext_articles(rows)]
    assert len(articles) == 3 and "\n\n".join(articles) == "\n\n".join(rows)


def test_convert_saves_a_loadable_copy(tiny_dir, tmp_path, capsys):
    src = tiny_dir("mistral")
    code, out, err = _run(capsys, "convert", src, "--out", tmp_path / "copy")
    assert code == 0, err
    a, _ = gisp.load(str(src))
    b, _ = gisp.load(str(tmp_path / "copy"))
    ids = torch.randint(0, 320, (1, 12))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)
    _assert_error(capsys, ["convert", src, "--out", tmp_path / "copy"], "already exists and is not empty")


LOCK_HOLDER = r'''
import sys, time
from gisp.runlock import locked
with locked(sys.argv[1], "prune"):
    print("locked", flush=True)
    time.sleep(60)
'''


def test_a_second_writer_is_refused_and_a_dead_holders_lock_taken_over(tmp_path, corpus_file, capsys):
    import signal
    import subprocess
    import sys

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    from gisp.runlock import locked
    # the CLI refuses before reading anything else (the model does not even exist)
    _assert_error(capsys, ["prune", "--model", str(tmp_path / "nope"), "--data", f"text:{corpus_file}", "--out", str(run)],
                  f"{run} is in use by gisp prune (pid {holder.pid})")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locked(run, "prune"):  # the kernel released the dead holder's lock
        pass
    assert not (tmp_path / ".run.lock").exists() and not run.exists()


def test_the_lock_follows_symlinks_and_never_locks_an_orphaned_file(tmp_path, monkeypatch):
    """A symlink to a locked run directory is the same directory; a lock file its holder deleted
    while another process had it open is not a lock (that process tries again on the new file)."""
    import os
    import subprocess
    import sys

    from gisp import runlock
    from gisp.errors import GispError

    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "alias").symlink_to(run)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(GispError, match=f"alias is in use by gisp prune \\(pid {holder.pid}\\)"):
            with runlock.locked(tmp_path / "alias", "prune"):
                pass
    finally:
        holder.kill()
        holder.wait()
    path = runlock.lock_path(run)
    orphan = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # opened just before its holder deleted it
    path.unlink()
    opened = []
    real_open = os.open

    def open_first_the_orphan(*args, **kwargs):
        opened.append(args[0])
        return orphan if len(opened) == 1 else real_open(*args, **kwargs)

    monkeypatch.setattr(runlock.os, "open", open_first_the_orphan)
    with runlock.locked(run, "export"):
        assert len(opened) == 2 and path.read_text() == f"gisp export (pid {os.getpid()})"
    assert not path.exists()


@pytest.mark.slow  # a child process killed mid-run, then resumed
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_prune_killed_mid_run_resumes_to_the_uninterrupted_trajectory(sig, tiny_dir, corpus_file, tmp_path):
    """SIGKILL (or Ctrl-C: SIGINT) after a step is saved (mid-run), the same command again: the
    final trajectory is identical to an uninterrupted run's. Ctrl-C ends with exit 130 and one
    line saying how to resume, no traceback, and the lock released."""
    import json
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    model = tiny_dir("llama-gqa")

    def cmd(out):
        # 16 steps of 32 x 64 tokens: a few seconds of pruning, so the signal lands mid-run on a busy machine
        return [sys.executable, "-m", "gisp.cli", "prune", "--model", str(model), "--data", f"text:{corpus_file}",
                "--sparsity", "0.4", "--steps", "16", "--samples", "32", "--seq-len", "64", "--out", str(out)]

    subprocess.run(cmd(tmp_path / "straight"), check=True, capture_output=True)
    run = tmp_path / "killed"
    # Ctrl-C in a terminal: SIGINT at its default, whatever this process inherited (a shell's background
    # job ignores SIGINT and so would the child, which then ran to the end: "killed too late")
    proc = subprocess.Popen(cmd(run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if json.loads((run / "run.json").read_text())["completed_steps"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate()
    assert json.loads((run / "run.json").read_text())["completed_steps"] < 16, "killed too late to test a resume"
    if sig == "SIGINT":
        assert proc.returncode == 130 and "Traceback" not in err
        assert err.strip().splitlines()[-1] == "gisp: interrupted; run the same command again to resume"
        assert not (tmp_path / ".killed.lock").exists()
    else:
        assert proc.returncode == -signal.SIGKILL
    subprocess.run(cmd(run), check=True, capture_output=True)
    ours, theirs = load_file(run / "trajectory.safetensors"), load_file(tmp_path / "straight" / "trajectory.safetensors")
    assert ours.keys() == theirs.keys()
    # bit-identical (NaN marks input means never recorded, so compare with equal_nan)
    assert [k for k in ours if not torch.allclose(ours[k].double(), theirs[k].double(), rtol=0, atol=0, equal_nan=True)] == []
    assert json.loads((run / "run.json").read_text())["steps"][-1]["sparsity"] == \
        json.loads((tmp_path / "straight" / "run.json").read_text())["steps"][-1]["sparsity"]


def test_run_report_is_written_with_plots_and_info_prints_progress(run_dir, capsys):
    from PIL import Image

    report = (run_dir / "report.md").read_text()
    assert "![calibration loss, sparsity and time per step](progress.png)" in report and "(layers.png)" in report
    assert "progress: 3/3 steps" in report and "done" in report and "heads kept /6" in report
    for name in ("progress.png", "layers.png"):
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG" and image.size[0] > 800
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]  # no temporaries left
    code, out, _ = _run(capsys, "info", run_dir)
    assert code == 0 and "progress: 3/3 steps" in out
    code, out, _ = _run(capsys, "info", run_dir, "--report", run_dir.parent / "copy")
    assert code == 0 and (run_dir.parent / "copy" / "report.md").read_text() == report


def test_report_eta_is_the_mean_step_time_times_the_steps_left():
    from gisp.report import progress_line
    from gisp.trajectory import StepRecord, Trajectory

    traj = Trajectory.empty(2, 2, 4)
    traj.config = {"steps": 8}
    traj.steps = [StepRecord(0, 0.0, 0.0, 0.0, 0, 0, 1.0)] + [StepRecord(i, 0.1 * i, 0.1 * i, 0.1, 0, i, 1.0) for i in (1, 2)]
    traj.steps[1].seconds, traj.steps[2].seconds = 50.0, 70.0
    traj.head_step[0, 0], traj.channel_step[0, :2] = 1, torch.tensor([1, 2])  # steps 1 and 2 recorded
    assert traj.completed_steps == 2
    assert progress_line(traj) == "progress: 2/8 steps, 2.0 min of pruning, ETA 6.0 min (6 steps left)"


@pytest.mark.slow  # two gisp processes
def test_two_prunes_racing_for_one_run_directory(tiny_dir, corpus_file, tmp_path):
    """Two identical `gisp prune` processes started together on one --out: exactly one runs, the
    other is refused (exit 2, naming the holder's pid) before writing anything, and the run ends
    with the trajectory of a run that had the directory to itself."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    model = tiny_dir("llama-gqa")

    def cmd(out):
        return [sys.executable, "-m", "gisp", "prune", "--model", str(model), "--data", f"text:{corpus_file}",
                "--sparsity", "0.4", "--steps", "8", "--samples", "16", "--seq-len", "32", "--out", str(out)]

    subprocess.run(cmd(tmp_path / "alone"), check=True, capture_output=True)
    # both take the lock before loading anything, so the second meets it however their start-up differs
    racers = [subprocess.Popen(cmd(tmp_path / "raced"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    results = [(p.wait(), *p.communicate()) for p in racers]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    winner = next(p for p, (code, _, _) in zip(racers, results) if code == 0)
    assert loser.strip().splitlines()[-1] == f"gisp: error: {tmp_path / 'raced'} is in use by gisp prune (pid {winner.pid}); " \
                                             "wait for it to finish or stop it"
    assert "Traceback" not in loser
    ours, theirs = load_file(tmp_path / "raced" / "trajectory.safetensors"), load_file(tmp_path / "alone" / "trajectory.safetensors")
    assert all(torch.equal(ours[k].nan_to_num(), theirs[k].nan_to_num()) for k in theirs)
    assert not (tmp_path / ".raced.lock").exists()


# --- output: --quiet and --log-level on every command ------------------------------------------

@pytest.fixture
def restore_output(monkeypatch):
    """Commands set process-wide output (logging, bars, transformers' env); put it back after."""
    for name in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    yield
    from transformers.utils import logging as hf_logging

    from gisp.runtime import configure_output
    configure_output()
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()


def test_every_command_takes_quiet_and_log_level():
    import argparse

    from gisp.cli import build_parser
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"prune", "export", "eval", "info", "plan", "recover", "convert", "demo", "lm-eval-tasks"} <= set(commands)
    for name, sub in commands.items():
        flags = {s for a in sub._actions for s in a.option_strings}
        assert {"--quiet", "-q", "--log-level"} <= flags, name
    args = parser.parse_args(["info", "RUN", "--log-level", "debug", "-q"])
    assert (args.log_level, args.quiet) == ("debug", True)


def test_quiet_prints_only_results(tiny_dir, corpus_file, tmp_path, capsys, restore_output):
    """No bars, notes or warnings on stderr; prune's stdout is its one result line."""
    model = tiny_dir("llama-gqa")
    capsys.readouterr()  # drop the fixture's output
    code, out, err = _run(capsys, *_prune_args(model, f"text:{corpus_file}", tmp_path / "run"), "--quiet")
    assert code == 0 and err == ""
    assert out.splitlines() == [f"run saved to {tmp_path / 'run'}; export a level with: gisp export {tmp_path / 'run'} "
                                "--sparsity X --out DIR"]
    code, out, err = _run(capsys, "export", tmp_path / "run", "--sparsity", "0.2", "--out", tmp_path / "e", "-q")
    assert code == 0 and err == "" and len(out.splitlines()) == 1 and out.startswith("exported step")
    code, out, err = _run(capsys, "eval", tmp_path / "e", "--data", f"text:{corpus_file}", "--seq-len", "16",
                          "--json", "--quiet")
    assert code == 0 and err == "" and math.isfinite(json.loads(out)["ppl"])
    # errors still show under --quiet: one line, exit code 2
    _assert_error(capsys, ["export", tmp_path / "run", "--sparsity", "0.9", "--out", tmp_path / "f", "--quiet"],
                  "was never reached")


def test_quiet_ends_with_its_command(tiny_dir, tmp_path, capsys, restore_output):
    """A --quiet (or --log-level) command in a process that goes on (the API, a notebook): after
    it, everything it set is as before: warning filters and capture, gisp's logger, transformers'
    verbosity and bars, the hub's variable."""
    import logging
    import os
    import warnings

    from transformers.utils import logging as hf_logging

    from gisp.runtime import bars_enabled

    def state():
        gisp_logger = logging.getLogger("gisp")
        return (list(warnings.filters), gisp_logger.level, list(gisp_logger.handlers), gisp_logger.propagate,
                logging._warnings_showwarning is not None, bars_enabled(), os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS"),
                os.environ.get("TRANSFORMERS_VERBOSITY"), hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled())

    tiny_config_dir = tiny_dir("llama-gqa")
    before = state()
    for flags in (["--quiet"], ["--log-level", "debug"], ["--log-level", "error"]):
        assert main(["plan", "--model", str(tiny_config_dir), "--json", *flags]) == 0
        assert state() == before, flags
    capsys.readouterr()


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_log_level_info_adds_a_line_per_step(tiny_dir, corpus_file, tmp_path, capsys, restore_output):
    model = tiny_dir("llama-gqa")
    code, out, err = _run(capsys, *_prune_args(model, f"text:{corpus_file}", tmp_path / "run"), "--log-level", "info")
    assert code == 0, err
    steps = [l for l in err.replace("\r", "\n").splitlines() if l.startswith("gisp: step ")]
    assert [l.split(":")[1].strip() for l in steps] == ["step 1", "step 2", "step 3"]
    assert "progress: 3/3 steps" in steps[-1] and "ETA" in steps[0]
    assert "heads kept" in out  # the summary, without --quiet


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_notes_show_at_warning_and_not_at_error(tiny_dir, corpus_file, tmp_path, capsys, restore_output):
    """olmo2 prunes channels only, and says so unless --log-level error (or --quiet)."""
    model = tiny_dir("olmo2")
    capsys.readouterr()
    code, _, err = _run(capsys, *_prune_args(model, f"text:{corpus_file}", tmp_path / "a", sparsity="0.2"))
    assert code == 0 and "gisp: note: olmo2 normalises q and k over all heads together" in err, err
    code, _, err = _run(capsys, *_prune_args(model, f"text:{corpus_file}", tmp_path / "b", sparsity="0.2"),
                        "--log-level", "error")
    assert code == 0 and "note:" not in err, err


def test_quiet_silences_the_gguf_readers_own_bar_and_restores_it(restore_output):
    from transformers import modeling_gguf_pytorch_utils as reader

    from gisp.models import quiet_gguf_bars
    from gisp.runtime import configure_output

    original = reader.tqdm
    configure_output(quiet=True)
    with quiet_gguf_bars():
        assert reader.tqdm is not original and reader.tqdm([1]).disable
    assert reader.tqdm is original
    configure_output()
    with quiet_gguf_bars():
        assert reader.tqdm is original

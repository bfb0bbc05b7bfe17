"""Every row of the bad-input table of docs/errors.md: exit code 2, the one-line message, no traceback,
and nothing left behind (the directory tree is byte-for-byte what it was before the command).

Each case is ``(id, setup)``: ``setup(env)`` prepares what the row needs and returns the
command line; ``MESSAGES[id]`` is the message docs/errors.md shows. A test checks that the page's
table lists exactly these ids, so the table and the tests cannot drift apart.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CORPUS

from gisp.cli import main

ERRORS_DOC = Path(__file__).parent.parent / "docs" / "errors.md"
PRUNE = ["--sparsity", "0.4", "--steps", "2", "--samples", "6", "--seq-len", "24", "--batch-size", "3"]


class Env:
    """A tiny model, a corpus, a finished run and bad files, all under one directory."""

    def __init__(self, root: Path, model: Path, run: Path) -> None:
        self.root, self.model, self.run = root, model, run
        self.corpus = root / "corpus.txt"

    def file(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def prune(self, *extra, model=None, data=None, out="new-run") -> list:
        return ["prune", "--model", model or self.model, "--data", data or f"text:{self.corpus}", *PRUNE, *extra,
                "--out", self.root / out]


def _other_model(env: Env) -> list:
    from conftest import tiny_model, tiny_tokenizer
    other = env.root / "other-model"
    tiny_model("llama-gqa", seed=1).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    return env.prune(model=other, out=env.run.name)


def _corrupt(env: Env) -> list:
    path = env.run / "trajectory.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    return ["export", env.run, "--sparsity", "0.2", "--out", env.root / "exported"]


LOCK_HOLDER = "import sys, time\nfrom gisp.runlock import locked\nwith locked(sys.argv[1], 'prune'):\n" \
              "    print('locked', flush=True)\n    time.sleep(120)\n"


def _locked(env: Env) -> list:
    env.holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(env.run)], stdout=subprocess.PIPE, text=True)
    assert env.holder.stdout.readline().strip() == "locked"
    return env.prune(out=env.run.name)


def _pickled(env: Env) -> list:
    import shutil

    import torch
    from safetensors.torch import load_file
    model = env.root / "pickled-model"
    shutil.copytree(env.model, model)
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    return env.prune(model=model)


CUSTOM_CODE = "from pathlib import Path\nPath(__file__).with_name('code-ran').write_text('it ran')\n"


def _own_code(env: Env) -> list:
    import json
    import shutil
    model = env.root / "own-code-model"
    shutil.copytree(env.model, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.MyConfig", "AutoModelForCausalLM": "custom.MyModel"}
    config["model_type"] = "my-own"  # no stock class to fall back on: only its code could load it
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom.py").write_text(CUSTOM_CODE)  # would leave a file behind if it ever ran
    return env.prune(model=model)


def _export_on_other_code(env: Env) -> list:
    import json
    assert main(["export", str(env.run), "--sparsity", "0.4", "--out", str(env.root / "export")]) == 0
    config = json.loads((env.root / "export" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_gisp.GispConfig", "AutoModelForCausalLM": "modeling_gisp.GispForCausalLM"}
    config["gisp_remote"] = dict(config.get("gisp_remote") or {}, config="custom.MyConfig", model="custom.MyModel",
                                 layers="model.layers")
    (env.root / "export" / "config.json").write_text(json.dumps(config))
    return ["eval", env.root / "export", "--task", "ppl", "--data", f"text:{env.corpus}", "--seq-len", "24", "--no-dense"]


def _wrong_shape(env: Env) -> list:
    import json
    from gisp.trajectory import _meta_checksum
    meta = json.loads((env.run / "run.json").read_text())
    meta["steps"][1]["sparsity"] = None
    meta["sha256"] = _meta_checksum(meta)
    (env.run / "run.json").write_text(json.dumps(meta))
    return ["info", env.run]


def _unfinished(env: Env) -> list:
    from gisp.trajectory import Trajectory
    traj = Trajectory.load(env.run)  # as if the 2-step run were still at its first step
    traj.steps = traj.steps[:2]
    for name in ("head_step", "head_order", "channel_step", "channel_order"):
        tensor = getattr(traj, name)
        tensor[tensor > 1] = -1
    traj.save(env.run)
    return ["export", env.run, "--sparsity", "0.4", "--out", env.root / "exported"]


CASES = {
    "missing-model": lambda e: e.prune(model=e.root / "no-such-model"),
    "unreadable-model": lambda e: e.prune(model=e.file("broken/config.json", "{not json").parent),
    "unsupported-model-type": lambda e: e.prune(model=e.file("gpt2/config.json",
                                                              '{"model_type": "gpt2", "n_layer": 1}').parent),
    "gguf-not-a-model": lambda e: e.prune(model=e.file("fake.gguf", "this is not a GGUF file")),
    "sparsity-out-of-range": lambda e: e.prune("--sparsity", "1.5"),
    "steps-below-one": lambda e: e.prune("--steps", "0"),
    "seq-len-above-context": lambda e: e.prune("--seq-len", "4096"),
    "empty-data": lambda e: e.prune(data=f"text:{e.file('empty.txt', '')}"),
    "malformed-jsonl-line": lambda e: e.prune("--objective", "answer", data="jsonl:" + str(e.file(
        "qa.jsonl", '{"prompt": "a", "answer": "b"}\n{"prompt": "c", \n'))),
    "choice-label-out-of-range": lambda e: e.prune("--objective", "margin", data="mc:" + str(e.file(
        "mc.jsonl", '{"context": "Q", "choices": ["a", "b"], "label": 2}\n'))),
    "piqa-label-out-of-range": lambda e: (e.file("piqa/dev-labels.lst", "1\n7\n"), e.prune("--objective", "margin", data="piqa:" + str(
        e.file("piqa/dev.jsonl", '{"goal": "g", "sol1": "a", "sol2": "b"}\n{"goal": "h", "sol1": "c", "sol2": "d"}\n'))))[1],
    "calibration-larger-than-data": lambda e: e.prune("--samples", "500"),
    "unknown-method": lambda e: e.prune("--method", "obs"),
    "unknown-device": lambda e: e.prune("--device", "tpu"),
    "data-not-utf8": lambda e: e.prune(data=f"text:{e.root / 'latin1.txt'}") if (e.root / "latin1.txt").write_bytes(
        "café au lait\n".encode("latin-1")) else None,
    "field-of-wrong-type": lambda e: e.prune("--objective", "margin", data="mc:" + str(e.file(
        "mc2.jsonl", '{"context": "Q", "choices": ["a", "b"], "label": "1"}\n'))),
    "protect-every-layer": lambda e: e.prune("--protect-first", "0.9"),
    "eval-batch-size-zero": lambda e: ["eval", e.model, "--task", "ppl", "--data", f"text:{e.corpus}", "--batch-size", "0"],
    "out-not-creatable": lambda e: e.prune(out="/proc/gisp-no-such/run"),
    "run-record-of-wrong-shape": _wrong_shape,
    "export-level-not-saved-yet": _unfinished,
    "device-not-here": lambda e: e.prune("--device", "cuda:99"),
    "export-level-never-reached": lambda e: ["export", e.run, "--sparsity", "0.6", "--out", e.root / "exported"],
    "export-into-non-empty-directory": lambda e: (e.file("full/notes.txt", "mine"),
                                                  ["export", e.run, "--sparsity", "0.2", "--out", e.root / "full"])[1],
    "unknown-format": lambda e: ["export", e.run, "--sparsity", "0.2", "--format", "onnx", "--out", e.root / "exported"],
    "corrupted-trajectory": _corrupt,
    "run-of-another-model": _other_model,
    "run-locked-by-another-process": _locked,
    "pickled-weights": _pickled,
    "chat-template-for-lm-data": lambda e: e.prune("--chat-template"),
    "chat-template-missing": lambda e: e.prune("--objective", "answer", "--chat-template", data="jsonl:" + str(e.file(
        "qa2.jsonl", '{"prompt": "2 + 2?", "answer": "4"}\n' * 8))),
    "model-code-not-trusted": _own_code,
    "export-built-on-other-code": _export_on_other_code,
}

MESSAGES = {
    "chat-template-for-lm-data": "--chat-template renders prompt/answer data (--objective answer), not --objective lm",
    "chat-template-missing": "--chat-template needs a tokenizer with a chat template; this one has none",
    "missing-model": "model path not found: {root}/no-such-model",
    "unreadable-model": "cannot read the config of {root}/broken: It looks like the config file at "
                        "'{root}/broken/config.json' is not a valid JSON file.",
    "unsupported-model-type": "unsupported model type 'gpt2'; gisp supports:",
    "gguf-not-a-model": "{root}/fake.gguf is not a GGUF model file (it does not start with the GGUF magic bytes)",
    "sparsity-out-of-range": "sparsity must be in (0, 1), got 1.5",
    "steps-below-one": "steps must be a positive integer, got 0",
    "seq-len-above-context": "seq-len 4096 is longer than the model's context of 256 tokens; lower --seq-len",
    "empty-data": "data file is empty: {root}/empty.txt",
    "malformed-jsonl-line": "{root}/qa.jsonl:2: not valid JSON",
    "choice-label-out-of-range": "label 2 does not index 2 choices",
    "piqa-label-out-of-range": "{root}/piqa/dev-labels.lst:2: label '7' is not 0 (sol1) or 1 (sol2)",
    "calibration-larger-than-data": "calibration asks for 500 windows of 24 tokens (12,000), more than the",
    "unknown-method": "unknown method 'obs'; choose from",
    "unknown-device": "unknown device 'tpu'; choose from cpu, cuda, cuda:N, mps or auto",
    "data-not-utf8": "{root}/latin1.txt: not UTF-8 text (byte 3 is 0xe9); save it as UTF-8",
    "field-of-wrong-type": "{root}/mc2.jsonl:1: field 'label' must be an integer, got \"1\"",
    "protect-every-layer": "all 4 layers are protected; lower --protect-first/--protect-last",
    "eval-batch-size-zero": "--batch-size must be a positive integer, got 0",
    "out-not-creatable": "cannot create /proc/gisp-no-such for /proc/gisp-no-such/run: No such file or directory",
    "run-record-of-wrong-shape": "{root}/run/run.json is not a gisp run record (step record 1: 'sparsity' is null); "
                                 "the files are truncated or corrupted",
    "export-level-not-saved-yet": "sparsity 0.4 is not saved yet: this run has finished 1 of 2 steps, up to",
    "device-not-here": "--device cuda:99: ",  # no CUDA in this torch / no such GPU on this machine
    "export-level-never-reached": "sparsity 0.6 was never reached by this run (it reaches 0.4000 after 2 steps)",
    "export-into-non-empty-directory": "export directory {root}/full already exists and is not empty",
    "unknown-format": "unknown --format 'onnx'; choose from hf, gguf",
    "corrupted-trajectory": "cannot read run directory {root}/run (",
    # ... the files are truncated or corrupted: restore them or start a new --out
    "run-of-another-model": "run directory {root}/run belongs to another model",
    "run-locked-by-another-process": "{root}/run is in use by gisp prune (pid",
    "pickled-weights": "{root}/pickled-model has only pickled .bin weights; gisp unpickles nothing unless you pass "
                       "--allow-pickle (GISP_ALLOW_PICKLE=1), or convert it to safetensors",
    "model-code-not-trusted": "{root}/own-code-model ships its own model code (auto_map); gisp runs none unless you pass "
                              "--trust-remote-code (GISP_TRUST_REMOTE_CODE=1)",
    "export-built-on-other-code": "{root}/export is a gisp export built on 'custom.MyConfig', not a transformers class; "
                                  "loading it would import that code: pass --trust-remote-code if you trust it",
}


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (hidden ones included) and its bytes; directories as empty."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model and a finished 2-step run, made once for the module."""
    from conftest import tiny_model, tiny_tokenizer
    base = tmp_path_factory.mktemp("bad-input")
    model = base / "model"
    tiny_model("llama-gqa").save_pretrained(model)
    tiny_tokenizer().save_pretrained(model)
    (base / "corpus.txt").write_text(CORPUS)
    env = Env(base, model, base / "run")
    assert main([str(a) for a in env.prune(out="run")]) == 0
    return model, env.run


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, prepared, tmp_path, capsys):
    import shutil
    model, run = prepared
    env = Env(tmp_path, model, tmp_path / "run")
    env.corpus.write_text(CORPUS)
    shutil.copytree(run, env.run)
    argv = [str(a) for a in CASES[case](env)]
    before = _tree(tmp_path)
    capsys.readouterr()
    try:
        code = main(argv)
    finally:
        if hasattr(env, "holder"):
            env.holder.kill()
            env.holder.wait()
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and lines and [line for line in lines if line.startswith("gisp:")] == [lines[-1]], err
    expected = MESSAGES[case].format(root=tmp_path)
    assert lines[-1].startswith("gisp: error: ") and expected in lines[-1], lines[-1]
    after = _tree(tmp_path)  # a holder's lock file included: the refused command leaves it as it was
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"


def test_errors_page_lists_exactly_the_tested_rows():
    section = ERRORS_DOC.read_text()
    ids = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)
    assert sorted(ids) == sorted(CASES), sorted(set(ids) ^ set(CASES))
    assert len(ids) == len(set(ids))

"""The README's quickstart runs as written: every command of its block, in order, on a tiny model
standing in for ``smollm2-135m`` (the packaged GSM8K data as the README uses it)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def quickstart() -> list[str]:
    """The commands of the first ``bash`` block after the Quickstart heading."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart"):]
    block = section[section.index("```bash") + len("```bash"):]
    return [line.strip() for line in block[:block.index("```")].strip().splitlines() if line.strip()]


def test_quickstart_names_each_step():
    words = [shlex.split(c)[:2] for c in quickstart()]
    assert [w[1] for w in words if w[0] == "gisp"] == ["prune", "info", "export", "eval", "export", "recover"]
    assert any("llama_cpp" in c for c in quickstart()) and any("from_pretrained" in c for c in quickstart())


@pytest.mark.slow
def test_quickstart_runs_as_written(tiny_dir, tmp_path):
    pytest.importorskip("llama_cpp")
    model = tiny_dir("llama-gqa")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for command in quickstart():
        command = command.replace("smollm2-135m", str(model))
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
    assert (tmp_path / "smol-20-lora" / "model.safetensors").is_file()
    assert (tmp_path / "smol-20.gguf").stat().st_size > 0

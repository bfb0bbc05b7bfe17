"""gisp recover: schedule and loss by hand, recovered exports keep their shapes and load without
gisp, and an interrupted recovery resumes to the uninterrupted result."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import gisp
from gisp.config import RecoverConfig
from gisp.errors import GispError
from gisp.recovery import distill_loss, learning_rate, predicting_positions


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    lrs = [learning_rate(s, 100, 1e-3, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # 10 warm-up steps
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))


def test_distill_loss_is_masked_kl_by_hand():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    for temp in (1.0, 2.0):
        per = F.kl_div(F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), log_target=True, reduction="none").sum(-1)
        assert distill_loss(s, t, mask, temp).item() == pytest.approx((per[mask].mean() * temp**2).item(), rel=1e-6)
    assert distill_loss(t, t, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_predicting_positions_shift_the_scored_tokens():
    batch = {"input_ids": torch.zeros(1, 5, dtype=torch.long),
             "target_mask": torch.tensor([[0, 0, 1, 1, 0]], dtype=torch.bool)}
    assert predicting_positions(batch).tolist() == [[False, True, True, False, False]]
    lm = {"input_ids": torch.zeros(1, 4, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1, 0]])}
    assert predicting_positions(lm).tolist() == [[True, True, False, False]]


@pytest.fixture
def export_dir(tiny_dir, corpus_file, tmp_path) -> Path:
    dense = tiny_dir("llama-gqa")
    gisp.prune(model=str(dense), data=f"text:{corpus_file}", sparsity=0.4, steps=2, samples=8, seq_len=32,
               progress=False, out=tmp_path / "run")
    gisp.export(tmp_path / "run", 0.4, tmp_path / "export")
    return tmp_path / "export"


LOAD = r'''
import importlib.abc, json, sys
class NoGisp(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "gisp" or name.startswith("gisp."):
            raise ImportError("gisp must not be imported here")
sys.meta_path.insert(0, NoGisp())
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32)
ids = torch.arange(1, 17)[None]
with torch.no_grad():
    logits = model(ids).logits
print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "class": type(model).__name__,
                  "logit": float(logits.abs().sum())}))
'''


def _load_without_gisp(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
@pytest.mark.parametrize("method", ["lora", "distill"])
def test_recovered_export_has_the_exports_shapes_and_loads_without_gisp(method, export_dir, corpus_file, tmp_path):
    out = tmp_path / f"rec-{method}"
    result = gisp.recover(model=str(export_dir), data=f"text:{corpus_file}", out=str(out), method=method,
                          max_tokens=2048, seq_len=32, batch_size=4, lr=3e-3, checkpoint_every=5, progress=False)
    before, after = _load_without_gisp(export_dir), _load_without_gisp(out)
    assert after["params"] == before["params"] == result.parameters and after["class"] == before["class"]
    assert after["logit"] != before["logit"]  # the weights did change
    assert json.loads((out / "config.json").read_text()) == json.loads((export_dir / "config.json").read_text())
    assert result.tokens >= 2048
    # the trained loss went down on the training text: LM loss (lora), KL to the dense model (distill)
    from gisp.data import consecutive_windows, tokenize
    tok = gisp.load(str(export_dir))[1]
    ids = consecutive_windows(tokenize(tok, corpus_file.read_text()), 32)[:16]
    losses = [_loss(gisp.load(str(d))[0], ids, method, export_dir) for d in (export_dir, out)]
    assert losses[1] < 0.9 * losses[0], losses
    assert not Path(f"{out}.ckpt").exists()
    info = json.loads((out / "gisp_recovery.json").read_text())
    assert info["method"] == method and info["config"]["max_tokens"] == 2048


def _loss(model, ids, method: str, export_dir: Path) -> float:
    with torch.no_grad():
        logits = model(ids).logits
        if method == "lora":
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item()
        spec = json.loads((export_dir / "gisp_export.json").read_text())["base_model"]["spec"]
        teacher = gisp.load(spec)[0](ids).logits
        return distill_loss(logits, teacher, torch.ones(ids.shape, dtype=torch.bool)).item()


def test_recover_refuses_bad_input(export_dir, corpus_file, tmp_path):
    with pytest.raises(GispError, match="unknown method 'sft'"):
        RecoverConfig(model=str(export_dir), data="x", out="y", method="sft")
    with pytest.raises(GispError, match="--teacher is for --method distill"):
        RecoverConfig(model=str(export_dir), data="x", out="y", teacher="z")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(GispError, match="already exists and is not empty"):
        gisp.recover(model=str(export_dir), data=f"text:{corpus_file}", out=str(tmp_path / "full"), progress=False)


def _recover_cmd(export_dir: Path, corpus_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "gisp.cli", "recover", str(export_dir), "--data", f"text:{corpus_file}",
            "--out", str(out), "--max-tokens", "4096", "--seq-len", "32", "--batch-size", "4", "--lr", "3e-3",
            "--checkpoint-every", "2"]


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_interrupted_recovery_resumes_from_its_last_checkpoint(export_dir, corpus_file, tmp_path):
    """Must-show 4: SIGKILL mid-run, the same command again continues and ends where an
    uninterrupted run ends."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_recover_cmd(export_dir, corpus_file, straight), check=True, capture_output=True, env=env)
    out = tmp_path / "resumed"
    proc = subprocess.Popen(_recover_cmd(export_dir, corpus_file, out), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    state = Path(f"{out}.ckpt") / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (state.is_file() and json.loads(state.read_text())["step"] >= 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.is_file() and not out.exists(), "the run should have been killed mid-way"
    killed_at = json.loads(state.read_text())["step"]
    again = subprocess.run(_recover_cmd(export_dir, corpus_file, out), capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert f"resuming recovery from step {killed_at} of 33" in again.stderr  # 4096 tokens in windows of 32, 4 a step
    ours, theirs = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], atol=1e-6), key


@pytest.mark.slow  # over a few seconds: make test runs it, make test-fast leaves it out
def test_recovery_on_answer_and_choice_data(export_dir, tmp_path):
    """The same data specs as prune: prompt/answer JSONL (answer tokens only) and multiple choice."""
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"prompt": f"Q: {i} + 1?\nA: ", "answer": f"{i + 1}"}) + "\n" for i in range(40)))
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"context": f"The fox {i}", "choices": [" jumps", " sleeps"], "label": i % 2}) + "\n"
                          for i in range(40)))
    for objective, data, method in (("answer", f"jsonl:{qa}", "lora"), ("margin", f"mc:{mc}", "distill")):
        out = tmp_path / f"rec-{objective}"
        result = gisp.recover(model=str(export_dir), data=data, objective=objective, out=str(out), method=method,
                              max_tokens=600, seq_len=32, batch_size=4, progress=False)
        assert result.tokens >= 600 and result.steps > 0
        assert _load_without_gisp(out)["params"] == _load_without_gisp(export_dir)["params"]

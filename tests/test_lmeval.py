"""lm-evaluation-harness scores a gisp export (remote code) with the shipped PIQA task exactly as `gisp eval --task mc`."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from gisp.cli import main
from gisp.evaluation.choice import multiple_choice
from gisp.examples import choice_examples
from gisp.export import ExportInfo, build_pruned_model, save_export
from gisp.lmeval import write_tasks

from conftest import tiny_model, tiny_tokenizer
from test_export import CASES, _masks

pytestmark = pytest.mark.slow


def _lm_eval_cli() -> str:
    exe = shutil.which("lm_eval") or os.path.join(os.path.dirname(sys.executable), "lm_eval")
    if not os.path.exists(exe):
        pytest.skip("lm-eval is not installed (pip install 'gisp[lmeval]'; make test installs it)")
    return exe


def test_lm_eval_agrees_with_gisp_mc_on_an_export(tmp_path):
    exe = _lm_eval_cli()
    questions = [("how to open a jar", "twist the lid", "eat the lid"), ("make toast", "use a toaster", "use a fridge"),
                 ("dry hair", "use a towel", "use water"), ("see at night", "turn on a lamp", "close your eyes"),
                 ("cool tea", "wait a while", "boil it"), ("tie a knot", "loop the lace", "cut the lace")]
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps({"goal": g, "sol1": a, "sol2": b}) + "\n" for g, a, b in questions))
    (tmp_path / "dev-labels.lst").write_text("0\n0\n0\n0\n1\n0\n")
    model, tok = tiny_model("llama-gqa"), tiny_tokenizer()
    pruned, remote = build_pruned_model(model, _masks(model, *CASES["llama-gqa-uneven"]))
    export = tmp_path / "export"
    save_export(pruned, tok, remote, ExportInfo(str(export), 0, 0, 0, 0, 0, 0, 0, remote, {}), export)
    assert remote and main(["lm-eval-tasks", str(tmp_path / "tasks"), "--piqa", str(tmp_path / "dev.jsonl")]) == 0

    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([exe, "--model", "hf", "--model_args", f"pretrained={export},trust_remote_code=True,dtype=float32",
                           "--include_path", str(tmp_path / "tasks"), "--tasks", "gisp_piqa", "--device", "cpu",
                           "--batch_size", "4", "--output_path", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results_file] = list((tmp_path / "out").rglob("results*.json"))
    theirs = json.loads(results_file.read_text())["results"]["gisp_piqa"]
    ours = multiple_choice(pruned, tok, choice_examples(f"piqa:{tmp_path / 'dev.jsonl'}"), progress=False)
    assert theirs["acc,none"] == pytest.approx(ours.acc) and theirs["acc_norm,none"] == pytest.approx(ours.acc_norm)


def test_gsm8k_task_yaml_uses_local_file_and_fixed_exemplars(tmp_path):
    import yaml

    from gisp.data import packaged_gsm8k_path

    [path] = write_tasks(tmp_path, gsm8k=str(packaged_gsm8k_path()))
    task = yaml.safe_load(path.read_text())
    assert task["task"] == "gisp_gsm8k_cot" and task["num_fewshot"] == 8
    assert task["dataset_kwargs"]["data_files"]["validation"] == str(packaged_gsm8k_path().resolve())
    assert task["fewshot_config"]["samples"][0]["target"].endswith("The answer is 72.")

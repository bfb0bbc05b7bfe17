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
from gisp.export import ExportInfo, save_export
from gisp.slicing import build_pruned_model
from gisp.lmeval import write_tasks

from conftest import tiny_model, tiny_tokenizer
from test_export import CASES, _masks

pytestmark = pytest.mark.slow


def _lm_eval_cli() -> str:
    exe = shutil.which("lm_eval") or os.path.join(os.path.dirname(sys.executable), "lm_eval")
    if not os.path.exists(exe):
        pytest.skip("lm-eval is not installed (pip install 'gisp[lmeval]'; make test installs it)")
    return exe


def _run_lm_eval(exe, export, tasks, task, tmp_path, *extra):
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([exe, "--model", "hf", "--model_args", f"pretrained={export},trust_remote_code=True,dtype=float32",
                           "--include_path", str(tasks), "--tasks", task, "--device", "cpu",
                           "--batch_size", "4", "--output_path", str(tmp_path / "out"), *extra],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results_file] = list((tmp_path / "out").rglob("results*.json"))
    return json.loads(results_file.read_text())["results"][task]


def _tiny_export(tmp_path):
    model, tok = tiny_model("llama-gqa"), tiny_tokenizer()
    pruned, remote = build_pruned_model(model, _masks(model, *CASES["llama-gqa-uneven"]))
    export = tmp_path / "export"
    save_export(pruned, tok, remote, ExportInfo(str(export), 0, 0, 0, 0, 0, 0, 0, remote, {}), export)
    assert remote
    return export, pruned, tok


def test_lm_eval_agrees_with_gisp_mc_on_an_export(tmp_path):
    exe = _lm_eval_cli()
    questions = [("how to open a jar", "twist the lid", "eat the lid"), ("make toast", "use a toaster", "use a fridge"),
                 ("dry hair", "use a towel", "use water"), ("see at night", "turn on a lamp", "close your eyes"),
                 ("cool tea", "wait a while", "boil it"), ("tie a knot", "loop the lace", "cut the lace")]
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps({"goal": g, "sol1": a, "sol2": b}) + "\n" for g, a, b in questions))
    (tmp_path / "dev-labels.lst").write_text("0\n0\n0\n0\n1\n0\n")
    export, pruned, tok = _tiny_export(tmp_path)
    assert main(["lm-eval-tasks", str(tmp_path / "tasks"), "--piqa", str(tmp_path / "dev.jsonl")]) == 0
    theirs = _run_lm_eval(exe, export, tmp_path / "tasks", "gisp_piqa", tmp_path)
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


def test_lm_eval_runs_the_gsm8k_task_on_an_export(tmp_path):
    """The generated gsm8k-cot YAML is valid for lm-eval (few-shot exemplars, filters, metric)."""
    exe = _lm_eval_cli()
    problems = tmp_path / "test.jsonl"
    problems.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
                                for i in range(2)))
    export, _, _ = _tiny_export(tmp_path)
    assert main(["lm-eval-tasks", str(tmp_path / "tasks"), "--gsm8k", str(problems)]) == 0
    result = _run_lm_eval(exe, export, tmp_path / "tasks", "gisp_gsm8k_cot", tmp_path, "--gen_kwargs", "max_gen_toks=4")
    assert result["exact_match,strict-match"] == 0.0  # a random tiny model; the point is that lm-eval ran it

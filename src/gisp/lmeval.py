"""Task YAMLs that let lm-evaluation-harness score gisp exports on local PIQA and GSM8K files.

``gisp lm-eval-tasks DIR --piqa dev.jsonl --gsm8k test.jsonl`` writes ``gisp_piqa`` (PIQA with
its labels merged in, lm-eval's own PIQA prompt) and ``gisp_gsm8k_cot`` (greedy chain of thought
with gisp's fixed train-split exemplars; strict "The answer is N" match and lm-eval's
flexible-extract, the last number) into DIR. Then::

    HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 lm_eval --model hf \\
        --model_args pretrained=EXPORT,trust_remote_code=True --include_path DIR --tasks gisp_piqa
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gisp.data import read_jsonl
from gisp.errors import GispError
from gisp.evaluation.gsm8k import EXEMPLARS, chain_of_thought
from gisp.examples import choice_examples, gsm8k_problems, piqa_labels


def _dataset(path: Path) -> dict:
    return {"dataset_path": "json", "dataset_name": None, "dataset_kwargs": {"data_files": {"validation": str(path.resolve())}},
            "validation_split": "validation", "test_split": None, "training_split": None}


def piqa_task(source: Path, out: Path) -> dict:
    """Merge labels into a JSONL beside the YAML and return lm-eval's PIQA task reading it."""
    records, labels = read_jsonl(source), piqa_labels(source)
    if len(records) != len(labels):
        raise GispError(f"{source}: {len(records)} questions but {len(labels)} labels")
    data = out / "gisp_piqa.jsonl"
    data.write_text("".join(json.dumps(r | {"label": y}) + "\n" for r, y in zip(records, labels)))
    return {"task": "gisp_piqa", **_dataset(data), "output_type": "multiple_choice",
            "doc_to_text": "Question: {{goal}}\nAnswer:", "doc_to_target": "label", "doc_to_choice": "{{[sol1, sol2]}}",
            "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
            "metadata": {"version": 1.0, "source": str(source)}}


def gsm8k_task(source: Path, shots: int = 8) -> dict:
    """lm-eval's gsm8k-cot layout with gisp's exemplars (the first GSM8K train problems)."""
    read_jsonl(source)  # fail early on a missing or malformed file
    samples = [{"question": r["question"], "target": chain_of_thought(r["answer"])} for r in read_jsonl(EXEMPLARS)[:shots]]
    return {"task": "gisp_gsm8k_cot", **_dataset(source), "output_type": "generate_until",
            "doc_to_text": "Q: {{question}}\nA:", # exemplars carry a worked `target`; test problems the gold `answer`
            "doc_to_target": "{{answer.split('####')[-1].strip() if answer is defined else target}}",
            "fewshot_config": {"sampler": "first_n", "samples": samples}, "num_fewshot": shots,
            "target_delimiter": " ", "fewshot_delimiter": "\n\n",
            "generation_kwargs": {"do_sample": False, "until": ["Q:", "\n\n"], "max_gen_toks": 256},
            "filter_list": [{"name": "strict-match", "filter": [
                {"function": "regex", "regex_pattern": r"The answer is (\-?[0-9\.\,]+)."}, {"function": "take_first"}]},
                {"name": "flexible-extract", "filter": [  # lm-eval gsm8k-cot's: the last number
                    {"function": "regex", "group_select": -1, "regex_pattern": r"(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                    {"function": "take_first"}]}],
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                             "ignore_case": True, "ignore_punctuation": False, "regexes_to_ignore": [",", r"\$", r"(?s).*#### ", r"\.$"]}],
            "metadata": {"version": 1.0, "source": str(source)}}


def write_tasks(out: str | Path, piqa: str | None = None, gsm8k: str | None = None) -> list[Path]:
    """Write the requested task YAMLs (and merged data) into ``out``; returns the YAML paths."""
    if not piqa and not gsm8k:
        raise GispError("name at least one of --piqa PATH / --gsm8k PATH")
    if piqa:
        choice_examples(f"piqa:{piqa}")  # every record and label checked before anything is written
    if gsm8k:
        gsm8k_problems(f"gsm8k:{gsm8k}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = ([piqa_task(Path(piqa), out)] if piqa else []) + ([gsm8k_task(Path(gsm8k))] if gsm8k else [])
    written = []
    for task in tasks:
        path = out / f"{task['task']}.yaml"
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True))
        tmp.replace(path)
        written.append(path)
    return written

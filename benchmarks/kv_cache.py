"""KV-cache bytes per token of every exported level of finished runs, beside the dense model's (issue #24).

    python benchmarks/kv_cache.py runs/quality-smollm2-piqa/*/ [--name kv_cache-smollm2]

From the run records and the model's config alone (the model is built on the meta device: no
weights load): each level's layout is the export's (:func:`gisp.structures.kv_heads`), so the
figures are what ``gisp export`` writes, for transformers and GGUF alike (the GGUF writer reads its
sizes off the same sliced tensors). Bytes at 16 bits a value (llama.cpp's default cache, bf16
serving). Results: ``benchmarks/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, environment, write_json  # noqa: E402

from gisp.report import markdown_table  # noqa: E402


def duplicating_layout(masks, shape) -> tuple[int, int]:
    """Decoder parameters and KV values per token the same masks would export to if uneven groups
    could be laid out with duplicated KV heads (gisp's layout before this check: the cheapest in
    parameters, whatever its KV heads): the measured cost of never exceeding the dense KV cache."""
    import math

    from gisp.structures import _attention_cost, mlp_params

    g = shape.geometry
    params = kv = 0
    for layer in range(g.num_layers):
        kept = masks.heads[layer]
        counts = [int(kept[k * g.group_size:(k + 1) * g.group_size].sum()) for k in range(g.num_kv_heads)]
        channels = int(masks.channels[layer].sum())
        if not any(counts) and channels == 0 and shape.droppable:
            continue  # an emptied layer is dropped from the export
        if not any(counts):
            params += _attention_cost(1, 1, shape) + mlp_params(channels, shape)  # one zero head, as exported
            kv += 1
            continue
        best = min(range(1, max(counts) + 1),
                   key=lambda s: (_attention_cost(sum(math.ceil(n / s) for n in counts) * s,
                                                  sum(math.ceil(n / s) for n in counts), shape), -s))
        copies = sum(math.ceil(n / best) for n in counts)
        params += _attention_cost(copies * best, copies, shape) + mlp_params(channels, shape)
        kv += copies
    return params, 2 * g.head_dim * kv


def levels_of(run_dir: Path) -> dict:
    """Dense and per-step KV values per token, KV heads per layer and parameters of one run."""
    from gisp import models
    from gisp.adapters import adapter_for
    from gisp.structures import Masks, decoder_params, kv_heads, kv_values_per_token, layer_shape
    from gisp.trajectory import Trajectory

    traj = Trajectory.load(run_dir)
    config = models.load_config(traj.model["spec"])
    with torch.device("meta"):
        model = models.model_from_config(config)
    shape = layer_shape(model, adapter_for(config), compensate=traj.compensated)
    dense = Masks.dense(shape.geometry)
    rows = [{"level": "dense", "sparsity": 0.0, "kv_bytes_per_token": 2 * kv_values_per_token(dense, shape),
             "kv_heads": kv_heads(dense, shape), "decoder_parameters": decoder_params(dense, shape)}]
    for record in traj.steps[1:]:
        masks = traj.masks_at_step(record.step)
        other_params, other_kv = duplicating_layout(masks, shape)
        rows.append({"level": f"step {record.step}", "sparsity": round(record.sparsity, 4),
                     "kv_bytes_per_token": 2 * kv_values_per_token(masks, shape), "kv_heads": kv_heads(masks, shape),
                     "decoder_parameters": decoder_params(masks, shape),
                     "duplicating_layout": {"decoder_parameters": other_params, "kv_bytes_per_token": 2 * other_kv}})
    return {"run": str(run_dir), "model": traj.model.get("spec"), "method": traj.config.get("method"), "levels": rows,
            "never_above_dense": all(max(r["kv_heads"]) <= shape.geometry.num_kv_heads for r in rows)}


def markdown(payload: dict, name: str) -> str:
    """The results table: every level of every run, beside the duplicating layout's cost."""
    rows = []
    for run in payload["runs"]:
        for row in run["levels"]:
            other = row.get("duplicating_layout") or {"kv_bytes_per_token": row["kv_bytes_per_token"],
                                                      "decoder_parameters": row["decoder_parameters"]}
            rows.append([Path(run["run"]).name, row["level"], f"{row['sparsity']:.4f}", f"{row['kv_bytes_per_token'] / 1024:.2f}",
                         f"{row['decoder_parameters']:,}", f"{other['kv_bytes_per_token'] / 1024:.2f}",
                         f"{other['decoder_parameters']:,}", " ".join(map(str, row["kv_heads"]))])
    head = ["run", "level", "sparsity", "KV KiB/token", "decoder params", "duplicating: KV KiB/token", "duplicating: params",
            "KV heads per layer"]
    return (f"# KV cache per token at 16 bits ({name})\n\nBeside each level: what the same masks would cost laid out with "
            "duplicated KV heads (the cheapest in parameters; gisp's layout before it refused more KV heads than dense).\n\n"
            + markdown_table(head, rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--name", default="kv_cache")
    args = parser.parse_args()
    runs = [levels_of(r) for r in args.runs if (r / "run.json").is_file()]
    payload = {"command": " ".join(["python", "benchmarks/kv_cache.py", *sys.argv[1:]]), "environment": environment(),
               "runs": runs}
    write_json(RESULTS / f"{args.name}.json", payload)
    text = markdown(payload, args.name)
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()

"""SmolLM2-135M in llama.cpp: dense vs the 20/30/40/50% GISP levels as GGUF files.

Exports each level of one GISP run (``benchmarks/recovery.py``'s: LM objective, 5 steps of 10%) with
``gisp export --format gguf`` (and the dense model with ``gisp convert --format gguf``), in f32 and
q8_0, and measures in llama.cpp (``llama-cpp-python``, 2 threads): prefill tokens/s of a 128-token
prompt, decode tokens/s over 64 greedy tokens, file size; the ideal ratio (parameters) beside the
measured ones. For the 50% f32 file it also checks that llama.cpp generates exactly the
``transformers`` continuation of the same export (3 prompts x 32 greedy tokens) and the largest
next-token log-probability difference over 64 tokens (f32 K/V cache).

Writes ``benchmarks/results/llamacpp_speed.json``. Run on an otherwise idle machine.

Usage: python benchmarks/llamacpp_speed.py [--run runs/recovery-smollm2/gisp] [--repeats 5] [--results NAME.json]

q8_0 stores rows in blocks of 32 values: a down_proj whose kept channels are not a multiple of 32
is written as f16 instead, so q8_0 files of unrounded levels are larger than their parameter
ratio. A run with ``--round-to 32`` (``benchmarks/speed.py --sections inference-round32`` makes
``runs/speed/round32``) keeps every tensor in q8_0:

    python benchmarks/llamacpp_speed.py --run runs/speed/round32 --work runs/llamacpp-speed-round32 \
        --results llamacpp_speed-round32.json
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from common import Recorder, environment, write_results

LEVELS = [0.2, 0.3, 0.4, 0.5]
PROMPTS = ["The history of the city begins in", "Q: What is the capital of France?\nA:",
           "def fibonacci(n):\n    "]


def _llama(path: Path, ctx: int = 512):
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=ctx, logits_all=True, verbose=False, n_threads=2, n_batch=512,
                           type_k=0, type_v=0)


def speed(path: Path, prompt: list[int], repeats: int, decode: int = 64) -> dict:
    llm = _llama(path)
    prefill, dec = [], []
    for _ in range(repeats):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill.append(len(prompt) / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(decode):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        dec.append(decode / (time.perf_counter() - start))
    return {"prefill_tokens_per_s": round(statistics.median(prefill), 1),
            "decode_tokens_per_s": round(statistics.median(dec), 1), "file_mb": round(path.stat().st_size / 2**20, 2)}


def gguf_parameters(path: Path) -> int:
    """Parameters stored in a GGUF file (token_embd once; a tied output is not stored)."""
    from gguf import GGUFReader

    return int(sum(int(t.n_elements) for t in GGUFReader(path).tensors))


def gguf_kv_values_per_token(path: Path) -> int:
    """K and V values one token adds to llama.cpp's cache: the output rows of every layer's
    ``attn_k`` and ``attn_v`` (x2 bytes at 16 bits)."""
    from gguf import GGUFReader

    return int(sum(int(t.n_elements) // int(t.shape[0]) for t in GGUFReader(path).tensors
                   if t.name.endswith((".attn_k.weight", ".attn_v.weight"))))


def agreement(gguf: Path, export: Path) -> dict:
    """Greedy continuations and log-probabilities of llama.cpp vs transformers on one export."""
    import torch

    import gisp

    model, tok = gisp.load(str(export))
    llm = _llama(gguf)
    same, rows = True, []
    for text in PROMPTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            hf = model.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                eos_token_id=None, pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        llm.reset()
        llm.eval(ids)
        ours = []
        for _ in range(32):
            ours.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([ours[-1]])
        same &= ours == hf
        rows.append({"prompt": text, "identical": ours == hf, "continuation": tok.decode(hf)})
    ids = tok(" ".join(PROMPTS) * 4)["input_ids"][:64]
    llm.reset()
    llm.eval(ids)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    diff = (torch.tensor(np.array(llm.scores[:64])).log_softmax(-1) - ref).abs().max().item()
    return {"greedy_identical": same, "prompts": rows, "max_logprob_diff_64": diff}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default="runs/recovery-smollm2/gisp")
    ap.add_argument("--work", default="runs/llamacpp-speed")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", default="llamacpp_speed.json",
                    help="file under benchmarks/results (e.g. llamacpp_speed-round32.json for a --round-to 32 run)")
    args = ap.parse_args()
    work = Path(args.work)
    rec = Recorder(work)
    files: dict[str, dict] = {}
    for outtype in ("f32", "q8_0"):
        dense = work / f"dense-{outtype}.gguf"
        if not dense.exists():
            rec.run(["gisp", "convert", "smollm2-135m", "--format", "gguf", "--outtype", outtype, "--out", dense])
        files[f"dense/{outtype}"] = {"path": dense, "sparsity": 0.0}
        for level in LEVELS:
            path = work / f"gisp-{level:g}-{outtype}.gguf"
            if not path.exists():
                rec.run(["gisp", "export", args.run, "--sparsity", f"{level:g}", "--format", "gguf", "--outtype", outtype,
                         "--out", path])
            files[f"{level:g}/{outtype}"] = {"path": path, "sparsity": level}
    export = work / "gisp-0.5-hf"
    if not export.exists():
        rec.run(["gisp", "export", args.run, "--sparsity", "0.5", "--out", export])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    prompt = tok(" ".join(PROMPTS) * 20)["input_ids"][:128]
    rows = {}
    for key, item in files.items():
        rows[key] = {"sparsity": item["sparsity"], "outtype": key.split("/")[1]} | speed(item["path"], prompt, args.repeats)
        print(key, rows[key], flush=True)
    for key, item in files.items():
        rows[key]["parameters"] = gguf_parameters(item["path"])
        rows[key]["kv_bytes_per_token"] = 2 * gguf_kv_values_per_token(item["path"])  # at 16 bits
    for key, row in rows.items():
        base = rows[f"dense/{row['outtype']}"]
        row["prefill_speedup"] = round(row["prefill_tokens_per_s"] / base["prefill_tokens_per_s"], 3)
        row["decode_speedup"] = round(row["decode_tokens_per_s"] / base["decode_tokens_per_s"], 3)
        row["file_ratio"] = round(row["file_mb"] / base["file_mb"], 3)
        row["ideal_ratio"] = round(row["parameters"] / base["parameters"], 3)  # parameters kept (what speed could follow)
        row["ideal_speedup"] = round(base["parameters"] / row["parameters"], 3)
    check = agreement(files["0.5/f32"]["path"], export)
    print("agreement", check, flush=True)
    write_results(args.results, {
        "rows": rows, "agreement_50_f32": check,
        "protocol": {"run": args.run, "prompt_tokens": len(prompt), "decode_tokens": 64, "repeats": args.repeats,
                     "threads": 2, "kv_cache": "f32", "engine": f"llama-cpp-python {_version()}"},
        "commands": rec.commands, "environment": environment(),
        "note": "ideal_ratio: parameters kept / dense (embeddings included), ideal_speedup its inverse",
    })


def _version() -> str:
    import llama_cpp

    return llama_cpp.__version__


if __name__ == "__main__":
    main()

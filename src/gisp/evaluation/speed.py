"""Inference speed: prefill and decode throughput and peak memory of one model.

Each model is measured in its own child process (``python -m gisp.evaluation.speed``) so its
peak memory (resident set on CPU, ``torch.cuda.max_memory_allocated`` on GPU) is its own. Timings:
warm-up runs, then the median of several repeats.

- prefill: one forward over ``batch x seq_len`` random tokens, no cache, logits of the last
  position only (as ``generate`` prefills) -> tokens/s;
- forward: the same with logits of every position (as scoring or perplexity runs) -> tokens/s;
- decode: after a prefill of the same prompt, ``new_tokens`` greedy single-token steps with the KV
  cache -> generated tokens/s (the prefill is not timed).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from gisp.errors import GispError
from gisp.evaluation.kvcache import cache_kwargs, returned_cache


@dataclass
class SpeedResult:
    model: str
    parameters: int
    batch: int
    seq_len: int
    new_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    peak_memory_mb: float
    device: str
    threads: int
    forward_tokens_per_s: float | None = None  # every position's logits (scoring, perplexity)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def _prefill(model: nn.Module, ids: torch.Tensor, all_logits: bool = False) -> float:
    """Seconds of one cache-less forward: logits of the last position (``generate``'s prefill),
    or of every position with ``all_logits``."""
    _sync(ids.device)
    start = time.perf_counter()
    model(input_ids=ids, use_cache=False, logits_to_keep=0 if all_logits else 1)
    _sync(ids.device)
    return time.perf_counter() - start


@torch.no_grad()
def _decode(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    out = model(input_ids=ids, use_cache=True)
    past, token = returned_cache(out), out.logits[:, -1:].argmax(-1)
    (name,) = cache_kwargs(model, None)  # inspected once, outside the timed loop
    _sync(ids.device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, use_cache=True, **{name: past})
        past, token = returned_cache(out), out.logits[:, -1:].argmax(-1)
    _sync(ids.device)
    return time.perf_counter() - start


def measure(model: nn.Module, name: str, *, batch: int, seq_len: int, new_tokens: int, repeats: int, warmup: int) -> SpeedResult:
    """Median prefill and decode throughput of ``model`` (call in a fresh process for memory)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)
    for _ in range(warmup):
        _prefill(model, ids)
        _prefill(model, ids, all_logits=True)
        _decode(model, ids, min(new_tokens, 4))
    prefill = statistics.median(_prefill(model, ids) for _ in range(repeats))
    forward = statistics.median(_prefill(model, ids, all_logits=True) for _ in range(repeats))
    decode = statistics.median(_decode(model, ids, new_tokens) for _ in range(repeats))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return SpeedResult(
        model=name, parameters=sum(p.numel() for p in model.parameters()), batch=batch, seq_len=seq_len,
        new_tokens=new_tokens, prefill_tokens_per_s=batch * seq_len / prefill,
        decode_tokens_per_s=batch * new_tokens / decode, forward_tokens_per_s=batch * seq_len / forward, peak_memory_mb=peak, device=str(device),
        threads=torch.get_num_threads(),
    )


def measure_in_subprocess(model: str, *, batch: int, seq_len: int, new_tokens: int, repeats: int, warmup: int,
                          dtype: str = "float32", device: str = "cpu") -> SpeedResult:
    """Run :func:`measure` on ``model`` (a spec or directory) in a child process."""
    cmd = [sys.executable, "-m", "gisp.evaluation.speed", model, "--batch", str(batch), "--seq-len", str(seq_len),
           "--new-tokens", str(new_tokens), "--repeats", str(repeats), "--warmup", str(warmup),
           "--dtype", dtype, "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["no output"]
        raise GispError(f"speed measurement of {model} failed: {lines[-1].removeprefix('gisp: error: ')}")
    return SpeedResult(**json.loads(proc.stdout.strip().splitlines()[-1]))


def _main() -> int:
    from gisp import models

    ap = argparse.ArgumentParser(prog="python -m gisp.evaluation.speed")
    ap.add_argument("model")
    for flag, default in (("--batch", 1), ("--seq-len", 128), ("--new-tokens", 32), ("--repeats", 5), ("--warmup", 1)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    try:
        model, _ = models.load(args.model, args.dtype, args.device)
        result = measure(model, args.model, batch=args.batch, seq_len=args.seq_len, new_tokens=args.new_tokens,
                         repeats=args.repeats, warmup=args.warmup)
    except GispError as exc:
        print(f"gisp: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(_main())

"""What does the layout of per-token cross-entropy cost on a CPU? (the answer and margin objectives,
``answer_ppl`` and ``mc`` evaluation all take one CE per scored token over a 150K vocabulary)

    python benchmarks/cross_entropy_layout.py    # about a minute

``F.cross_entropy(logits.transpose(1, 2), targets)`` (class dimension 1 of a [B, V, T] view, how the
objectives took it until this benchmark) against ``F.cross_entropy(logits.reshape(B*T, V), ...)``
(:func:`gisp.objectives.per_token_ce`): forward alone and forward + backward, float32, the fastest of
3 after a warm-up, at Qwen2.5's vocabulary (151,936) and SmolLM2's (49,152); the largest difference of
the two results is recorded too (they compute the same thing).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from common import environment, write_results

from gisp.objectives import per_token_ce

SHAPES = {"qwen2.5 (V=151936)": (2, 300, 151936), "smollm2 (V=49152)": (4, 300, 49152)}


def transposed(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [B, V, T] -> [B, T]


def fastest(fn, logits: torch.Tensor, targets: torch.Tensor, backward: bool) -> float:
    """Seconds of the fastest of 3 runs after one warm-up."""
    times = []
    for _ in range(4):
        x = logits.detach().clone().requires_grad_(backward)
        start = time.perf_counter()
        out = fn(x, targets)
        if backward:
            out.sum().backward()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    torch.manual_seed(0)
    rows = {}
    for name, (b, t, v) in SHAPES.items():
        logits, targets = torch.randn(b, t, v), torch.randint(0, v, (b, t))
        row = {"shape": [b, t, v],
               "max_abs_difference": float((transposed(logits, targets) - per_token_ce(logits, targets)).abs().max())}
        for backward in (False, True):
            what = "forward_backward" if backward else "forward"
            row[f"{what}_s_transposed"] = fastest(transposed, logits, targets, backward)
            row[f"{what}_s_flat"] = fastest(per_token_ce, logits, targets, backward)
            row[f"{what}_speedup"] = row[f"{what}_s_transposed"] / row[f"{what}_s_flat"]
        rows[name] = row
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    write_results("cross_entropy_layout.json", {"command": "python benchmarks/cross_entropy_layout.py",
                                                "environment": environment(), "shapes": rows,
                                                "note": "measured while a GSM8K evaluation ran on the same 2 cores: "
                                                        "the ratios, not the seconds, are the finding"})


if __name__ == "__main__":
    main()

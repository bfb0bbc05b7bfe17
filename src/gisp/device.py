"""Where a run computes: ``--device cpu|cuda|cuda:N|auto``, resolved once, checked before any loading.

``auto`` is CUDA when this torch build sees a GPU, else the CPU. Under ``torchrun`` (``WORLD_SIZE``
> 1) ``cuda`` and ``auto`` mean each rank's own GPU, ``cuda:LOCAL_RANK``, and the process group
uses NCCL (:func:`gisp.distributed.init_from_env`); a fixed ``cuda:N`` would put every rank on one
GPU and is refused there. Run files are written from CPU copies, so a run resumes on any device.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from gisp.errors import GispError

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "cpu, cuda, cuda:N, mps or auto (CUDA when available, else CPU; under torchrun each rank's own GPU)"
_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    """What a CUDA allocation failure raises (``torch.OutOfMemoryError`` is its public name from
    torch 2.5). A function, so that checking a spec imports no torch (``gisp --help`` stays fast)."""
    import torch

    return (torch.cuda.OutOfMemoryError,)


def check_spec(spec: str) -> str:
    """``spec`` if it names a device gisp can use, else a one-line error (no CUDA needed to check)."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise GispError(f"unknown device {spec!r}; choose from {DEVICE_HELP}")
    return spec


def resolve(spec: str) -> torch.device:
    """The device ``spec`` means on this machine and in this process; a one-line error when it
    asks for a GPU this process cannot have (no CUDA build, no GPU, an index past the last one)."""
    import torch

    check_spec(spec)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if spec == "mps":
        if not torch.backends.mps.is_available():
            raise GispError("--device mps: this machine has no Apple GPU (torch.backends.mps); use --device cpu or auto")
        return torch.device("mps")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec == "auto" and launched and int(os.environ.get("LOCAL_RANK", "0")) >= torch.cuda.device_count():
        return torch.device("cpu")  # more ranks than visible GPUs (or one GPU per task): gloo on the CPU, as before
    if not torch.cuda.is_available():
        build = "this torch build has no CUDA" if torch.version.cuda is None else "CUDA sees no GPU on this machine"
        raise GispError(f"--device {spec}: {build} (torch {torch.__version__}); use --device cpu or auto")
    count = torch.cuda.device_count()
    if spec in ("cuda", "auto"):
        index = int(os.environ.get("LOCAL_RANK", "0")) if launched else torch.cuda.current_device()
    elif launched:
        raise GispError(f"--device {spec} under torchrun would put every rank on one GPU; use --device cuda "
                        "(each rank takes the GPU of its LOCAL_RANK)")
    else:
        index = int(spec.split(":")[1])
    if index >= count:
        raise GispError(f"--device cuda:{index}: this machine has {count} GPU{'s' if count != 1 else ''} "
                        f"(cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)

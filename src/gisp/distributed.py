"""Data-parallel scoring on ``torch.distributed``: who this process is, its share of the
calibration batches, and sums across processes.

``torchrun --nproc-per-node N -m gisp prune ...`` (or ``accelerate launch``) starts N processes
that each hold the whole model. Each scores its share of the calibration batches (every N-th
batch), and the per-batch sums (gradients, Fisher moments, input statistics, losses) are
all-reduced before any score is formed, so every rank ranks the same scores and removes the same
structures. Only rank 0 writes the run directory. The backend is NCCL when the run's device is a
GPU (one per rank, from ``LOCAL_RANK``), gloo on the CPU. Without a launcher
(no ``WORLD_SIZE`` in the environment) every function here is the single-process identity.

With ``--fsdp`` the ranks also split the model: :func:`shard_parameters` applies FSDP2's
``fully_shard`` to every decoder layer and the root, so each rank keeps 1/N of every parameter
(dim 0) and gathers a layer's weights only while that layer runs. Weight edits (masks,
compensation biases) go through :func:`local_rows`: each rank edits the rows it holds. Weight
gradients (first-order scores) are FSDP's own: reduce-scattered, so each rank holds the gradient of
its rows only, scores its rows' part of every ``o_proj`` / ``down_proj`` column and the q/k/v/gate/up
rows it holds (``--taylor-weights all``), and the per-structure partial sums are all-reduced.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from gisp.errors import GispError

T = TypeVar("T")


def init_from_env(device: torch.device | None = None) -> bool:
    """Join the process group a launcher describes (``WORLD_SIZE`` > 1); True when distributed.

    On a GPU (``device`` of type cuda, one per rank: :func:`gisp.device.resolve`) the backend is
    NCCL, with this rank's GPU made current so collectives and FSDP place their tensors there;
    otherwise gloo, which reduces CPU tensors. Idempotent.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise GispError("WORLD_SIZE is set but this torch build has no torch.distributed")
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    return True


def close() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes files and shows progress (rank 0)."""
    return rank() == 0


def shard(items: Sequence[T], empty_ok: bool = False) -> list[T]:
    """This rank's share: every ``world_size``-th item from its rank (all of them when alone).

    Refuses fewer items than ranks, since a rank with nothing to score would have no statistics to
    reduce beside the others'; ``empty_ok`` for sums that are zero when empty (forward losses).
    """
    size = world_size()
    if len(items) < size and not empty_ok:
        raise GispError(f"{len(items)} calibration batches cannot be shared by {size} processes; "
                        "use more --samples or fewer processes")
    return list(items[rank()::size])


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over all ranks, in place, in its own dtype (float32 gradients, float64
    statistics). A no-op alone."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)


def sum_float(value: float) -> float:
    """A Python float summed over all ranks (in float64)."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable; gisp's own values, never user input), in rank order."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def shard_parameters(model: torch.nn.Module, layers: Sequence[torch.nn.Module]) -> None:
    """FSDP2 over all ranks: each of ``layers`` its own unit (gathered for its forward and
    backward, then freed), the rest (embeddings, final norm, lm_head) the root's. In place.
    Parameters keep their dtype (e.g. bfloat16); weight gradients are reduce-scattered in float32
    (then stored in the parameters' dtype, once per backward, and summed in float32 by the caller)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(_device().type, (world_size(),))
    policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)  # weights stay in the run's dtype; gradients reduce in fp32
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def local_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The rows of ``tensor`` this rank holds (a view: writes reach the parameter) and the global
    index of the first: the whole tensor and 0 unless FSDP sharded it (dim 0, in torch.chunk's
    split: ceil(n / N) rows a rank)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(tensor, DTensor):
        return tensor, 0
    local = tensor.to_local()
    per = -(-tensor.shape[0] // tensor.device_mesh.size())
    return local, min(tensor.device_mesh.get_local_rank() * per, tensor.shape[0])


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether FSDP split ``tensor`` over the ranks (a DTensor)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def _device() -> torch.device:
    """Where collectives' tensors live: the rank's GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

"""Process-group setup for ``torchrun``: one code path for 1 process and for N.

Under ``torchrun`` the environment carries RANK/WORLD_SIZE/LOCAL_RANK; we then join the group with
gloo on the CPU and nccl on CUDA. Without it everything here degrades to no-ops with rank 0 of 1,
so the trainer never branches on "am I distributed" except through :class:`DistContext`.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

DIST_BN = ("reduce", "broadcast", "none")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank, the number of processes and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda`` (this process's GPU under torchrun) or ``cuda:N``; a missing GPU is an error."""
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device!r} was asked for, but CUDA is not available on this machine")
        if device == "cuda":
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device(device)
    raise ValueError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def init_distributed(device: str) -> DistContext:
    """Join the torchrun process group if there is one (gloo for CPU, nccl for CUDA)."""
    if not launched_by_torchrun():
        return DistContext(rank=0, world_size=1, local_rank=0, device=resolve_device(device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
            dist.init_process_group("nccl", device_id=dev)
        else:
            dist.init_process_group("gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown(ctx: DistContext, finished: bool = True) -> None:
    """Leave the process group and let its gloo/nccl threads end while the interpreter is still alive.

    The group's worker threads drop the last reference to finished collectives (their tensors are
    Python objects) and so need the GIL. If the group outlives the interpreter (DDP's reducer keeps
    it alive inside reference cycles until the final garbage collection), a worker that wants the GIL
    during finalisation is killed by the interpreter and the process aborts with "terminate called
    without an active exception" (seen in a core dump: ``AsyncAllgatherWork`` destroyed in
    ``ProcessGroupGloo::runLoop``, main thread in ``Py_FinalizeEx``). So: wait for every rank (no
    connection closes under a peer still talking), destroy the group, and collect the cycles now,
    so the group's destructor joins its threads here (torch releases the GIL for that). After a
    failure the barrier is skipped: the other ranks may never reach it.
    """
    if not (ctx.distributed and dist.is_initialized()):
        return
    if finished:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank, e.g. so no rank reads a checkpoint before rank 0 has written it."""
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(ctx: DistContext, values: Tensor) -> Tensor:
    """Sum ``values`` over all ranks (in float64 on the compute device, so counts stay exact)."""
    out = values.detach().to(ctx.device, torch.float64)
    if ctx.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def distribute_bn(ctx: DistContext, model: nn.Module, mode: str) -> None:
    """Make batch-norm running statistics equal on every rank (timm's ``distribute_bn``).

    ``reduce`` averages each rank's running mean and variance, ``broadcast`` copies rank 0's,
    ``none`` leaves them per rank. SyncBatchNorm (CUDA) already agrees and is left alone.
    """
    if not ctx.distributed or mode == "none":
        return
    for module in model.modules():
        if not isinstance(module, _BatchNorm) or isinstance(module, nn.SyncBatchNorm):
            continue
        for buffer in (module.running_mean, module.running_var):
            if buffer is None:
                continue
            if mode == "broadcast":
                dist.broadcast(buffer, src=0)
            else:
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(ctx.world_size)


def all_gather_object(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    if not ctx.distributed:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered

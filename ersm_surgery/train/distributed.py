"""Multi-process training with timm's conventions: torchrun's RANK / WORLD_SIZE / LOCAL_RANK.

``torchrun --nproc_per_node=N -m ersm_surgery.cli.main finetune ...`` starts N processes; each calls
:func:`init_distributed`, which uses ``timm.utils.distributed`` to join the process group (nccl on GPU,
gloo on CPU). Only the primary process (rank 0) writes files and reports.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistInfo", "init_distributed", "shutdown", "all_reduce_sum", "all_true", "ranks_agree",
           "broadcast_buffers", "gather_objects", "no_sync"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process runs and its place in the group (a single process is rank 0 of 1)."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def primary(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group when torchrun's environment asks for it (WORLD_SIZE > 1).

    Args:
        device: ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"cpu"`` or None (CUDA when available). Under torchrun
            each process takes the CUDA device of its local rank, whatever ``N`` says.

    Returns:
        This process's :class:`DistInfo`; the group is initialised when ``world_size > 1``.
    """
    from timm.utils.distributed import init_distributed_device_so, is_distributed_env

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = device.partition(":")[0]
    if dist.is_available() and dist.is_initialized():  # started by the caller (tests, notebooks)
        rank, world = dist.get_rank(), dist.get_world_size()
        local = rank % max(1, torch.cuda.device_count()) if kind == "cuda" else rank
        where = torch.device(f"cuda:{local}" if kind == "cuda" else kind)
        return DistInfo(where, rank, local, world)
    if not is_distributed_env():
        return DistInfo(torch.device(device))
    info = init_distributed_device_so(kind)
    _log.info("process %d of %d on %s", info["global_rank"], info["world_size"], info["device"])
    return DistInfo(torch.device(info["device"]), info["global_rank"], info["local_rank"], info["world_size"])


def shutdown(info: DistInfo, started_here: bool = True) -> None:
    """Leave the process group (when this module started it)."""
    if info.distributed and started_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of ``values`` over the group (``values`` itself in a single process)."""
    if info.distributed:
        values = values.to(info.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_true(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` holds on every process (a collective: every rank must call it)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0)


def broadcast_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank, as timm's ``distribute_bn`` does."""
    if info.distributed:
        for buf in model.buffers():
            dist.broadcast(buf.data, 0)


def ranks_agree(model: nn.Module, info: DistInfo) -> bool:
    """Whether every rank holds exactly rank 0's parameters and buffers (a collective)."""
    if not info.distributed:
        return True
    same = True
    for t in [*model.parameters(), *model.buffers()]:
        ref = t.detach().clone()
        dist.broadcast(ref, 0)
        same = same and bool(torch.equal(ref, t.detach()))
    return all_true(same, info)


def gather_objects(obj, info: DistInfo) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def no_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """DDP's ``no_sync`` while accumulating gradients over micro-batches (a no-op otherwise)."""
    if skip and isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    else:
        yield

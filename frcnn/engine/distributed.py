"""torch.distributed set-up from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU); a no-op when run plainly."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # Launched by SLURM (e.g. hydra-submitit-launcher, one task per GPU): submitit derives the
        # torchrun-style variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) from SLURM's.
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def agree_across_ranks(flags: list[bool], values: list[float], device: torch.device) -> list:
    """``[*flags AND-ed over ranks, *values summed over ranks]`` in one all-reduce, so every rank takes
    the same branch (and a count of, e.g., unreadable images is compared globally, not per rank).

    Counts come back as ``int`` when given as ``int``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [*flags, *values]
    # One SUM all-reduce for everything: a flag is True on every rank iff its sum is the world size.
    t = torch.tensor([1.0 if f else 0.0 for f in flags] + [float(v) for v in values], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    world = dist.get_world_size()
    sums = t.tolist()
    agreed_flags = [v == world for v in sums[: len(flags)]]
    agreed_values = [int(round(v)) if isinstance(given, int) else v for v, given in zip(sums[len(flags):], values)]
    return agreed_flags + agreed_values


def gather_objects(obj: Any) -> list[Any]:
    """``[obj_rank0, obj_rank1, ...]`` on every rank (``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def ddp_broadcasts_buffers(model: torch.nn.Module) -> bool:
    """Whether DDP must broadcast rank 0's buffers each step: only if some BatchNorm updates running
    statistics (trainable ``BatchNorm2d`` without SyncBatchNorm). Frozen BN (``FrozenBatchNorm2d``,
    which frozen stages always use) and GroupNorm have no buffers that change."""
    return any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm)
        and m.track_running_stats
        for m in model.modules()
    )


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

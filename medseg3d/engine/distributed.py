"""Training on several processes with torch DistributedDataParallel, started by torchrun.

``torchrun --nproc_per_node N -m medseg3d train CONFIG`` (or ``medseg3d train CONFIG --nproc N``) starts N
processes; each finds its rank in the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), joins the process group (NCCL on GPUs, gloo on CPUs), trains on its own seeded batches (seed +
rank) and averages gradients with the others. Rank 0 alone logs, validates and writes checkpoints; the others
wait for it. A stop (budget, signal) on any rank stops every rank after the same step. Several machines join
through torchrun's rendezvous (``--nnodes``, ``--rdzv-endpoint``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def from_env(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes in the environment (no-op for one process). Returns the
    ranks and the device this rank trains on (its own GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # (the other ranks wait while rank 0 validates: a generous timeout)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return Dist(rank, world, local), device


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any one (so all ranks stop after the same step)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj`` (in rank order), on every rank."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def finish(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m medseg3d ARGV`` on ``nproc`` local processes through torchrun; returns the exit code."""
    from torch.distributed.run import main as torchrun

    args = [f"--nproc_per_node={nproc}", "--standalone", "-m", "medseg3d", *argv]
    os.environ.setdefault("MEDSEG3D_STARTED", repr(time.monotonic()))  # the budget counts from here
    try:
        torchrun(args)
    except SystemExit as e:
        return int(e.code or 0)
    except Exception as e:  # torchrun raises ChildFailedError when a rank fails
        print(f"error: a training process failed ({type(e).__name__}); its own error is printed above",
              file=sys.stderr)
        return 1
    return 0

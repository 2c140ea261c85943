"""Several processes, one run: the bits of ``torch.distributed`` yolodet uses, for runs started by ``torchrun``.

yolodet writes no launcher: ``torchrun --nproc_per_node N -m yolodet train ...`` (or ``--nnodes``/``--node-rank``
with a c10d ``--rdzv-endpoint``) starts the processes and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
:func:`init_from_env` joins them (NCCL on CUDA, gloo on the CPU). Without those variables everything here is a
no-op and a run is the plain one-process run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from yolodet.errors import YolodetError

log = logging.getLogger(__name__)

__all__ = ["TIMEOUT_S", "DistributedError", "World", "all_gather", "current_world", "init_from_env", "shard"]

TIMEOUT_S = 300
"""How long a collective waits for a rank before the run fails (a rank that died ends the run in this time at
most; torchrun's agent usually ends it sooner, when it sees the dead process)."""

T = TypeVar("T")


class DistributedError(YolodetError, RuntimeError):
    """A distributed setting that cannot work (the message says which)."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0


def current_world() -> World:
    """The running process group's world, or the one-process world when there is none."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return World()


def init_from_env(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun described in the environment (once); returns the world and the device
    this rank runs on (``cuda:LOCAL_RANK`` for a CUDA run, the CPU otherwise)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s): "
                                   f"start at most that many processes per node")
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
        log.info("rank %d of %d (local %d) joined the %s process group on %s", dist.get_rank(), size, local_rank,
                 backend, device)
    return current_world(), device


def shard(items: Sequence[T], world: World) -> list[T]:
    """This rank's share of ``items``: every ``size``-th item from ``rank`` on (the order is kept)."""
    return list(items[world.rank::world.size])


def all_gather(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if world.size == 1:
        return [obj]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, obj)
    return gathered

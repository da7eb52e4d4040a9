"""Data-parallel training under torchrun: process group, data shards, agreement between ranks.

``torchrun --nproc_per_node=N -m effv2_lib.train ...`` starts N copies of the trainer and tells
each its place through environment variables (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT).
`Ranks.from_environment` joins that group (NCCL on GPUs, gloo on CPUs); without torchrun it is a
group of one and every method here is a no-op, so the trainer has a single code path.

DistributedDataParallel averages gradients, so the ranks' weights stay equal. What it does not
do, and the trainer needs, lives here: giving each rank its own share of the data, taking the
same branch on every rank (a stop request or a non-finite loss seen by one rank), sending
BatchNorm statistics from rank 0 to all, and checking at the end that the weights agree.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .data import CifarSplit
from .runtime import pick_device

__all__ = ["Ranks", "state_digest"]


@dataclass
class Ranks:
    """This process's place in the group: rank r of world_size, on GPU local_rank of its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this object created the process group, and must destroy it

    @classmethod
    def from_environment(cls, device_preference: str | None = None) -> tuple[Ranks, torch.device]:
        """Join the process group torchrun describes (if any); returns it and this rank's device."""
        if dist.is_available() and dist.is_initialized():
            ranks = cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            use_cuda = torch.cuda.is_available() and (device_preference is None
                                                      or device_preference.startswith("cuda"))
            if use_cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl" if use_cuda else "gloo")
            ranks = cls(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)
        else:
            return cls(), pick_device(device_preference)
        device = pick_device(device_preference)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", ranks.local_rank)
        return ranks, device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that prints and writes files."""
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`model` wrapped in DistributedDataParallel (gradients averaged over the ranks), or as is."""
        if not self.enabled:
            return model
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def shard(self, split: CifarSplit, seed: int, equal: bool) -> CifarSplit:
        """This rank's share of `split`: a fixed random partition (of equal sizes when `equal`)."""
        if not self.enabled:
            return split
        n, world = len(split), self.world_size
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        if equal:  # every rank must take the same number of steps, or DDP waits forever
            order = order[: n - n % world]
        rows = order[self.rank::world].sort().values
        return CifarSplit(split.images[rows], split.labels[rows], split.classes, None, split.source)

    def max(self, values: Tensor) -> Tensor:
        """Element-wise maximum over the ranks (in place)."""
        if self.enabled:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values

    def sum(self, values: Tensor) -> Tensor:
        """Element-wise sum over the ranks (in place)."""
        if self.enabled:
            dist.all_reduce(values)
        return values

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank if `flag` is True on any: the ranks must take the same branches."""
        if not self.enabled:
            return flag
        return bool(self.max(torch.tensor(int(flag), device=device)))

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (a picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` (a picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, *modules: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank.

        DDP broadcasts buffers only before a forward pass; after the last training step or a
        BatchNorm re-estimation the ranks' statistics differ until this is called.
        """
        if not self.enabled:
            return
        for module in modules:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


def state_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state_dict (names and bytes): equal digests, equal weights."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()

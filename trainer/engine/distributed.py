"""The process group seen by the engine: one process, or N ranks under torch.distributed.

The engine only needs a handful of collectives; this class gives them one name whether or not
``torch.distributed`` is initialised (torchrun sets it up, ``init_distributed`` joins the group; see ``trainer.service.backend``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist

from .. import settings


class Dist:
    """Rank/world info and the collectives the engine uses (identity on one process)."""

    def __init__(self):
        self.enabled = tdist.is_available() and tdist.is_initialized()
        self.rank = tdist.get_rank() if self.enabled else 0
        self.world_size = tdist.get_world_size() if self.enabled else 1
        self.local_rank = int(os.environ.get("LOCAL_RANK", self.rank))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather_cat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate equally-sized ``tensor`` of every rank along dim 0, in rank order."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        tdist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tensor = tensor.clone()
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tensor = tensor.clone()
            tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()


def init_distributed() -> bool:
    """Initialise torch.distributed from torchrun's environment; False on a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() and not settings.force_gloo() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    tdist.init_process_group(backend)
    return True

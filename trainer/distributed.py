"""The process group seen by the engine: one process, or N ranks under torch.distributed.

The engine only needs a handful of collectives; this class gives them one name whether or not
``torch.distributed`` is initialised (torchrun sets it up; see ``trainer.backend``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


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

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

"""The process group seen by the engine: one process, or N ranks under torch.distributed.

The engine only needs a handful of collectives; this class gives them one name whether or not
``torch.distributed`` is initialised (torchrun sets it up, ``init_distributed`` joins the group; see ``trainer.service.backend``).

Host data (bytes, text embeddings, decoded videos) travels between ranks as CPU tensors over a
gloo group (the default group when it is gloo, else one made once on first use), raw bytes with
their sizes sent first: nothing is pickled.
"""

from __future__ import annotations

import os
from typing import Callable

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

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rank 0's ``tensor`` into every rank's ``tensor`` (in place, same shape and dtype; on the
        default group, so on the GPU with NCCL)."""
        if self.enabled:
            tdist.broadcast(tensor, 0)
        return tensor

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank (the others pass None)."""
        return broadcast_bytes(data, cpu_group()) if self.enabled else data

    def broadcast_host_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``broadcast_`` of a CPU tensor over the gloo group."""
        if self.enabled:
            tdist.broadcast(tensor, 0, group=cpu_group())
        return tensor

    def gather_to_main(self, tensor: torch.Tensor | None, consume: Callable[[torch.Tensor], None]) -> None:
        """Send every other rank's uint8 CPU ``tensor`` to rank 0, one rank at a time in rank order:
        rank 0 (which passes None: its own share is the caller's) calls ``consume`` with each as it
        arrives, so it holds one other rank's tensor at a time. Shapes travel first."""
        if not self.enabled:
            return
        group = cpu_group()
        if self.rank != 0:
            if tensor.dtype != torch.uint8:
                raise TypeError(f"gather_to_main sends uint8 tensors, not {tensor.dtype}")
            tensor = tensor.contiguous()
            header = torch.zeros(_MAX_DIMS + 1, dtype=torch.long)
            header[0] = tensor.ndim
            header[1:tensor.ndim + 1] = torch.tensor(tensor.shape, dtype=torch.long)
            tdist.send(header, 0, group=group)
            tdist.send(tensor, 0, group=group)
            return
        for src in range(1, self.world_size):
            header = torch.zeros(_MAX_DIMS + 1, dtype=torch.long)
            tdist.recv(header, src, group=group)
            part = torch.empty(header[1:int(header[0]) + 1].tolist(), dtype=torch.uint8)
            tdist.recv(part, src, group=group)
            consume(part)
            del part


_MAX_DIMS = 8
_CPU_GROUP: list = []  # the gloo group for host data, made once (when the default group is not gloo)


def cpu_group():
    """The group for CPU tensors: None (the default group) when it is gloo, else a gloo group
    made on the first call, which every rank must make at the same point (a collective)."""
    if tdist.get_backend() == "gloo":
        return None
    if not _CPU_GROUP:
        _CPU_GROUP.append(tdist.new_group(backend="gloo"))
    return _CPU_GROUP[0]


def broadcast_bytes(data: bytes | None, group=None) -> bytes:
    """Rank 0's ``data`` on every rank of ``group`` (the others pass None): its size, then the
    bytes, as uint8 CPU tensors."""
    rank = tdist.get_rank()
    if rank == 0:
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.long)
    else:
        size = torch.zeros(1, dtype=torch.long)
    tdist.broadcast(size, 0, group=group)
    if rank != 0:
        payload = torch.empty(int(size), dtype=torch.uint8)
    if int(size):
        tdist.broadcast(payload, 0, group=group)
    return data if rank == 0 else bytes(payload.numpy())


def init_distributed() -> bool:
    """Initialise torch.distributed from torchrun's environment; False on a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() and not settings.force_gloo() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    tdist.init_process_group(backend)
    return True

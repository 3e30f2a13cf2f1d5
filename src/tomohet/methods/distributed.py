"""What a method needs to know when it runs as one of the processes of a ``torchrun`` job.

Under ``torchrun`` (``torch.distributed`` initialised by :class:`tomohet.parallel.TorchDistributedExecutor`) every
process runs the whole program on the whole dataset: the per-particle passes are split between the processes by
the executor and every process receives every partition's sums, so each continues with the same maps as a serial
run; the networks of the VAEs train data-parallel (:class:`torch.nn.parallel.DistributedDataParallel`, each
process a share of every batch). Only the first process (rank 0) writes files (checkpoints, outputs).
Without ``torch.distributed`` every function here answers as for a single process.
"""

from __future__ import annotations

import os

import torch


def rank_and_size() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside a distributed job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def writes_files() -> bool:
    """Whether this process writes the run's files (rank 0, or a process outside a distributed job)."""
    return rank_and_size()[0] == 0


def local_device(name: str) -> torch.device:
    """The torch device for ``name`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``); a bare ``cuda`` in a distributed
    job is this process' own GPU (``LOCAL_RANK``, as ``torchrun`` sets it)."""
    if name == "cuda" and rank_and_size()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


def sum_over_processes(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the processes of a distributed job (a new tensor, no gradient); ``t`` itself alone."""
    import torch.distributed as dist

    if rank_and_size()[1] == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out

"""Execution of per-particle map/reduce work on Dask (a local cluster on all cores by default, a running
scheduler by address, or SLURM through ``dask-jobqueue``, optional), or across the processes of a ``torchrun``
job (:class:`TorchDistributedExecutor`: one process per GPU or per node; it merges as it goes, ``map_reduce``).

Methods split their particles into fixed partitions and reduce the partial sums in partition order, so a run
gives the same result whichever executor ran the partitions (the reduction order never depends on workers).
Workers x torch threads per worker = the cores: a local cluster of W workers sets ``torch`` to
``cores // W`` threads in each.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any


def _set_threads(n: int) -> int:
    import torch

    torch.set_num_threads(n)
    return torch.get_num_threads()


class DaskExecutor:
    """Runs partitions on Dask workers. ``address`` connects to a scheduler; ``slurm`` (a dict of
    ``dask_jobqueue.SLURMCluster`` arguments plus ``jobs``) starts workers on SLURM; otherwise a local cluster of
    ``n_workers`` processes is started (default: one per 2 cores, at least 2)."""

    def __init__(
        self,
        address: str | None = None,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        slurm: dict[str, Any] | None = None,
    ):
        from dask.distributed import Client, LocalCluster

        cores = os.cpu_count() or 2
        self._cluster = None
        self._dataset: tuple | None = None  # (dataset, its future on the workers)
        if address:
            self.client = Client(address)
        elif slurm is not None:
            try:
                from dask_jobqueue import SLURMCluster
            except ImportError as exc:  # optional dependency
                raise RuntimeError("SLURM execution needs `pip install dask-jobqueue`") from exc
            opts = dict(slurm)
            jobs = int(opts.pop("jobs", 1))
            self._cluster = SLURMCluster(**opts)
            self._cluster.scale(jobs=jobs)
            self.client = Client(self._cluster)
        else:
            n = n_workers or max(2, cores // 2)
            threads = threads_per_worker or max(1, cores // n)
            self._cluster = LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
            )
            self.client = Client(self._cluster)
            self.client.run(_set_threads, threads)

    def map_partitions(
        self,
        fn: Callable,
        dataset,
        partitions: Sequence,
        state,
        progress: Callable[[int], None] | None = None,
    ) -> list:
        """``[fn(dataset, p, state) for p in partitions]`` on the workers, results in partition order."""
        from dask.distributed import as_completed

        # unique keys (hash=False): re-scattering equal data under the same key lets the release of an earlier
        # future drop data a later one depends on ("lost dependencies"); the dataset is sent once per executor
        if self._dataset is None or self._dataset[0] is not dataset:
            self._dataset = (dataset, self.client.scatter(dataset, broadcast=True, hash=False))
        ds_f = self._dataset[1]
        st_f = self.client.scatter(state, broadcast=True, hash=False)
        futures = [self.client.submit(fn, ds_f, p, st_f, pure=False) for p in partitions]
        sizes = {f.key: len(p) for f, p in zip(futures, partitions, strict=True)}
        for f in as_completed(futures):
            if progress:
                progress(sizes[f.key])
        return self.client.gather(futures)

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TorchDistributedExecutor:
    """Runs partitions across the processes of a ``torchrun`` job (``torch.distributed``, gloo backend: the
    partial sums are CPU tensors). Every process runs the whole program; partition ``p`` runs on rank
    ``p mod world``, and every process receives every partition's result, in partition order
    (``all_gather_object``), so each reduces the same sums in the same order as a serial run and continues with
    the same maps. Where a method trains networks, :mod:`tomohet.methods.distributed` makes the training
    data-parallel over the same processes. Only rank 0 writes files and shows progress. Partitions go out in
    rounds of one per process, so a dataset of fewer partitions than processes leaves some idle: the partition
    size (``partition_size``, fixed so that results do not depend on the process count) sets the granularity."""

    runs_here = True  # partitions run in this process (with the method's spectra cache)

    def __init__(self, timeout_min: float = 60.0):
        import datetime

        import torch.distributed as dist

        self._owns = not dist.is_initialized()
        if self._owns:  # the rendezvous comes from torchrun's environment (MASTER_ADDR, RANK, WORLD_SIZE ...)
            dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=timeout_min))
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def map_reduce(self, fn: Callable, dataset, partitions: Sequence, state, progress=None, cache=None):
        """``fn(dataset, p, state, cache, progress)`` over ``partitions`` in rounds of one partition per process,
        every round's sums gathered to every process and merged in partition order (``sums.merge``): the serial
        reduction, with one round's sums in memory at a time."""
        import torch.distributed as dist

        total = None
        for lo in range(0, len(partitions), self.size):
            round_ = partitions[lo : lo + self.size]
            mine = fn(dataset, round_[self.rank], state, cache, progress) if self.rank < len(round_) else None
            gathered: list = [None] * self.size
            dist.all_gather_object(gathered, mine)
            for r in gathered[: len(round_)]:
                total = r if total is None else total.merge(r)
            if progress:  # the other processes' partitions of this round
                progress(sum(len(p) for j, p in enumerate(round_) if j != self.rank))
        return total

    def close(self) -> None:
        import torch.distributed as dist

        if self._owns and dist.is_initialized():
            dist.destroy_process_group()


def in_torchrun() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1

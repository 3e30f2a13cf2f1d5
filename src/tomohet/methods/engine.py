"""The iterate/stop loop every iterative method runs, written once (as scikit-learn's ``BaseMixture.fit``).

A model fills in one step and its state; the engine runs the steps with the annealing schedule, times and
logs each one with the same keys for every method, checkpoints after each step (atomically, with the run's
fingerprint: :mod:`.checkpoint`), stops on convergence, and records convergence so that rerunning a finished
run changes nothing. The starts (difference PCA, random subsets, given maps) live in
:func:`initial_labels`; the E-step map/reduce over partitions in :mod:`.partitions`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..physics.likelihood import SpectraCache
from .checkpoint import save_checkpoint
from .iteration import anneal_temperature, stage_ticker

INITS = ("pca", "ppca", "random", "maps")  # ppca: em2d only (methods.ppca.ppca_start_labels)


class IterativeModel(Protocol):
    """What :func:`run_iterations` needs of a model."""

    log: list[dict[str, Any]]

    def iterate(self, temperature: float, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """One step over all particles; returns its log entry (at least ``changes``: the fraction of particles
        whose class or latent moved)."""
        ...

    def state(self, iteration: int, finished: bool = False) -> dict[str, Any]:
        """Everything the next step needs, for a checkpoint."""
        ...


def run_iterations(
    model: IterativeModel,
    *,
    n_iter: int,
    start: int = 0,
    finished: bool = False,
    anneal_start: float = 1.0,
    tol_changes: float = 0.001,
    n_particles: int,
    n_images: int,
    progress: Callable[[str, int, int], None] | None = None,
    checkpoint: Path | None = None,
    fingerprint: dict[str, Any] | None = None,
    schedule: Callable[[int], float] | None = None,
    final_temperature: float = 1.0,
    stage: str = "",
) -> None:
    """Run ``model.iterate`` from iteration ``start`` (0-based) up to ``n_iter`` at the annealing temperature
    (:func:`~.iteration.anneal_temperature`); stop when fewer than ``tol_changes`` of the particles change
    (after 3 iterations, at ``final_temperature``). ``schedule(iteration)`` replaces the annealing schedule (e.g.
    hill climbing's cooling to 0); ``stage`` prefixes the progress label. Each log entry gets ``iteration``
    (1-based), ``seconds``, ``images_per_s`` (tilt images or subtomograms) and ``particles_per_s``. A
    ``finished`` run (resumed from a converged checkpoint) does nothing."""
    if finished:
        return
    for it in range(start, n_iter):
        temp = anneal_temperature(it, n_iter, anneal_start) if schedule is None else schedule(it)
        ti = time.perf_counter()
        entry = model.iterate(temp, stage_ticker(progress, f"{stage}iteration {it + 1}/{n_iter}", n_particles))
        dt = max(time.perf_counter() - ti, 1e-9)
        entry.update(iteration=it + 1, seconds=round(dt, 3), images_per_s=round(n_images / dt, 1),
                     particles_per_s=round(n_particles / dt, 1))  # fmt: skip
        model.log.append(entry)
        converged = it >= 2 and temp == final_temperature and entry["changes"] < tol_changes
        if checkpoint is not None and fingerprint is not None:
            save_checkpoint(checkpoint, {**model.state(it + 1, converged), "n_iter": n_iter}, fingerprint)
        if converged:
            break


def is_finished(state: dict[str, Any] | None, n_iter: int) -> bool:
    """Whether a resumed checkpoint ``state`` is a run that converged with the same iteration limit (rerunning the
    same command then changes nothing; a higher limit continues it)."""
    return state is not None and bool(state.get("finished")) and state.get("n_iter") == n_iter


def initial_labels(
    init: str,
    n_particles: int,
    n_classes: int,
    seed: int,
    pca: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
) -> np.ndarray:
    """Initial classes ``[N]`` for the label starts: ``"random"`` (seeded random subsets) or ``"pca"`` (calls
    ``pca()``, e.g. :func:`~.difference_pca.pca_kmeans` of the difference features). ``"maps"`` has no labels."""
    if init == "random":
        return np.random.default_rng(seed).integers(0, n_classes, n_particles)
    if init == "pca" and pca is not None:
        return pca()[0]
    raise ValueError(f"unknown init {init!r} ({', '.join(INITS)})")


def mixture_log_likelihood(log_likelihood: np.ndarray, priors: np.ndarray) -> float:
    """``sum_i log sum_k pi_k p(X_i | k)`` of per-particle class log-likelihoods ``[N, K]`` and priors ``[K]``
    (log-sum-exp; priors floored at 1e-12)."""
    lp = log_likelihood + np.log(np.maximum(priors, 1e-12))
    top = lp.max(1, keepdims=True)
    return float((top[:, 0] + np.log(np.exp(lp - top).sum(1))).sum())


def runs_here(executor) -> bool:
    """Whether ``executor`` runs partitions in this process (then a method keeps its spectra cache)."""
    return executor is None or bool(getattr(executor, "runs_here", False))


def map_partitions(
    step: Callable, dataset, state: Any, partition_size: int, executor=None, cache: SpectraCache | None = None,
    progress: Callable[[int], None] | None = None,
):  # fmt: skip
    """Map ``step(dataset, particles, state, cache, progress) -> sums`` over fixed partitions of the particles
    and reduce the sums in partition order (``sums.merge(other)``).

    ``executor`` (``tomohet.parallel``) runs the partitions elsewhere (e.g. on Dask workers, or a share of them in
    each process of a torchrun job); without one they run here, reusing ``cache``. The partitions and the order
    of the reduction are the same either way, so serial and distributed runs give the same result. Here and under
    torchrun each partition's sums are merged as soon as the ones before it are (memory: one partition's sums
    per process at a time, not all of them)."""
    parts = list(dataset.chunks(partition_size))
    if executor is not None and runs_here(executor):  # torchrun: this process runs a share, with its cache
        return executor.map_reduce(step, dataset, parts, state, progress, cache=cache)
    if executor is None:
        results = (step(dataset, idx, state, cache, progress) for idx in parts)
    else:
        results = iter(executor.map_partitions(step, dataset, parts, state, progress))
    total = next(results)
    for r in results:
        total = total.merge(r)
    return total


def best_of_starts(
    model, starts: dict[str, Any], begin: Callable[[Any], None], *, n_short: int, n_iter: int, anneal_start: float,
    n_images: int, progress=None, info: dict,
) -> dict:  # fmt: skip
    """Run ``n_short`` iterations of ``model`` from each start (``begin(start)`` puts the model at it) and return
    the state (``model.state``) of the one with the highest final log-likelihood; ``info`` gets every start's
    log-likelihood (``start_log_likelihoods``) and the chosen start's name (``start``). Annealing follows the
    whole run's schedule (``n_iter``, ``anneal_start``). The caller loads the returned state."""
    best: tuple[float, str, dict] | None = None
    scores = {}
    for name, start in starts.items():
        begin(start)
        model.log = []
        run_iterations(model, n_iter=n_short, n_particles=model.ds.n_particles, n_images=n_images, progress=progress,
                       schedule=lambda it: anneal_temperature(it, n_iter, anneal_start),
                       stage=f"start {name}: ")  # fmt: skip
        scores[name] = round(model.log[-1]["log_likelihood"], 1)
        if best is None or scores[name] > best[0]:
            best = (scores[name], name, model.state(len(model.log)))
    if best is None:
        raise ValueError("no start to try")
    info["start_log_likelihoods"] = scores
    info["start"] = best[1]
    return best[2]

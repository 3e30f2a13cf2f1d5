"""Stochastic hill climbing with simulated annealing, several independent runs and consistency cleaning.

The classification scheme of STOPGAP (Wan, Khavnekar & Wagner 2024, "STOPGAP: an open-source package for
template matching, subtomogram alignment and classification", Acta Cryst. D 80:336-349), on tomohet's 2D tilt
stacks and likelihood (the E-step of :mod:`tomohet.methods.em2d`): every particle is a hard member of one class.
Each iteration, per particle with current class ``c``, the other classes are visited in a random order; the
first class ``k`` with a higher log-likelihood, ``ll[k] > ll[c]``, is taken (stochastic hill climbing: the first
improvement, not the best one). With simulated annealing, each non-improving candidate met on the way is taken
instead with an acceptance probability set by a temperature that is lowered over the iterations; if no
candidate is taken the particle stays. Two acceptance rules:

- ``"stopgap"`` (STOPGAP's): a fixed probability ``p = T`` (STOPGAP gives it in percent) per non-improving
  candidate, whatever the likelihood difference;
- ``"metropolis"``: ``p = exp((ll[k] - ll[c]) / (T * scale))`` with ``scale`` the median ``|ll[k] - ll[c]|``
  over particles and classes of the previous iteration (a robust per-dataset spread, so ``T`` is unitless);
  the first iteration, which has no previous one, is a pure hill-climbing step.

The random numbers of particle ``i`` come from a counter-based hash of ``(seed, run, iteration, i)``, so labels do
not depend on how particles are partitioned or where partitions run. The reference maps are rebuilt each
iteration from the hard assignments with the EM M-step (Wiener-regularised weighted insertion, noise power per
shell re-estimated, class differences filtered by half-set agreement and confined to em2d's variability mask,
computed once from the difference features whatever the start), via :meth:`EMClassifier.iterate` with this
module's assignment rule.

Several runs (different seeds: random initial labels as in STOPGAP, or k-means on the difference-PCA features
with different k-means seeds) are matched to run 0 and combined by :mod:`tomohet.methods.consistency`: consensus
labels (majority vote) and per-particle consistency (fraction of runs agreeing with it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..physics.reconstruct import reconstruct
from .checkpoint import load_checkpoint, run_fingerprint, save_checkpoint
from .consistency import consistency, label_permutation, match_runs, vote_fractions
from .difference_pca import difference_features, feature_resolution, pca_kmeans
from .em2d import TAU2_FUDGE, EMClassifier, EMOptions, auto_resolution_limit, initial_sigma2
from .engine import run_iterations
from .kmeans import kmeans
from .result import Result
from .variability import variability_map, variability_mask


@dataclass
class HillClimbOptions:
    """Options of :func:`classify_hillclimb`. Resolutions in Angstrom, doses in e/A^2; temperatures unitless."""

    n_classes: int = 4
    n_iter: int = 10
    n_runs: int = 3
    init: str = "random"  # "random" (random labels, as STOPGAP) or "pca" (difference PCA + k-means, em2d)
    acceptance: str = "stopgap"  # "stopgap": fixed probability T per downhill candidate; "metropolis"
    temperature: float = 0.1  # initial temperature (stopgap: a probability in [0, 1])
    cooling: str = "linear"  # "linear": T0 * (1 - it / cooling_iters), 0 after; "geometric": T0 * factor^it
    cooling_iters: int | None = None  # linear cooling reaches 0 at this iteration (default n_iter // 2)
    cooling_factor: float = 0.5  # geometric cooling; T below 1e-3 * T0 counts as 0
    seed: int = 0
    init_lowpass_A: float = 40.0
    init_resolution_A: float | None = None  # band of the PCA features (init="pca"; default: feature_resolution)
    n_components: int | None = None  # PCA components for the k-means (default 2 x n_classes)
    tau2_fudge: float = TAU2_FUDGE
    max_dose: float | None = None  # images with more pre-exposure are ignored
    resolution_limit_A: float | None = None  # likelihood band limit (default: auto_band, else Nyquist)
    auto_band: bool = True  # no limit given: the consensus map's resolution sets it (em2d.auto_resolution_limit)
    mask_radius_px: float | None = None  # soft spherical mask on the references (default 0.45 D)
    batch_size: int = 32
    cache_gb: float = 3.0
    partition_size: int = 512  # particles per map/reduce partition (results do not depend on it)
    tol_changes: float = 0.001  # a run stops once cold (T = 0) and fewer than this fraction of particles move
    confine_differences: bool = True  # class differences only inside the variability mask (em2d's; any init)

    def em_options(self) -> EMOptions:
        """The :class:`EMOptions` of the E-step / M-step that hill climbing reuses."""
        return EMOptions(
            n_classes=self.n_classes, n_iter=self.n_iter, init=self.init, init_lowpass_A=self.init_lowpass_A,
            init_resolution_A=self.init_resolution_A, n_components=self.n_components, tau2_fudge=self.tau2_fudge,
            max_dose=self.max_dose, resolution_limit_A=self.resolution_limit_A, mask_radius_px=self.mask_radius_px,
            batch_size=self.batch_size, seed=self.seed, cache_gb=self.cache_gb, partition_size=self.partition_size,
            tol_changes=self.tol_changes, auto_band=self.auto_band, confine_differences=self.confine_differences,
        )  # fmt: skip


def temperature_at(options: HillClimbOptions, iteration: int) -> float:
    """Annealing temperature of a 0-based iteration under the cooling schedule (0 = pure hill climbing)."""
    t0 = float(options.temperature)
    if t0 <= 0:
        return 0.0
    if options.cooling == "linear":
        n = options.cooling_iters if options.cooling_iters is not None else max(1, options.n_iter // 2)
        return t0 * max(0.0, 1.0 - iteration / max(n, 1))
    if options.cooling == "geometric":
        t = t0 * options.cooling_factor**iteration
        return t if t >= 1e-3 * t0 else 0.0
    raise ValueError(f"unknown cooling schedule {options.cooling!r} (linear, geometric)")


# ------------------------------------------------------------------------------------------ random numbers
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64 -> uint64, wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def counter_uniform(key: tuple[int, ...], particles: np.ndarray, n: int) -> np.ndarray:
    """Uniform numbers in [0, 1), ``[len(particles), n]``, a pure function of ``(key, particle index, column)``:
    the same particle gets the same numbers whatever batch or partition it is in."""
    with np.errstate(over="ignore"):
        h = np.uint64(0x243F6A8885A308D3)
        for v in key:
            h = _mix(np.asarray(h + _GOLDEN * np.uint64(int(v) + 1), dtype=np.uint64))
        p = np.asarray(particles, dtype=np.uint64)[:, None] + np.uint64(1)
        c = np.arange(1, n + 1, dtype=np.uint64)[None, :]
        x = _mix(_mix(h + _GOLDEN * p) + _GOLDEN * c)
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0**53)


# ------------------------------------------------------------------------------------------ assignment rule
@dataclass
class HillClimbAssign:
    """Stochastic hill climbing with annealing as an assignment rule for :meth:`EMClassifier.iterate`:
    ``rule(particles [n], ll [n, K]) -> one-hot posteriors [n, K]`` (picklable: sent to Dask workers).

    ``labels`` holds the current class of every particle of the dataset ``[N]``; ``temperature`` and
    ``acceptance`` as in :class:`HillClimbOptions`; ``scale`` the log-likelihood spread of the Metropolis rule."""

    labels: np.ndarray
    temperature: float = 0.0
    seed: int = 0
    run: int = 0
    iteration: int = 0
    acceptance: str = "stopgap"
    scale: float | None = None

    def acceptance_probability(self, ll: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Probability ``[n, K]`` of taking each non-improving candidate when it is visited."""
        t = float(self.temperature)
        if t <= 0:
            return np.zeros_like(ll)
        if self.acceptance == "stopgap":
            return np.full_like(ll, min(t, 1.0))
        if self.acceptance == "metropolis":
            if not self.scale or self.scale <= 0:
                return np.zeros_like(ll)
            d = ll - ll[np.arange(len(ll)), current][:, None]
            return np.exp(np.minimum(d, 0.0) / (t * self.scale))
        raise ValueError(f"unknown acceptance rule {self.acceptance!r} (stopgap, metropolis)")

    def choose(self, particles: np.ndarray, ll: np.ndarray) -> np.ndarray:
        """New class ``[n]`` of each particle (see the module docstring)."""
        particles = np.asarray(particles)
        n, k = ll.shape
        rows = np.arange(n)
        cur = np.asarray(self.labels)[particles].astype(np.int64)
        u = counter_uniform((self.seed, self.run, self.iteration), particles, 2 * k)
        order_key = u[:, :k].copy()
        order_key[rows, cur] = np.inf  # the current class is never a candidate
        order = np.argsort(order_key, axis=1, kind="stable")[:, : k - 1]  # [n, K-1] random visiting order
        better = ll > ll[rows, cur][:, None]
        take = better | (u[:, k:] < self.acceptance_probability(ll, cur))
        take[rows, cur] = False
        take_in_order = np.take_along_axis(take, order, axis=1)
        first = take_in_order.argmax(1)
        return np.where(take_in_order.any(1), order[rows, first], cur)

    def __call__(self, particles: np.ndarray, ll: np.ndarray) -> np.ndarray:
        new = self.choose(particles, ll)
        post = np.zeros_like(ll, dtype=np.float64)
        post[np.arange(len(new)), new] = 1.0
        return post


def ll_spread(ll: np.ndarray, labels: np.ndarray) -> float:
    """Median ``|ll[i, k] - ll[i, labels_i]|`` over particles and the other classes (the Metropolis scale)."""
    n, k = ll.shape
    d = np.abs(ll - ll[np.arange(n), labels][:, None])
    mask = np.ones_like(d, dtype=bool)
    mask[np.arange(n), labels] = False
    return float(np.median(d[mask])) if mask.any() else 0.0


# ------------------------------------------------------------------------------------------ driver
def _initial_labels(ds, opt: HillClimbOptions, run: int, pca_features: np.ndarray | None) -> np.ndarray:
    k = opt.n_classes
    if opt.init == "random":
        return np.random.default_rng([opt.seed, run]).integers(0, k, ds.n_particles)
    if opt.init == "pca":
        return kmeans(pca_features, k, n_init=20, seed=opt.seed + run)[0]
    raise ValueError(f"unknown init {opt.init!r} (random, pca)")


class _HillClimbModel:
    """One hill-climbing run as a model of the engine: each step is an EM iteration whose assignment rule is
    :class:`HillClimbAssign` at the step's temperature; logs the hard log-likelihood and its scale."""

    def __init__(self, em: EMClassifier, opt: HillClimbOptions, run: int):
        self.em, self.opt, self.run = em, opt, run
        self.log: list[dict] = []
        self.scale: float | None = None
        self.it = 0

    def iterate(self, temperature: float, progress=None) -> dict:
        em, n = self.em, self.em.ds.n_particles
        rule = HillClimbAssign(em.posteriors.argmax(1), temperature, self.opt.seed, self.run, self.it,
                               self.opt.acceptance, self.scale)  # fmt: skip
        entry = em.iterate(1.0, progress, assign=rule)
        labels = em.posteriors.argmax(1)
        self.scale = ll_spread(em.log_likelihood, labels)
        entry.update(run=self.run, temperature=temperature, ll_scale=self.scale,
                     hard_log_likelihood=float(em.log_likelihood[np.arange(n), labels].sum()))  # fmt: skip
        self.it += 1
        return entry

    def state(self, iteration: int, finished: bool = False) -> dict:  # runs are checkpointed whole
        return {}


def _run_once(
    ds, opt: HillClimbOptions, run: int, labels: np.ndarray, consensus: torch.Tensor, shared: dict, executor, progress
) -> dict:
    """One hill-climbing run from initial ``labels``; ``shared`` carries the prepared-spectra cache and the
    initial noise power across runs."""
    em_opt = opt.em_options()
    em = EMClassifier(ds, em_opt, executor)
    if em._cache is not None:
        em._cache = shared.setdefault("cache", em._cache)
    em.variability = shared.get("variability")
    em.initialise(consensus, labels=labels)
    if "sigma2" not in shared:
        shared["sigma2"] = initial_sigma2(em, consensus)
    em.sigma2 = shared["sigma2"].clone()
    model = _HillClimbModel(em, opt, run)
    run_iterations(model, n_iter=opt.n_iter, tol_changes=opt.tol_changes, n_particles=ds.n_particles,
                   n_images=ds.n_images, progress=progress, schedule=lambda it: temperature_at(opt, it),
                   final_temperature=0.0, stage=f"run {run + 1}/{opt.n_runs} ")  # fmt: skip
    labels, log = em.posteriors.argmax(1), model.log
    return {"labels": labels, "volumes": em.volumes.clone(), "hard_log_likelihood": log[-1]["hard_log_likelihood"],
            "log": log, "sigma2": em.sigma2.clone()}  # fmt: skip


def classify_hillclimb(
    dataset,
    options: HillClimbOptions,
    progress: Callable[[str, int, int], None] | None = None,
    executor=None,
    checkpoint: Path | None = None,
) -> Result:
    """Stochastic hill climbing with simulated annealing (STOPGAP's scheme), ``options.n_runs`` independent runs,
    and consistency across runs, on a :class:`~tomohet.data.model.TiltSeriesParticles` dataset.

    Returns the consensus labels (majority vote after matching every run's classes to run 0), ``posteriors`` the
    fraction of runs voting for each class ``[N, K]``, the maps of the best run (highest final hard
    log-likelihood ``sum_i ll[i, z_i]``) renamed to the consensus classes, and in ``extra``: ``consistency``
    ``[N]`` (fraction of runs agreeing with the consensus), ``run_labels`` ``[R, N]`` (matched to run 0),
    ``best_run`` and each run's final hard log-likelihood. ``checkpoint`` (a file) keeps finished runs; an
    interrupted classification resumes with the next run. ``progress(stage, done, total)`` as in
    :func:`~tomohet.methods.em2d.classify_em2d`."""
    opt = options
    if opt.n_runs < 1:
        raise ValueError(f"n_runs must be at least 1, got {opt.n_runs}")
    if opt.init not in ("random", "pca"):
        raise ValueError(f"unknown init {opt.init!r} (random, pca)")
    temperature_at(opt, 0)  # validates the cooling schedule
    t0 = time.perf_counter()
    runs: list[dict] = []
    rec = reconstruct(dataset, oversampling=1)
    consensus_map = rec.full
    if opt.resolution_limit_A is None and opt.auto_band:
        opt = replace(opt, resolution_limit_A=auto_resolution_limit(rec.resolution, dataset.box, dataset.pixel_size))
    confine = opt.confine_differences and opt.n_classes > 1
    if opt.init_resolution_A is None and (opt.init == "pca" or confine):
        opt = replace(opt, init_resolution_A=round(feature_resolution(rec.resolution, dataset.pixel_size), 2))
    # finished runs are kept only for the same iterations per run
    fingerprint = run_fingerprint("hillclimb", {**asdict(opt), "iterations_per_run": opt.n_iter}, dataset)
    state = load_checkpoint(checkpoint, fingerprint)
    if state is not None:
        runs = state["runs"]
    features, shared = None, {}
    if (opt.init == "pca" or confine) and len(runs) < opt.n_runs:
        eo = opt.em_options()
        feats = difference_features(dataset, consensus_map, resolution_A=eo.init_resolution_A, max_dose=eo.max_dose,
                                    batch_size=eo.batch_size)  # fmt: skip
        if confine:  # em2d's variability mask, shared by the runs (the features do not depend on the labels)
            var = variability_map(feats, opt.n_classes, dataset.box, opt.seed)
            shared["variability"] = variability_mask(var, dataset.pixel_size, eo.init_resolution_A)
        if opt.init == "pca":
            features = pca_kmeans(feats, eo.n_classes, eo.n_components, eo.seed)[1]
        del feats
    for r in range(len(runs), opt.n_runs):
        labels0 = _initial_labels(dataset, opt, r, features)
        runs.append(_run_once(dataset, opt, r, labels0, consensus_map, shared, executor, progress))
        if checkpoint is not None:
            save_checkpoint(checkpoint, {"runs": runs}, fingerprint)
    k = opt.n_classes
    run_labels = match_runs([r["labels"] for r in runs], k)
    lls = np.array([r["hard_log_likelihood"] for r in runs])
    best = int(np.argmax(lls))
    consensus_labels, frac = consistency(run_labels, k, align=False, tie_break=best)
    perm = label_permutation(run_labels[0], runs[best]["labels"], k)  # best run's class j -> consensus perm[j]
    volumes = torch.zeros_like(runs[best]["volumes"])
    volumes[torch.from_numpy(perm)] = runs[best]["volumes"]
    log = [e for r in runs for e in r["log"]]
    return Result(
        method="hillclimb", options=asdict(opt), labels=consensus_labels, posteriors=vote_fractions(run_labels, k),
        volumes=volumes, pixel_size=dataset.pixel_size, log=log,
        extra={"consistency": frac, "run_labels": np.stack(run_labels), "best_run": best,
               "run_log_likelihood": lls.tolist(), "sigma2": runs[best]["sigma2"].numpy(),
               "seconds": time.perf_counter() - t0,
               **({"variability_mask_fraction": round(float(shared["variability"].mean()), 4)}
                  if "variability" in shared else {})},
    )  # fmt: skip

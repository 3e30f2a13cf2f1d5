"""Bayesian EM classification of 2D tilt-series particle stacks (RELION's approach, on the one forward model).

Model (Scheres 2012, J. Struct. Biol. 180:519; tomography as in RELION 4/5): the whole tilt series of particle
i shares one class ``z_i``; image j is ``X_ij = H_ij P(V_z, A_ij) + N_ij`` with ``H = CTF x E`` and Gaussian
noise whose power per resolution shell ``sigma2(s)`` is estimated from the data (per full-spectrum
coefficient, unnormalised FFT). The E-step gives posteriors
``p(z_i = k) ~ pi_k exp(-sum_j sum_k w |X - H P_k|^2 / (2 sigma2) / T)`` (``T`` an annealing temperature that
falls to 1); the M-step re-estimates the maps by weighted Fourier insertion with a regularised Wiener filter
``V_k = sum g H X / sigma2 / (sum g H^2 / sigma2 + 1 / (tau2_fudge * tau2))`` (``tau2`` the consensus map's signal
power per shell, shared by all classes; ``tau2_fudge`` :data:`TAU2_FUDGE`; the classes' differences from their
pooled map confined to a variability mask, :mod:`.variability`, filtered by the agreement of the two
half-sets of particles, :mod:`.difference_filter`, and for K > 2 put on one shared pattern per voxel,
:mod:`.difference_patterns`), the class priors ``pi_k`` and ``sigma2``. CTF-premultiplied
images are divided by their CTF where ``|CTF| > 0.1`` (their noise is CTF-coloured; elsewhere they carry no
information).

Breaking the symmetry between classes decides whether EM finds the states at all (DESIGN.md): the default
initialisation is a wedge-masked difference PCA of per-particle residuals against the consensus map, followed
by k-means (``init="pca"``); ``"random"`` (random subsets) and given maps are available.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..data.poses import apply_pose_corrections
from ..physics.filters import lowpass, resolution_at, soft_sphere
from ..physics.fourier import (
    fft3_centered,
    radial_index_3d,
)
from ..physics.likelihood import (
    ImageBand,
    PreparedImages,
    SpectraCache,
    gaussian_log_likelihood,
    prepare_images_cached,
    shell_power,
    squared_residuals,
)
from ..physics.projector import FourierAccumulator, VolumeProjector, wiener_volume
from ..physics.reconstruct import reconstruct
from .checkpoint import load_checkpoint, run_fingerprint
from .difference_filter import filter_class_differences
from .difference_patterns import PATTERN_SMOOTHING, project_on_patterns
from .difference_pca import difference_features, feature_resolution, pca_kmeans
from .engine import (
    best_of_starts,
    initial_labels,
    is_finished,
    map_partitions,
    mixture_log_likelihood,
    run_iterations,
    runs_here,
)
from .iteration import stage_ticker
from .rare_start import RARE_BAND_FACTOR, coherent_groups, group_start_mask, rare_starts_apply, seeded_labels
from .result import Result
from .variability import confine_differences, variability_map, variability_mask

# M-step Wiener prior: signal power = TAU2_FUDGE x the consensus map's power per shell, each class map shrunk toward
# zero. Chosen by honest (cross-fitted) evaluation on ``ladder`` (seeds 0 and 1, 1000 particles, SNR 0.005): class
# maps from the true labels of half the particles classify the other half at ARI 0.77 / 0.83 with 16, 0.76 / 0.82
# with 4, 0.70 / 0.75 shrunk toward the pooled map (:func:`shrink_to_pooled_map`), and the held-out
# log-likelihood ranks them the same way; EM from the PCA start then ends at 0.83 / 0.84 / 0.80 (seeds 0-2)
# instead of 0.77 / 0.81 / 0.66 (``benchmarks/CLASSIFY.md`` section 7).
TAU2_FUDGE = 16.0


@dataclass
class EMOptions:
    """Options of :func:`classify_em2d`. Resolutions in Angstrom, doses in e/A^2."""

    n_classes: int = 4
    n_iter: int = 12
    init: str = "pca"  # "pca", "ppca" (tilt-space PPCA latents + k-means), "random", or "maps" (``initial_maps``)
    init_lowpass_A: float = 40.0
    init_resolution_A: float | None = None  # band of the PCA features (default: difference_pca.feature_resolution)
    n_components: int | None = None  # PCA components for the initial k-means (default 2 x n_classes)
    anneal_start: float = 1.0  # initial temperature (>1 softens early posteriors), falls to 1 by n_iter/2
    tau2_fudge: float = TAU2_FUDGE
    max_dose: float | None = None  # images with more pre-exposure are ignored
    resolution_limit_A: float | None = None  # E-step band limit (default: auto_band, else Nyquist)
    auto_band: bool = True  # no limit given: limit the band to the consensus map's resolution (see below)
    mask_radius_px: float | None = None  # soft spherical mask on the references (default 0.45 D)
    batch_size: int = 32
    seed: int = 0
    cache_gb: float = 3.0  # keep prepared spectra in memory across iterations when they fit
    partition_size: int = 512  # particles per map/reduce partition (fixed: results do not depend on workers)
    tol_changes: float = 0.001  # stop when fewer than this fraction of particles change class
    shrink_to_mean: bool = False  # M-step: class maps shrink toward the pooled map (shrink_to_pooled_map)
    confine_differences: bool = True  # M-step: class differences only inside the variability mask (PCA start)
    local_angles_deg: float = 0.0  # local pose search: range of the first rotation grid (0: poses as given)
    local_shifts_px: float = 0.0  # local search of the particle centre: range of the first offset grid, pixels
    sigma_angles_deg: float | None = None  # prior width of the pose deviation per axis (None: from the data)
    sigma_shifts_px: float | None = None  # prior width of the centre deviation per axis (None: from the data)
    pose_search_iterations: int = 4  # iterations that search poses; later ones keep them (the EM's cost)
    filter_differences: bool = True  # M-step: class differences filtered by half-set agreement (difference_filter)
    difference_smoothing: float = 1.0  # its local averaging width, in E-step resolution lengths
    difference_patterns: bool = True  # M-step: each voxel's class differences on one shared pattern (K > 2;
    # difference_patterns)
    rare_starts: int = 3  # PCA start: also try this many coherent groups as a class of their own (rare_start;
    # not with a local pose search, nor when n_iter <= start_iterations + 1)
    start_iterations: int = 2  # iterations each start runs before the one with the highest likelihood goes on


def _prepared_chunk(ds, chunk: np.ndarray, max_dose, subtract, cache: SpectraCache | None, size: int) -> PreparedImages:
    """Prepared spectra of a chunk on the working grid, served from the run's ``cache`` when it holds them."""
    return prepare_images_cached(ds, chunk, cache, size=size, max_dose=max_dose, subtract=subtract)


@dataclass
class EStepState:
    """What one E-step/M-step-sums pass needs (picklable: sent to Dask workers)."""

    volumes: torch.Tensor  # [K, D, D, D]
    sigma2: torch.Tensor  # [D//2+1] noise power per shell
    options: EMOptions
    assign: Callable  # (particle indices [n], log-likelihoods [n, K]) -> posteriors [n, K]
    subtract: torch.Tensor | None = None  # consensus outside the focus mask, subtracted from the images


@dataclass
class PartialSums:
    """Sums of one partition of particles, merged in partition order (so results do not depend on where the
    partitions ran)."""

    particles: np.ndarray
    log_likelihood: np.ndarray  # [n, K]
    posteriors: np.ndarray  # [n, K]
    data: torch.Tensor  # [K, D^3, 2] inserted sum g H X / sigma2
    weight: torch.Tensor  # [K, D^3] inserted sum g H^2 / sigma2
    sig_sum: torch.Tensor  # [D//2+1]
    sig_cnt: torch.Tensor
    half_data: torch.Tensor  # the part of ``data`` from half-set A (even particle indices)
    half_weight: torch.Tensor  # the part of ``weight`` from half-set A

    def merge(self, other: PartialSums) -> PartialSums:
        return PartialSums(
            np.concatenate([self.particles, other.particles]),
            np.concatenate([self.log_likelihood, other.log_likelihood]),
            np.concatenate([self.posteriors, other.posteriors]),
            self.data + other.data, self.weight + other.weight,
            self.sig_sum + other.sig_sum, self.sig_cnt + other.sig_cnt,
            self.half_data + other.half_data, self.half_weight + other.half_weight,
        )  # fmt: skip


class HalfSetAccumulators:
    """M-step insertion sums of each class, kept apart for the two half-sets of the particles (A: even particle
    index, B: odd), so the M-step can compare two independent estimates of each map (:mod:`.difference_filter`)."""

    def __init__(self, n_classes: int, size: int):
        self.sets = [[FourierAccumulator(size) for _ in range(n_classes)] for _ in range(2)]

    def insert(self, k: int, in_a: torch.Tensor, data: torch.Tensor, weight: torch.Tensor, rot: torch.Tensor) -> None:
        """Insert slices ``data``/``weight`` ``[n, M, M//2+1]`` at rotations ``[n, 3, 3]`` into class ``k``;
        ``in_a`` ``[n]`` bool marks the slices of half-set A."""
        for accs, sel in ((self.sets[0], in_a), (self.sets[1], ~in_a)):
            if sel.any():
                accs[k].insert(data[sel], weight[sel], rot[sel])

    def sums(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(data, weight, half_data, half_weight)`` stacked over classes: all particles, then half-set A."""
        a_data, b_data = (torch.stack([acc.data for acc in accs]) for accs in self.sets)
        a_weight, b_weight = (torch.stack([acc.weight for acc in accs]) for accs in self.sets)
        return a_data + b_data, a_weight + b_weight, a_data, a_weight


def in_half_set_a(particles: np.ndarray, n_tilts: int) -> torch.Tensor:
    """``[len(particles) * n_tilts]`` bool: the images (particle-major) of half-set A (even particle index)."""
    return torch.from_numpy(np.asarray(particles) % 2 == 0).repeat_interleave(n_tilts)


@dataclass
class SoftmaxAssign:
    """EM posteriors ``p ~ prior * exp(ll / T)``."""

    priors: np.ndarray
    temperature: float = 1.0

    def __call__(self, particles: np.ndarray, ll: np.ndarray) -> np.ndarray:
        logp = ll / self.temperature + np.log(np.maximum(self.priors, 1e-12))
        logp -= logp.max(1, keepdims=True)
        p = np.exp(logp)
        return p / p.sum(1, keepdims=True)


AUTO_BAND_MARGIN = 1.2  # the automatic E-step band reaches 1.2 x the consensus map's FSC-0.143 frequency


def auto_resolution_limit(consensus_resolution_A: float, d: int, pixel_size: float) -> float:
    """E-step band limit (Angstrom) from the consensus map's gold-standard resolution: its frequency times
    :data:`AUTO_BAND_MARGIN`, never coarser than shell D/8 nor finer than Nyquist. Beyond the resolution of
    the average of all particles, class differences carry no signal either (they are weaker than the
    average), only noise that class maps overfit; RELION's classification limits its band the same way.
    The images are then Fourier-cropped to the band, which is what makes large boxes fast."""
    limit = min(consensus_resolution_A / AUTO_BAND_MARGIN, d * pixel_size / 8)
    return max(limit, 2 * pixel_size)


def resolution_length_px(resolution_limit_A: float | None, pixel_size: float) -> float:
    """The E-step band's resolution length in pixels (Nyquist, 2 px, without a limit): the width the M-step's
    local filters (:mod:`.difference_filter`, :mod:`.difference_patterns`) smooth over."""
    return (resolution_limit_A or 2 * pixel_size) / pixel_size


def working_size(d: int, pixel_size: float, resolution_limit_A: float | None) -> int:
    """Box of the Fourier-cropped working grid for an E-step band limit: the band (radius < D apix / limit
    Fourier pixels) plus a margin of 2 for the trilinear insertion, even, at most D."""
    if resolution_limit_A is None:
        return d
    m = 2 * math.ceil(d * pixel_size / resolution_limit_A) + 4
    return min(d, m + m % 2)


def e_step(
    ds,
    particles: np.ndarray,
    state: EStepState,
    cache: SpectraCache | None = None,
    progress: Callable[[int], None] | None = None,
) -> PartialSums:
    """E-step (posteriors) and M-step sums for one partition of particles: the map of the map/reduce
    (:func:`~.engine.map_partitions`)."""
    opt = state.options
    d = ds.box
    m = working_size(d, ds.pixel_size, opt.resolution_limit_A)
    k_cls = state.volumes.shape[0]
    band = ImageBand(d, ds.pixel_size, opt.resolution_limit_A, m)
    proj = VolumeProjector(state.volumes, oversampling=2, out_size=m)
    sub = VolumeProjector(state.subtract, oversampling=2, out_size=m) if state.subtract is not None else None
    accs = HalfSetAccumulators(k_cls, m)  # M-step insertion on the (cropped) image grid
    sig_sum = torch.zeros(band.n_shells, dtype=torch.float64)
    sig_cnt = torch.zeros(band.n_shells, dtype=torch.float64)
    inv_s2 = band.per_pixel(1.0 / state.sigma2)
    log_s2 = band.per_pixel(torch.log(state.sigma2))
    lls, posts = [], []
    for chunk in ds.chunks(opt.batch_size, particles):
        p = _prepared_chunk(ds, chunk, opt.max_dose, sub, cache, m)
        resid2 = squared_residuals(p, proj.project_ft(p.rotations), overwrite=True)  # [K, BT, M, Mh]
        ll = gaussian_log_likelihood(p, resid2, band.weight, inv_s2, log_s2).numpy()  # [B, K]
        post = state.assign(chunk, ll)
        lls.append(ll)
        posts.append(post)
        gimg = torch.from_numpy(post).T.float().repeat_interleave(p.n_tilts, dim=1)  # [K, BT]
        # noise power per shell from the posterior-weighted residuals
        s, c = band.shell_sums(torch.einsum("kb,kbyx->byx", gimg, resid2), p.valid)
        del resid2
        sig_sum += s
        sig_cnt += c
        # M-step sums: insertion weighted by posterior, H and 1/sigma2, inside the E-step band only (sigma2 is
        # known there, and only there are maps compared)
        hw = p.h * p.valid * inv_s2 * band.inside
        data = p.x * hw
        wts = p.h * hw
        in_a = in_half_set_a(chunk, p.n_tilts)
        for k in range(k_cls):
            sel = gimg[k] > 1e-4
            if sel.any():
                gk = gimg[k][sel][:, None, None]
                accs.insert(k, in_a[sel], data[sel] * gk, wts[sel] * gk, p.rotations[sel])
        if progress:
            progress(len(chunk))
    data, weight, half_data, half_weight = accs.sums()
    return PartialSums(np.asarray(particles), np.concatenate(lls), np.concatenate(posts), data, weight,
                       sig_sum, sig_cnt, half_data, half_weight)  # fmt: skip


class EMClassifier:
    """State and steps of the EM classification of one dataset (see the module docstring)."""

    def __init__(self, dataset, options: EMOptions, executor=None, focus_mask: torch.Tensor | None = None):
        self.ds = dataset
        self.focus_mask = focus_mask
        self.subtract: torch.Tensor | None = None  # set by initialise() when there is a focus mask
        self.opt = options
        self.executor = executor
        d = dataset.box
        self.d = d
        self.m = working_size(d, dataset.pixel_size, options.resolution_limit_A)
        self.n_shells = d // 2 + 1
        r = options.mask_radius_px if options.mask_radius_px is not None else 0.45 * d
        self.mask = soft_sphere(d, r, edge=3.0)
        if focus_mask is not None:
            self.mask = self.mask * focus_mask.float()
        self.sigma2 = torch.ones(self.n_shells)
        self.tau2 = torch.ones(self.n_shells)  # signal power per shell, shared by all classes
        self.volumes = torch.zeros(options.n_classes, d, d, d)
        self.priors = np.full(options.n_classes, 1.0 / options.n_classes)
        self.posteriors = np.zeros((dataset.n_particles, options.n_classes))
        self.log_likelihood = np.zeros((dataset.n_particles, options.n_classes))
        self.log: list[dict] = []
        self.init_info: dict = {}  # timings and sizes of the start, kept in checkpoints
        self.variability: torch.Tensor | None = None  # [D, D, D] mask the class differences are confined to
        self._cache = SpectraCache.if_it_fits(dataset, self.m, options.cache_gb) if runs_here(executor) else None

    def iterate(
        self, temperature: float, progress: Callable[[int], None] | None = None, assign: Callable | None = None
    ) -> dict:
        """One EM iteration over all particles; updates posteriors, maps, priors and sigma2. ``assign`` replaces
        the EM posterior rule (e.g. stochastic hill climbing)."""
        old = self.posteriors.argmax(1)
        assign = assign or SoftmaxAssign(self.priors, temperature)
        sums = self.collect(assign, progress)
        order = np.argsort(sums.particles)
        self.posteriors = sums.posteriors[order]
        self.log_likelihood = sums.log_likelihood[order]
        new_sigma = (sums.sig_sum / sums.sig_cnt.clamp_min(1)).float()
        self.sigma2 = torch.where(sums.sig_cnt > 0, new_sigma, self.sigma2).clamp_min(1e-12)
        self.priors = self.posteriors.mean(0)
        difference_fsc = self._m_step(sums)
        total_ll = mixture_log_likelihood(self.log_likelihood, self.priors)
        if not np.isfinite(total_ll):
            raise FloatingPointError("EM log-likelihood is not finite: a class map or the noise power went NaN")
        changes = float((self.posteriors.argmax(1) != old).mean())
        extra = self.absorb(sums, order)
        changes = max(changes, extra.get("pose_changes", 0.0))  # a particle whose pose moved has changed too
        if difference_fsc is not None:  # gold-standard resolution of each class's difference from the pool
            box_a = self.d * self.ds.pixel_size  # no shell above 0.143 at all: no resolution (None)
            res = [resolution_at(f, self.d, self.ds.pixel_size) for f in difference_fsc]
            extra["difference_resolution_A"] = [round(r, 1) if r <= box_a else None for r in res]
        return {"log_likelihood": total_ll, "changes": changes, "class_sizes": np.bincount(
            self.posteriors.argmax(1), minlength=self.opt.n_classes).tolist(), "priors": self.priors.round(4).tolist(),
            "temperature": temperature, **extra}  # fmt: skip

    def collect(self, assign: Callable, progress: Callable[[int], None] | None = None) -> PartialSums:
        """The E-step over all partitions: posteriors and M-step sums (a model with another E-step, e.g. the
        local pose search, overrides this and :meth:`absorb`)."""
        state = EStepState(self.volumes, self.sigma2, self.opt, assign, self.subtract)
        return map_partitions(e_step, self.ds, state, self.opt.partition_size, self.executor, self._cache, progress)

    def absorb(self, sums: PartialSums, order: np.ndarray) -> dict:
        """Take what else ``sums`` carries (particles in ``sums.particles[order]`` order); returns log entries."""
        return {}

    def load_state(self, state: dict) -> int:
        """Take back a :meth:`state` (a checkpoint, or the start the start search kept); returns the iterations it
        had done."""
        self.volumes, self.priors, self.sigma2, self.tau2 = (
            state["volumes"],
            state["priors"],
            state["sigma2"],
            state["tau2"],
        )
        self.posteriors, self.log = state["posteriors"], state["log"]
        self.subtract, self.variability = state["subtract"], state.get("variability")
        self.restore(state)
        return int(state["iteration"])

    def restore(self, state: dict) -> None:
        """Take what else a checkpoint written by :meth:`state` carries (nothing here)."""

    def pose_corrections(self) -> dict:
        """Refined pose corrections for the result (none: the poses are used as given)."""
        return {}

    def state(self, iteration: int, finished: bool = False) -> dict:
        """What the next iteration needs (for a checkpoint)."""
        return {"volumes": self.volumes, "priors": self.priors, "sigma2": self.sigma2, "tau2": self.tau2,
                "subtract": self.subtract, "posteriors": self.posteriors, "log": self.log, "iteration": iteration,
                "resolution_limit_A": self.opt.resolution_limit_A, "init_info": self.init_info,
                "variability": self.variability, "finished": finished}  # fmt: skip

    def _m_step(self, sums: PartialSums) -> torch.Tensor | None:
        """Class maps from the M-step sums (:meth:`_maps`), their differences filtered by the agreement of the
        two half-sets (:func:`~.difference_filter.filter_class_differences`) and put on one pattern per voxel
        (:func:`~.difference_patterns.project_on_patterns`) unless switched off. Returns the
        half-set FSC of each class's difference ``[K, D//2+1]`` (None without the filter)."""
        self.volumes = self._maps(sums.data, sums.weight)
        if self.opt.n_classes == 1:
            return None
        length_px = resolution_length_px(self.opt.resolution_limit_A, self.ds.pixel_size)
        fsc = None
        if self.opt.filter_differences:
            half_a = self._maps(sums.half_data, sums.half_weight)
            half_b = self._maps(sums.data - sums.half_data, sums.weight - sums.half_weight)
            sigma_px = self.opt.difference_smoothing * length_px
            self.volumes, fsc = filter_class_differences(self.volumes, half_a, half_b, self.priors, sigma_px)
        if self.opt.difference_patterns:
            self.volumes, _ = project_on_patterns(self.volumes, self.priors, self.variability,
                                                  PATTERN_SMOOTHING * length_px)  # fmt: skip
        return fsc

    def _maps(self, data_sums: torch.Tensor, weight_sums: torch.Tensor) -> torch.Tensor:
        """Regularised class maps ``[K, D, D, D]`` from inserted sums (Wiener prior, mask, variability mask)."""
        d = self.d
        k_cls = self.opt.n_classes
        sums = []
        for k in range(k_cls):
            acc = FourierAccumulator(self.m)
            acc.data, acc.weight = data_sums[k], weight_sums[k]
            sums.append(acc.finalize())
        g = sums[0][0].shape[-1]
        shells = radial_index_3d(g).clamp(max=g // 2)
        reg = (1.0 / (self.opt.tau2_fudge * self.tau2[shells].clamp_min(1e-20))).float()
        if self.opt.shrink_to_mean and k_cls > 1:
            data = torch.stack([s[0] for s in sums])
            weight = torch.stack([s[1] for s in sums])
            shifted, reg_diff = shrink_to_pooled_map(data, weight, reg, shells)
            volumes = torch.stack([wiener_volume(shifted[k], weight[k], d, reg_diff) for k in range(k_cls)])
        else:
            volumes = torch.stack([wiener_volume(dk, wk, d, reg) for dk, wk in sums])
        volumes = volumes * self.mask
        if self.variability is not None:
            volumes = confine_differences(volumes, self.priors, self.variability)
        return volumes

    # ------------------------------------------------------------------------------------ initialisation
    def initialise(
        self, consensus: torch.Tensor, labels: np.ndarray | None = None, maps: torch.Tensor | None = None
    ) -> None:
        """References from initial labels (reconstruction per class) or given maps, low-passed. The signal
        power ``tau2`` of the regulariser comes from the consensus map, shared by all classes: a class's own
        (shrunk) map would feed back and let small classes, e.g. a rare state, fade away."""
        apix = self.ds.pixel_size
        if self.focus_mask is not None:
            self.subtract = consensus * (1 - self.focus_mask.float())
        self.tau2 = shell_power(fft3_centered(consensus * self.mask), self.d)
        if maps is None:
            assert labels is not None
            vols = []
            for k in range(self.opt.n_classes):
                sel = np.flatnonzero(labels == k)
                vols.append(reconstruct(self.ds, sel, oversampling=1).full)
            maps = torch.stack(vols)
        self.volumes = torch.stack([lowpass(v, self.opt.init_lowpass_A, apix) * self.mask for v in maps]).float()
        if labels is not None:
            self.priors = np.bincount(labels, minlength=self.opt.n_classes) / len(labels)
            self.posteriors = np.eye(self.opt.n_classes)[labels]


def shrink_to_pooled_map(
    data: torch.Tensor, weight: torch.Tensor, reg: torch.Tensor, shells: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical-Bayes M-step prior (Efron & Morris 1973, J. Am. Stat. Assoc. 68:117): each class map is the
    pooled map plus a difference whose power per shell is the classes' spread, instead of a free map.

    ``data`` ``[K, G, G, G]`` complex and ``weight`` ``[K, G, G, G]`` are the classes' inserted sums
    (``sum g H X / sigma2``, ``sum g H^2 / sigma2``), ``reg`` ``[G, G, G]`` the Wiener regulariser of the pooled
    map (``1 / (fudge tau2)``), ``shells`` ``[G, G, G]`` the shell index of each voxel. The pooled map is
    ``mu = sum_k data / (sum_k weight + reg)``; the spread per shell is ``tau_d = sum W |data/W - mu|^2 / sum W``
    (not corrected for noise, which keeps it on the safe side: the noise part makes the prior weaker, and
    subtracting the noise term, whose size the trilinear insertion changes, collapsed the classes in tests).
    Returns the sums to give :func:`~tomohet.physics.projector.wiener_volume` with regulariser ``1 / tau_d``:
    ``V_k = (data_k + mu / tau_d) / (weight_k + 1 / tau_d)``. Where a class has few data (a small class, a
    missing wedge) its map follows the pooled map instead of noise; where it has many, its own data.

    Off by default (``EMOptions.shrink_to_mean``). Without the variability mask it looked better: EM from the
    true labels of ``ladder`` (seed 0) ended at ARI 0.935 instead of 0.919. But that is the pull of each
    particle's own noise in its class map, not accuracy: scored honestly (class maps from the true labels of
    half the particles classify the other half) the shrunk maps reach 0.70 / 0.75 (seeds 0 / 1) where maps
    shrunk toward zero reach 0.77 / 0.83, and a 5% class shrunk toward the pooled map fades (EM from the true
    rare-state labels of ``rare_spread`` loses it in 4 iterations)."""
    mu = data.sum(0) / (weight.sum(0) + reg)
    ok = weight > 1e-6 * float(weight.max())
    stat = torch.where(ok, (data - weight * mu).abs() ** 2 / weight.clamp_min(1e-30), torch.zeros_like(weight))
    n = int(shells.max()) + 1
    idx = shells.flatten()
    num = torch.zeros(n, dtype=torch.float64).index_add_(0, idx, stat.sum(0).flatten().double())
    den = torch.zeros(n, dtype=torch.float64).index_add_(0, idx, (weight * ok).sum(0).flatten().double())
    tau_d = (num / den.clamp_min(1e-30)).clamp_min(1e-30).float()
    reg_diff = 1.0 / tau_d[shells]
    return data + reg_diff * mu, reg_diff


CLASS_POSE_ITERATIONS = 2  # local-search iterations of the class EM after the poses were refined on one class


def classify_em2d(
    dataset,
    options: EMOptions,
    initial_maps: torch.Tensor | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    checkpoint: Path | None = None,
    executor=None,
    focus_mask: torch.Tensor | None = None,
) -> Result:
    """EM classification of a :class:`~tomohet.data.model.TiltSeriesParticles` dataset.

    ``executor`` (see ``tomohet.parallel``) runs the E-step partitions on other workers; the result is the same.
    ``focus_mask`` ``[D, D, D]`` (0..1) focuses the classification on a region: the consensus outside it is
    subtracted from the images (signal subtraction) and the references are masked by it.
    ``progress(stage, done, total)`` reports particles done per stage; ``checkpoint`` (a file) is written
    after every iteration and, if it exists, the run resumes from it.

    With a local pose search and more than one class (and no given maps), the poses are refined first against
    one class (``pose_search_iterations`` iterations: the consensus), then the classes start from the refined
    poses and search them again on a grid 4x finer for :data:`CLASS_POSE_ITERATIONS` iterations. Started from
    the poses as written, the class start sees the pose blur instead of the states (on ``ladder`` with 6 degree /
    1 px errors, searching within the class EM from there ended at ARI 0.13, refining first at 0.91)."""
    searching = options.local_angles_deg > 0 or options.local_shifts_px > 0
    if not searching or options.n_classes == 1 or initial_maps is not None or options.init == "maps":
        return _classify_em2d(dataset, options, initial_maps, progress, checkpoint, executor, focus_mask)
    from .local_pose import compose_corrections  # lazy: local_pose builds on this module

    first = replace(options, n_classes=1, init="random", n_iter=options.pose_search_iterations)
    pose_checkpoint = None if checkpoint is None else Path(checkpoint).with_name(Path(checkpoint).stem + "_poses.pt")
    stage = None if progress is None else (lambda name, done, total: progress(f"poses: {name}", done, total))
    pre = _classify_em2d(dataset, first, None, stage, pose_checkpoint, executor, focus_mask)
    d1, u1 = pre.extra["pose_rotation"], pre.extra["pose_offset_px"]
    posed = apply_pose_corrections(dataset, d1, u1)
    second = replace(options, local_angles_deg=options.local_angles_deg / 4,
                     local_shifts_px=options.local_shifts_px / 4,
                     pose_search_iterations=min(CLASS_POSE_ITERATIONS, options.pose_search_iterations))  # fmt: skip
    res = _classify_em2d(posed, second, None, progress, checkpoint, executor, focus_mask)
    d, u = compose_corrections(d1, u1, res.extra["pose_rotation"], res.extra["pose_offset_px"])
    res.options = asdict(options)
    res.extra.update(pose_rotation=d, pose_offset_px=u, pose_refinement_seconds=round(pre.extra["seconds"], 2),
                     pose_refinement_log=pre.log)  # fmt: skip
    return res


def _classify_em2d(
    dataset,
    options: EMOptions,
    initial_maps: torch.Tensor | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    checkpoint: Path | None = None,
    executor=None,
    focus_mask: torch.Tensor | None = None,
) -> Result:
    """:func:`classify_em2d` in one stage."""
    opt = options
    n = dataset.n_particles
    t0 = time.perf_counter()
    start = 0
    init_info: dict = {}
    fingerprint = run_fingerprint("em2d", {**asdict(opt), "focus": focus_mask is not None,
                                           "maps": initial_maps is not None}, dataset)  # fmt: skip
    state = load_checkpoint(checkpoint, fingerprint)
    if state is not None:
        opt = replace(opt, resolution_limit_A=state["resolution_limit_A"])
    else:
        ts = time.perf_counter()
        rec = reconstruct(dataset, oversampling=1, progress=stage_ticker(progress, "consensus map", n))
        consensus = rec.full
        init_info["consensus_seconds"] = round(time.perf_counter() - ts, 2)
        init_info["consensus_resolution_A"] = round(rec.resolution, 2)
        if opt.resolution_limit_A is None and opt.auto_band:
            limit = auto_resolution_limit(rec.resolution, dataset.box, dataset.pixel_size)
            opt = replace(opt, resolution_limit_A=limit)
        if opt.init_resolution_A is None and opt.init == "pca":
            opt = replace(opt, init_resolution_A=round(feature_resolution(rec.resolution, dataset.pixel_size), 2))
    if opt.local_angles_deg > 0 or opt.local_shifts_px > 0:  # lazy: local_pose builds on this module
        from .local_pose import LocalPoseEM, PoseSearch

        search = PoseSearch(
            opt.local_angles_deg,
            opt.local_shifts_px,
            opt.sigma_angles_deg,
            opt.sigma_shifts_px,
            n_iterations=opt.pose_search_iterations,
        )
        em = LocalPoseEM(dataset, opt, search, executor, focus_mask)
    else:
        em = EMClassifier(dataset, opt, executor, focus_mask)
    init_info["e_step_limit_A"] = round(opt.resolution_limit_A or 2 * dataset.pixel_size, 2)
    init_info["working_box"] = em.m
    if state is not None:
        start = em.load_state(state)
        init_info.update(state["init_info"], resumed_from_iteration=start)
    else:
        starts: dict[str, tuple[np.ndarray, torch.Tensor | None]] = {}  # labels + mask tried beside the PCA start
        if initial_maps is not None or opt.init == "maps":
            if initial_maps is None:
                raise ValueError("init='maps' needs initial_maps")
            em.initialise(consensus, maps=initial_maps)
        else:
            ts = time.perf_counter()
            if opt.init == "ppca":  # tilt-space PPCA latents + k-means (lazy: ppca imports this module)
                from .ppca import ppca_start_labels

                labels = ppca_start_labels(dataset, opt.n_classes, seed=opt.seed, max_dose=opt.max_dose,
                                           focus_mask=focus_mask, batch_size=opt.batch_size,
                                           progress=progress)  # fmt: skip
            elif opt.init == "pca":
                labels, starts = _pca_starts(dataset, consensus, opt, em, focus_mask, progress, init_info)
            else:
                labels = initial_labels(opt.init, n, opt.n_classes, opt.seed)
            if opt.init in ("pca", "ppca"):
                init_info["init_seconds"] = round(time.perf_counter() - ts, 2)
                init_info["init_class_sizes"] = np.bincount(labels, minlength=opt.n_classes).tolist()
            em.initialise(consensus, labels=labels)
        em.sigma2 = initial_sigma2(em, consensus, stage_ticker(progress, "noise power", n))
        if starts:
            start = _best_start(em, consensus, {"pca": (labels, em.variability), **starts}, opt, progress, init_info)
    em.init_info = init_info
    run_iterations(em, n_iter=opt.n_iter, start=start, finished=is_finished(state, opt.n_iter),
                   anneal_start=opt.anneal_start, tol_changes=opt.tol_changes, n_particles=n,
                   n_images=dataset.n_images, progress=progress, checkpoint=checkpoint,
                   fingerprint=fingerprint)  # fmt: skip
    labels = em.posteriors.argmax(1)
    return Result(
        method="em2d", options=asdict(opt), labels=labels, posteriors=em.posteriors, volumes=em.volumes,
        pixel_size=dataset.pixel_size, log=em.log,
        extra={"sigma2": em.sigma2.numpy(), "seconds": time.perf_counter() - t0, **init_info,
               **em.pose_corrections(), **({} if em.subtract is None else {"focus_subtract": em.subtract})},
    )  # fmt: skip


def heldout_log_likelihood(dataset, result: Result, progress: Callable[[int], None] | None = None) -> float:
    """Mixture log-likelihood ``sum_i log sum_k pi_k p(X_i | V_k)`` of ``dataset``'s particles under a classification
    fitted to *other* particles (``result`` of :func:`classify_em2d` without a pose search: its class maps, priors
    = mean posteriors, noise power, E-step band and, with a focus mask, its signal subtraction); each particle is
    scored against every class, so neither its class nor any map holds its own noise (two-fold cross-validation,
    :mod:`.class_scan`). Higher is better; comparable between results fitted to the same particles."""
    opt = EMOptions(**{k: v for k, v in result.options.items() if k in EMOptions.__dataclass_fields__})
    priors = np.asarray(result.posteriors).mean(0)
    state = EStepState(result.volumes, torch.as_tensor(result.extra["sigma2"]), opt, SoftmaxAssign(priors),
                       result.extra.get("focus_subtract"))  # fmt: skip
    scored = e_step(dataset, np.arange(dataset.n_particles), state, None, progress)  # batches of opt.batch_size
    return mixture_log_likelihood(scored.log_likelihood, priors)


def _pca_starts(dataset, consensus: torch.Tensor, opt: EMOptions, em: EMClassifier, focus_mask, progress,
                init_info: dict) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, torch.Tensor | None]]]:  # fmt: skip
    """The PCA start's labels (difference features, k-means; its variability mask set on ``em``) and the rare-state
    starts tried beside it, as labels and variability mask: k-means into one class fewer plus each of
    ``opt.rare_starts`` coherent groups of particles as the last class, the differences confined to where the
    group differs and (K > 2) where the other classes do (:mod:`.rare_start`)."""
    n, box, apix = dataset.n_particles, dataset.box, dataset.pixel_size
    feats = difference_features(dataset, consensus, resolution_A=opt.init_resolution_A, max_dose=opt.max_dose,
                                focus_mask=focus_mask, batch_size=opt.batch_size,
                                progress=stage_ticker(progress, "PCA start", n))  # fmt: skip
    confine = opt.confine_differences and opt.n_classes > 1
    if confine:
        var = variability_map(feats, opt.n_classes, box, opt.seed)
        em.variability = variability_mask(var, apix, opt.init_resolution_A)
        init_info["variability_mask_fraction"] = round(float(em.variability.mean()), 4)
    labels = pca_kmeans(feats, opt.n_classes, opt.n_components, opt.seed)[0]
    if not _tries_rare_starts(opt, n):
        return labels, {}
    base, base_var = np.zeros(n, int), torch.zeros(box, box, box)
    if opt.n_classes > 2:
        base = pca_kmeans(feats, opt.n_classes - 1, None, opt.seed)[0]
        base_var = variability_map(feats, opt.n_classes - 1, box, opt.seed)
    del feats
    coarse = difference_features(dataset, consensus, resolution_A=RARE_BAND_FACTOR * opt.init_resolution_A,
                                 max_dose=opt.max_dose, focus_mask=focus_mask, batch_size=opt.batch_size,
                                 progress=stage_ticker(progress, "rare-state groups", n))  # fmt: skip
    starts = {}
    for j, group in enumerate(coherent_groups(coarse, opt.rare_starts, seed=opt.seed)):
        mask = None
        if confine:
            mask = group_start_mask(base_var, coarse, group, box, apix, opt.init_resolution_A)
        starts[f"group {j + 1}"] = (seeded_labels(base, group, opt.n_classes), mask)
    return labels, starts


def _tries_rare_starts(opt: EMOptions, n_particles: int) -> bool:
    """Whether the rare-state starts are tried: K >= 2, ``rare_starts`` >= 1, a run long enough to go on after
    them (more than ``start_iterations + 1`` iterations), enough particles for a rare state
    (:func:`~.rare_start.rare_starts_apply`), and poses taken as given (with a local pose search each start would
    search poses too: ~8 pose-search iterations more)."""
    local_pose = opt.local_angles_deg > 0 or opt.local_shifts_px > 0
    return (opt.rare_starts >= 1 and opt.n_classes >= 2 and opt.n_iter > opt.start_iterations + 1
            and not local_pose and rare_starts_apply(n_particles))  # fmt: skip


def _best_start(em: EMClassifier, consensus: torch.Tensor, starts: dict[str, tuple[np.ndarray, torch.Tensor | None]],
                opt: EMOptions, progress, init_info: dict) -> int:  # fmt: skip
    """Run ``opt.start_iterations`` EM iterations from each start (labels ``[N]`` and variability mask) and leave
    ``em`` in the state of the one with the highest log-likelihood (its iterations stay in the log); returns the
    iterations done. ``init_info`` records each start's log-likelihood and the chosen one."""
    fresh, sigma2 = em.state(0), em.sigma2  # the noise power does not depend on the labels

    def begin(start: tuple[np.ndarray, torch.Tensor | None]) -> None:
        em.restore(fresh)  # a subclass's own state (e.g. poses) back to where the run began
        em.initialise(consensus, labels=start[0])
        em.sigma2, em.variability = sigma2, start[1]

    best = best_of_starts(em, starts, begin, n_short=max(1, min(opt.start_iterations, opt.n_iter)),
                          n_iter=opt.n_iter, anneal_start=opt.anneal_start, n_images=em.ds.n_images,
                          progress=progress, info=init_info)  # fmt: skip
    done = em.load_state(best)
    if em.variability is not None:
        init_info["variability_mask_fraction"] = round(float(em.variability.mean()), 4)
    return done


def initial_sigma2(
    em: EMClassifier, consensus: torch.Tensor, progress: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Noise power per shell from residuals against the consensus map (a first E-step has no classes)."""
    if em.focus_mask is not None:  # the images already have the consensus outside the mask subtracted
        consensus = consensus * em.focus_mask
    proj = VolumeProjector(consensus, oversampling=2, out_size=em.m)
    s = torch.zeros(em.n_shells, dtype=torch.float64)
    c = torch.zeros(em.n_shells, dtype=torch.float64)
    band = ImageBand(em.d, em.ds.pixel_size, em.opt.resolution_limit_A, em.m)
    sub = VolumeProjector(em.subtract, oversampling=2, out_size=em.m) if em.subtract is not None else None
    for chunk in em.ds.chunks(em.opt.batch_size):
        p = _prepared_chunk(em.ds, chunk, em.opt.max_dose, sub, em._cache, em.m)
        ds_, dc_ = band.shell_sums(squared_residuals(p, proj.project_ft(p.rotations)[None], overwrite=True)[0], p.valid)
        s += ds_
        c += dc_
        if progress:
            progress(len(chunk))
    return torch.where(c > 0, s / c.clamp_min(1), torch.ones_like(s)).float().clamp_min(1e-12)

"""Bayesian EM classification of 2D tilt-series particle stacks (RELION's approach, on the one forward model).

Model (Scheres 2012, J. Struct. Biol. 180:519; tomography as in RELION 4/5): the whole tilt series of particle
i shares one class ``z_i``; image j is ``X_ij = H_ij P(V_z, A_ij) + N_ij`` with ``H = CTF x E`` and Gaussian
noise whose power per resolution shell ``sigma2(s)`` is estimated from the data (per full-spectrum
coefficient, unnormalised FFT). The E-step gives posteriors
``p(z_i = k) ~ pi_k exp(-sum_j sum_k w |X - H P_k|^2 / (2 sigma2) / T)`` (``T`` an annealing temperature that
falls to 1); the M-step re-estimates the maps by weighted Fourier insertion with a regularised Wiener filter
``V_k = sum g H X / sigma2 / (sum g H^2 / sigma2 + 1 / (tau2_fudge * tau2_k))`` (``tau2_k`` the class's signal
power per shell), the class priors ``pi_k`` and ``sigma2``. CTF-premultiplied images are divided by their CTF
where ``|CTF| > 0.1`` (their noise is CTF-coloured; elsewhere they carry no information).

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

from ..physics.filters import lowpass, soft_sphere
from ..physics.forward import batch_transfer_functions
from ..physics.fourier import (
    fft3_centered,
    half_spectrum_multiplicity,
    ifft3_centered,
    radial_index_3d,
    rfft2_centered,
    shell_index_2d,
    shift_phase_2d,
)
from ..physics.projector import FourierAccumulator, VolumeProjector, wiener_volume
from ..physics.reconstruct import reconstruct
from .iteration import anneal_temperature, stage_ticker
from .result import Result


@dataclass
class EMOptions:
    """Options of :func:`classify_em2d`. Resolutions in Angstrom, doses in e/A^2."""

    n_classes: int = 4
    n_iter: int = 12
    init: str = "pca"  # "pca", "random", or "maps" (give ``initial_maps``)
    init_lowpass_A: float = 40.0
    init_resolution_A: float | None = None  # band of the PCA features (default: 2.5 x Nyquist)
    n_components: int | None = None  # PCA components for the initial k-means (default n_classes)
    anneal_start: float = 1.0  # initial temperature (>1 softens early posteriors), falls to 1 by n_iter/2
    tau2_fudge: float = 4.0
    max_dose: float | None = None  # images with more pre-exposure are ignored
    resolution_limit_A: float | None = None  # E-step band limit (default: auto_band, else Nyquist)
    auto_band: bool = True  # no limit given: limit the band to the consensus map's resolution (see below)
    mask_radius_px: float | None = None  # soft spherical mask on the references (default 0.45 D)
    batch_size: int = 32
    seed: int = 0
    cache_gb: float = 3.0  # keep prepared spectra in memory across iterations when they fit
    partition_size: int = 512  # particles per map/reduce partition (fixed: results do not depend on workers)
    tol_changes: float = 0.001  # stop when fewer than this fraction of particles change class


def _prepared_chunk(ds, chunk: np.ndarray, max_dose, subtract, cache: dict | None, size: int) -> _Prepared:
    """Prepared spectra of a chunk, from ``cache`` (keyed by first index and length) when it holds them."""
    key = (int(chunk[0]), len(chunk))
    p = cache.get(key) if cache is not None else None
    if p is None:
        p = _Prepared(ds, chunk, max_dose, subtract, size)
        if cache is not None:
            cache[key] = p
    return p


class _Prepared:
    """Per-batch image spectra and transfer functions, centred and (for premultiplied data) CTF-divided, on the
    working grid of ``size`` (<= D: Fourier-cropped to the frequencies below size/2 of the D grid)."""

    def __init__(
        self, ds, chunk: np.ndarray, max_dose: float | None, subtract: VolumeProjector | None = None,
        size: int | None = None,
    ):  # fmt: skip
        d = ds.box
        batch = ds.batch(chunk)
        b, t = batch.dose.shape
        vis = batch.visible.clone()
        if max_dose is not None:
            vis &= batch.dose <= max_dose
        ctf, expo = batch_transfer_functions(batch, d, ds.pixel_size)
        x = rfft2_centered(batch.images.reshape(-1, d, d)) * shift_phase_2d(d, -batch.shifts.reshape(-1, 2))
        valid = torch.ones_like(ctf)
        if ds.ctf_premultiplied:
            valid = (ctf.abs() > 0.1).float()
            x = torch.where(valid > 0, x / torch.where(valid > 0, ctf, torch.ones_like(ctf)), torch.zeros_like(x))
        m = d if size is None else size
        lo = d // 2 - m // 2
        x, ctf, expo, valid = (a[:, lo : lo + m, : m // 2 + 1] for a in (x, ctf, expo, valid))
        self.h = ctf * expo
        self.valid = valid * vis.reshape(-1, 1, 1)
        self.rot = batch.rotations.reshape(-1, 3, 3)
        if subtract is not None:  # focused classification: remove the signal outside the focus mask
            x = x - subtract.project_ft(self.rot) * self.h * self.valid
        self.x = x
        self.b, self.t = b, t


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

    def merge(self, other: PartialSums) -> PartialSums:
        return PartialSums(
            np.concatenate([self.particles, other.particles]),
            np.concatenate([self.log_likelihood, other.log_likelihood]),
            np.concatenate([self.posteriors, other.posteriors]),
            self.data + other.data, self.weight + other.weight,
            self.sig_sum + other.sig_sum, self.sig_cnt + other.sig_cnt,
        )  # fmt: skip


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


def working_size(d: int, pixel_size: float, resolution_limit_A: float | None) -> int:
    """Box of the Fourier-cropped working grid for an E-step band limit: the band (radius < D apix / limit
    Fourier pixels) plus a margin of 2 for the trilinear insertion, even, at most D."""
    if resolution_limit_A is None:
        return d
    m = 2 * math.ceil(d * pixel_size / resolution_limit_A) + 4
    return min(d, m + m % 2)


def _band(
    d: int, pixel_size: float, resolution_limit_A: float | None, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell index (in Fourier pixels of the D grid, clamped to D//2) of each pixel of the half spectrum of
    the working grid (``size``, default D) and the full-spectrum multiplicity inside the E-step band."""
    m = d if size is None else size
    shell2d = shell_index_2d(m).clamp(max=d // 2)
    limit = d // 2 if resolution_limit_A is None else d * pixel_size / resolution_limit_A
    return shell2d, half_spectrum_multiplicity(m) * (shell2d < min(limit, d // 2, m // 2)).float()


def partial_iteration(
    ds,
    particles: np.ndarray,
    state: EStepState,
    cache: dict | None = None,
    progress: Callable[[int], None] | None = None,
) -> PartialSums:
    """E-step and M-step sums for one partition of particles (the map of the map/reduce)."""
    opt = state.options
    d = ds.box
    m = working_size(d, ds.pixel_size, opt.resolution_limit_A)
    k_cls = state.volumes.shape[0]
    shell2d, wpix = _band(d, ds.pixel_size, opt.resolution_limit_A, m)
    n_shells = d // 2 + 1
    proj = VolumeProjector(state.volumes, oversampling=2, out_size=m)
    sub = VolumeProjector(state.subtract, oversampling=2, out_size=m) if state.subtract is not None else None
    accs = [FourierAccumulator(m) for _ in range(k_cls)]  # M-step insertion on the (cropped) image grid
    sig_sum = torch.zeros(n_shells, dtype=torch.float64)
    sig_cnt = torch.zeros(n_shells, dtype=torch.float64)
    inv_s2 = (1.0 / state.sigma2)[shell2d]
    log_norm = 0.5 * (wpix * torch.log(state.sigma2)[shell2d])  # Gaussian normaliser per pixel
    inband = (wpix > 0).float()  # the E-step band: sigma2 is known there, and only there are maps compared
    lls, posts = [], []
    for chunk in ds.chunks(opt.batch_size, particles):
        p = _prepared_chunk(ds, chunk, opt.max_dose, sub, cache, m)
        model = proj.project_ft(p.rot) * p.h  # [K, BT, D, Dh]
        resid2 = (p.x[None] - model).abs() ** 2 * p.valid  # [K, BT, D, Dh]
        r2 = (resid2 * (wpix * inv_s2)).sum(dim=(-2, -1))  # [K, BT]
        norm = (p.valid * log_norm).sum(dim=(-2, -1)).reshape(p.b, p.t).sum(-1).double()  # [B]
        ll = ((-0.5 * r2).reshape(k_cls, p.b, p.t).sum(-1).T.double() - norm[:, None]).numpy()  # [B, K]
        post = state.assign(chunk, ll)
        lls.append(ll)
        posts.append(post)
        gimg = torch.from_numpy(post).T.float().repeat_interleave(p.t, dim=1)  # [K, BT]
        # noise power per shell from the posterior-weighted residuals
        w_r = (resid2 * gimg[:, :, None, None]).sum(0) * wpix  # [BT, D, Dh]
        sig_sum.index_add_(0, shell2d.reshape(-1), w_r.sum(0).reshape(-1).double())
        sig_cnt.index_add_(0, shell2d.reshape(-1), (p.valid * wpix).sum(0).reshape(-1).double())
        # M-step sums: insertion weighted by posterior, H and 1/sigma2
        hw = p.h * p.valid * inv_s2 * inband
        data = p.x * hw
        wts = p.h * hw
        for k in range(k_cls):
            sel = gimg[k] > 1e-4
            if sel.any():
                gk = gimg[k][sel][:, None, None]
                accs[k].insert(data[sel] * gk, wts[sel] * gk, p.rot[sel])
        if progress:
            progress(len(chunk))
    return PartialSums(
        np.asarray(particles), np.concatenate(lls), np.concatenate(posts),
        torch.stack([a.data for a in accs]), torch.stack([a.weight for a in accs]), sig_sum, sig_cnt,
    )  # fmt: skip


def run_partitions(ds, state: EStepState, partition_size: int, executor=None, cache=None, progress=None):
    """Map :func:`partial_iteration` over fixed partitions of the particles and reduce in partition order.

    ``executor`` (``tomohet.parallel``) runs the partitions elsewhere (e.g. on Dask workers); without one they
    run here, reusing ``cache``. The partitions and the order of the reduction are the same either way, so
    serial and distributed runs give the same result."""
    parts = [idx for idx in ds.chunks(partition_size)]
    if executor is None:
        results = [partial_iteration(ds, idx, state, cache, progress) for idx in parts]
    else:
        results = executor.map_partitions(partial_iteration, ds, parts, state, progress)
    total = results[0]
    for r in results[1:]:
        total = total.merge(r)
    return total


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
        # prepared spectra are cached across iterations when they fit (images x 2 complex + 2 real planes)
        per_particle = dataset.n_tilts * self.m * (self.m // 2 + 1) * 4 * 6
        fits = per_particle * dataset.n_particles < options.cache_gb * 1e9
        self._cache: dict | None = {} if fits and executor is None else None

    def iterate(
        self, temperature: float, progress: Callable[[int], None] | None = None, assign: Callable | None = None
    ) -> dict:
        """One EM iteration over all particles; updates posteriors, maps, priors and sigma2. ``assign`` replaces
        the EM posterior rule (e.g. stochastic hill climbing)."""
        old = self.posteriors.argmax(1)
        assign = assign or SoftmaxAssign(self.priors, temperature)
        state = EStepState(self.volumes, self.sigma2, self.opt, assign, self.subtract)
        sums = run_partitions(self.ds, state, self.opt.partition_size, self.executor, self._cache, progress)
        order = np.argsort(sums.particles)
        self.posteriors = sums.posteriors[order]
        self.log_likelihood = sums.log_likelihood[order]
        new_sigma = (sums.sig_sum / sums.sig_cnt.clamp_min(1)).float()
        self.sigma2 = torch.where(sums.sig_cnt > 0, new_sigma, self.sigma2).clamp_min(1e-12)
        self.priors = self.posteriors.mean(0)
        self._m_step(sums.data, sums.weight)
        lp = self.log_likelihood + np.log(np.maximum(self.priors, 1e-12))
        total_ll = float((lp.max(1) + np.log(np.exp(lp - lp.max(1, keepdims=True)).sum(1))).sum())
        if not np.isfinite(total_ll):
            raise FloatingPointError("EM log-likelihood is not finite: a class map or the noise power went NaN")
        changes = float((self.posteriors.argmax(1) != old).mean())
        return {"log_likelihood": total_ll, "changes": changes, "class_sizes": np.bincount(
            self.posteriors.argmax(1), minlength=self.opt.n_classes).tolist(), "priors": self.priors.round(4).tolist(),
            "temperature": temperature}  # fmt: skip

    def _m_step(self, data_sums: torch.Tensor, weight_sums: torch.Tensor) -> None:
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
        for k, (dk, wk) in enumerate(sums):
            self.volumes[k] = wiener_volume(dk, wk, d, reg) * self.mask

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
        self.tau2 = _shell_power(fft3_centered(consensus * self.mask), self.d)
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


def _shell_power(ft: torch.Tensor, box: int) -> torch.Tensor:
    """Mean |V(k)|^2 per shell ``[D//2+1]`` of a full centred box-D spectrum."""
    shells = radial_index_3d(box).reshape(-1).clamp(max=box // 2)
    p = torch.zeros(box // 2 + 1, dtype=torch.float64).index_add_(0, shells, (ft.abs() ** 2).reshape(-1).double())
    c = torch.zeros(box // 2 + 1, dtype=torch.float64).index_add_(
        0, shells, torch.ones_like(shells, dtype=torch.float64)
    )
    return (p / c.clamp_min(1)).float()


def pca_initial_labels(
    ds, opt: EMOptions, consensus: torch.Tensor, focus_mask: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Wedge-masked difference PCA + k-means: per particle, the Wiener back-projection of its residuals
    against the consensus (low-resolution band, missing wedge = no deviation), top components, k-means.
    Returns (labels, features)."""
    d, apix = ds.box, ds.pixel_size
    small = feature_box(d, apix, opt.init_resolution_A)
    proj = VolumeProjector(consensus, oversampling=2)
    sub = None
    if focus_mask is not None:  # residuals of the focus region only
        proj = VolumeProjector(consensus * focus_mask, oversampling=2)
        sub = VolumeProjector(consensus * (1 - focus_mask), oversampling=2)
    feats = []
    mask = soft_sphere(small, 0.45 * small, edge=1.5)
    lo = d // 2 - small // 2
    for chunk in ds.chunks(opt.batch_size):
        p = _Prepared(ds, chunk, opt.max_dose, sub)
        resid = (p.x - proj.project_ft(p.rot) * p.h) * p.valid
        # crop spectra to the low-resolution band: [BT, small, small//2+1]
        r = resid[:, lo : lo + small, : small // 2 + 1]
        h = (p.h * p.valid)[:, lo : lo + small, : small // 2 + 1]
        vols = _per_particle_backprojection(r * h, h * h, p.rot, p.b, p.t, small)
        feats.append((vols * mask).reshape(p.b, -1))
        if progress:
            progress(len(chunk))
    return pca_kmeans(torch.cat(feats), opt.n_classes, opt.n_components, opt.seed)


MAX_FEATURE_BOX = 32  # per-particle PCA features are at most 32^3 voxels (10^4 particles: 1.3 GB, float32)


def feature_box(d: int, pixel_size: float, resolution_A: float | None) -> int:
    """Even box of the per-particle PCA features: the band up to ``resolution_A`` (default 2.5 x Nyquist),
    at least 8, at most :data:`MAX_FEATURE_BOX` and D (a coarser band when the limit would exceed it)."""
    res = resolution_A or 2.5 * 2 * pixel_size
    small = int(min(d, MAX_FEATURE_BOX, max(8, 2 * math.ceil(d * pixel_size / res))))
    return small + small % 2


def pca_kmeans(features: torch.Tensor, n_classes: int, n_components: int | None, seed: int):
    """Labels ``[N]`` and PCA scores ``[N, q]`` of per-particle features ``[N, F]``: centred, scaled by the mean
    feature standard deviation, top ``q`` components (default ``n_classes``), k-means (20 starts)."""
    from sklearn.cluster import KMeans

    x = features.float()
    x = x - x.mean(0)
    x /= x.std(0).clamp_min(1e-12).mean()
    q = n_components or n_classes
    z = leading_scores(x, q, seed).numpy()
    km = KMeans(n_clusters=n_classes, n_init=20, random_state=seed).fit(z)
    return km.labels_.astype(int), z


def leading_scores(x: torch.Tensor, q: int, seed: int = 0, exact_below: int = 2000) -> torch.Tensor:
    """Scores ``U_q S_q`` ``[N, q]`` (float64) of the top ``q`` principal components of a centred ``[N, F]``
    matrix. Exact SVD when ``min(N, F) <= exact_below``; otherwise a seeded randomised range finder with
    power iterations (Halko, Martinsson & Tropp 2011, SIAM Rev. 53:217), which needs O(N F q) time and
    no N x N or F x F matrix, so 10^4 particles x 10^4-10^5 features fit in memory."""
    n, f = x.shape
    if min(n, f) <= exact_below:
        u, s, _ = torch.linalg.svd(x.double(), full_matrices=False)
        return u[:, :q] * s[:q]
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(f, q + 10, generator=gen, dtype=x.dtype)
    y, _ = torch.linalg.qr(x @ omega)
    for _ in range(6):  # power iterations sharpen the gap to the noise components
        w, _ = torch.linalg.qr(x.T @ y)
        y, _ = torch.linalg.qr(x @ w)
    ub, s, _ = torch.linalg.svd((y.T @ x).double(), full_matrices=False)
    return (y.double() @ ub[:, :q]) * s[:q]


def _per_particle_backprojection(data, weight, rot, b, t, size) -> torch.Tensor:
    """Real-space Wiener back-projections ``[B, s, s, s]`` of each particle's own images (batched insertion)."""
    from ..physics.subtomogram import insert_batched

    vis = torch.ones(b, t, dtype=torch.bool)
    dsum, wsum = insert_batched(
        data.reshape(b, t, size, size // 2 + 1), weight.reshape(b, t, size, size // 2 + 1),
        rot.reshape(b, t, 3, 3), vis, size,
    )[:2]  # fmt: skip
    lam = wsum.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return ifft3_centered(dsum / (wsum + lam))


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
    after every iteration and, if it exists, the run resumes from it."""
    opt = options
    n = dataset.n_particles
    t0 = time.perf_counter()
    start = 0
    init_info: dict = {}
    state = None
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=False)
        opt = replace(opt, resolution_limit_A=state.get("resolution_limit_A", opt.resolution_limit_A))
    else:
        ts = time.perf_counter()
        rec = reconstruct(dataset, oversampling=1, progress=stage_ticker(progress, "consensus map", n))
        consensus = rec.full
        init_info["consensus_seconds"] = round(time.perf_counter() - ts, 2)
        init_info["consensus_resolution_A"] = round(rec.resolution, 2)
        if opt.resolution_limit_A is None and opt.auto_band:
            limit = auto_resolution_limit(rec.resolution, dataset.box, dataset.pixel_size)
            opt = replace(opt, resolution_limit_A=limit)
    em = EMClassifier(dataset, opt, executor, focus_mask)
    init_info["e_step_limit_A"] = round(opt.resolution_limit_A or 2 * dataset.pixel_size, 2)
    init_info["working_box"] = em.m
    if state is not None:
        em.volumes, em.priors, em.sigma2, em.tau2 = state["volumes"], state["priors"], state["sigma2"], state["tau2"]
        em.posteriors, em.log, start = state["posteriors"], state["log"], state["iteration"]
        em.subtract = state.get("subtract")
    else:
        if initial_maps is not None or opt.init == "maps":
            if initial_maps is None:
                raise ValueError("init='maps' needs initial_maps")
            em.initialise(consensus, maps=initial_maps)
        elif opt.init == "random":
            rng = np.random.default_rng(opt.seed)
            em.initialise(consensus, labels=rng.integers(0, opt.n_classes, dataset.n_particles))
        elif opt.init == "pca":
            ts = time.perf_counter()
            labels, _ = pca_initial_labels(dataset, opt, consensus, focus_mask, stage_ticker(progress, "PCA start", n))
            init_info["init_seconds"] = round(time.perf_counter() - ts, 2)
            init_info["init_class_sizes"] = np.bincount(labels, minlength=opt.n_classes).tolist()
            em.initialise(consensus, labels=labels)
        else:
            raise ValueError(f"unknown init {opt.init!r} (pca, random, maps)")
        em.sigma2 = _initial_sigma2(em, consensus, stage_ticker(progress, "noise power", n))
    for it in range(start, opt.n_iter):
        temp = anneal_temperature(it, opt.n_iter, opt.anneal_start)
        ti = time.perf_counter()
        entry = em.iterate(temp, stage_ticker(progress, f"iteration {it + 1}/{opt.n_iter}", n))
        entry.update(iteration=it + 1, seconds=round(time.perf_counter() - ti, 2),
                     images_per_s=round(dataset.n_images / (time.perf_counter() - ti), 1))  # fmt: skip
        em.log.append(entry)
        if checkpoint is not None:
            state = {
                "volumes": em.volumes,
                "priors": em.priors,
                "sigma2": em.sigma2,
                "tau2": em.tau2,
                "subtract": em.subtract,
                "posteriors": em.posteriors,
                "log": em.log,
                "iteration": it + 1,
                "resolution_limit_A": opt.resolution_limit_A,
            }
            torch.save(state, checkpoint)  # fmt: skip
        if it >= 2 and temp == 1.0 and entry["changes"] < opt.tol_changes:
            break
    labels = em.posteriors.argmax(1)
    return Result(
        method="em2d", options=asdict(opt), labels=labels, posteriors=em.posteriors, volumes=em.volumes,
        pixel_size=dataset.pixel_size, log=em.log,
        extra={"sigma2": em.sigma2.numpy(), "seconds": time.perf_counter() - t0, **init_info},
    )  # fmt: skip


def _initial_sigma2(
    em: EMClassifier, consensus: torch.Tensor, progress: Callable[[int], None] | None = None
) -> torch.Tensor:
    """Noise power per shell from residuals against the consensus map (a first E-step has no classes)."""
    if em.focus_mask is not None:  # the images already have the consensus outside the mask subtracted
        consensus = consensus * em.focus_mask
    proj = VolumeProjector(consensus, oversampling=2, out_size=em.m)
    s = torch.zeros(em.n_shells, dtype=torch.float64)
    c = torch.zeros(em.n_shells, dtype=torch.float64)
    shell2d, wpix = _band(em.d, em.ds.pixel_size, em.opt.resolution_limit_A, em.m)
    idx = shell2d.reshape(-1)
    sub = VolumeProjector(em.subtract, oversampling=2, out_size=em.m) if em.subtract is not None else None
    for chunk in em.ds.chunks(em.opt.batch_size):
        p = _prepared_chunk(em.ds, chunk, em.opt.max_dose, sub, em._cache, em.m)
        r = (p.x - proj.project_ft(p.rot) * p.h).abs() ** 2 * p.valid * wpix
        s.index_add_(0, idx, r.sum(0).reshape(-1).double())
        c.index_add_(0, idx, (p.valid * wpix).sum(0).reshape(-1).double())
        if progress:
            progress(len(chunk))
    return torch.where(c > 0, s / c.clamp_min(1), torch.ones_like(s)).float().clamp_min(1e-12)

"""Bayesian EM classification of 3D subtomograms with their per-voxel weights (poses as given, or searched locally
by :mod:`.subtomo_local_pose`).

Data. Particle ``i`` is a subtomogram with a per-voxel weight, in one internal form (reference frame, D grid,
FFTW half layout ``[D, D, D//2+1]``, only the coefficients inside the E-step band are kept):

    d_i(k) = sum_j H_ij(k) X_ij(k)     CTF-premultiplied data (RELION 4 pseudo-subtomogram; H = CTF x exposure)
    W_i(k) = sum_j H_ij(k)^2           its weight (CTF^2, zero in the missing wedge)

- 2D tilt stacks (:class:`~tomohet.data.model.TiltSeriesParticles`) are inserted here, per particle, directly in
  the *reference* frame (each image with its own rotation ``A_ij``, i.e. pose = identity in
  :mod:`tomohet.physics.subtomogram`), so the E-step needs no rotation at all.
- RELION 4 pseudo-subtomograms (:class:`~tomohet.data.subtomo.Subtomograms`, ``ctf_premultiplied``): ``d`` = the
  data, ``W`` = the stored CTF^2.
- RELION 3.1 subtomograms (``X = C V + white noise``, ``C`` the 3D CTF): ``d = C X``, ``W = C^2``. Then
  ``-|X - C V|^2 / 2 s2 = const + (Re(conj(d) V) - W |V|^2 / 2) / s2``, i.e. the white-noise model of RELION 3.1
  *is* the weighted model below in this form, and the two ``noise_model`` options coincide for such data.

Rotations. 2D stacks are inserted straight into the reference frame, so their E-step and M-step need no rotation:
the E-step is two matrix products ``[B, P] x [P, K]`` and the M-step a posterior-weighted sum ``[K, N] x [N, P]``.
File subtomograms live in their tomogram frame, ``subtomo_i(x) = V(R_i^T x)``, so ``S_i(k) = V(R_i^T k)``:

- E-step (where accuracy decides the classes): the data stay exactly as recorded and the K references are rotated
  into each particle's frame, ``V_k(R_i^T k)``, by the shared projector's trilinear interpolation on a 2x
  zero-padded, gridding-precorrected spectrum (:meth:`~tomohet.physics.projector.VolumeProjector.sample`; the
  references are smooth and masked, so this is accurate). Measured: its log-likelihood differences correlate
  0.996 with the exact 2D-stack likelihood of the oracle given the true maps.
- M-step and initial PCA: the data and weights are resampled *once* into the reference frame,
  ``d_ref(q) = d_i(R_i q)``, ``W_ref(q) = W_i(R_i q)``, with the same trilinear operator on the D grid (a
  consistent pair matters more than a finer data interpolation), so the M-step stays a matrix product instead of a
  per-particle scatter every iteration. ``rlnOrigin`` shifts are undone by a phase factor.

Noise model (``noise_model="weighted"``, the default and the right one). Each tilt image is
``X_ij = H_ij P_ij V + N_ij`` with independent noise of power ``sigma2(s)`` per Fourier coefficient in shell ``s``.
Inserting ``H_ij X_ij`` gives ``d_i = W_i V + n_i`` with ``n_i = sum_j H_ij N_ij`` (the slices of one tilt series
are independent where they overlap), so ``E|n_i(k)|^2 = sum_j H_ij^2 sigma2(s) = W_i(k) sigma2(s)``: the noise
of a back-projected subtomogram is *not* white; its variance follows the weight voxel by voxel (high at low
frequency where all tilts overlap, zero in the missing wedge, dips at the CTF zeros). The log-likelihood is

    log p(d_i | V_k) = -sum_k m_k |d_i - W_i V_k|^2 / (2 W_i sigma2) + const
                     = sum_k m_k (Re(conj(d_i) V_k) - W_i |V_k|^2 / 2) / sigma2(s) + const_i

(``m_k`` = 1 on the kx = 0 plane and 2 elsewhere: each half-layout coefficient stands for its Friedel pair, as
in :mod:`tomohet.methods.em2d`), which equals the 2D likelihood of the tilt series up to interpolation: 3D EM
with these weights is the 2D EM in disguise. ``noise_model="white"`` assumes ``d_i = W_i V + white noise`` (what
RELION 3.1 assumes when handed a CTF-premultiplied pseudo-subtomogram with ``W`` as its CTF): it weights voxels
by ``W^2`` instead of ``W``, over-trusting the low frequencies and the voxels many tilts reach.

Noise power per shell: ``sigma2(s) = sum_i sum_k g_ik sum_{k in s} m |d_i - W_i V_k|^2 / sum_i sum_{k in s} m W_i``
(white: divided by the number of voxels with ``W > 0``). M-step (regularised Wiener, ``tau2`` per shell from the
consensus, shared by all classes as in em2d): ``V_k = sum_i g_ik d_i / (sum_i g_ik W_i + sigma2 / (fudge tau2))``
(white: ``sum g W d / (sum g W^2 + ...)``), then a soft spherical mask in real space.

Initialisation (``init="pca"``): a wedge-aware difference PCA: each particle's residual against the consensus,
``(d_i - W_i V_0) / (W_i + lambda_i)`` in a low-resolution band (zero where the wedge hides it), masked in real
space, top components, k-means; ``"random"`` (random subsets) and ``"maps"`` (given maps) as in em2d.

em2d's search (``benchmarks/CLASSIFY.md`` section 12): without a resolution limit, the consensus' gold-standard
resolution sets the E-step band and the PCA features' band (``auto_band``); the class maps differ from their
prior-weighted mean only inside the variability mask of the PCA features (``confine_differences``,
:mod:`.variability`); their differences are filtered by the agreement of two half-sets of particles
(``filter_differences``, :mod:`.difference_filter`); the rare-state starts of :mod:`.rare_start` are available
(``rare_starts``).

FFT normalisation: unnormalised forward transforms (:mod:`tomohet.physics.fourier`); real volumes ``[D, D, D]``
(z, y, x; origin at D//2); resolutions in Angstrom.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..physics.bands import VolumeBand
from ..physics.filters import lowpass, resolution_at, shell_frequencies, soft_sphere
from ..physics.reconstruct import Reconstruction, fsc_regularised
from .checkpoint import load_checkpoint, run_fingerprint
from .difference_filter import filter_class_differences
from .difference_patterns import PATTERN_SMOOTHING, project_on_patterns
from .difference_pca import feature_box, feature_resolution, pca_kmeans
from .em2d import CLASS_POSE_ITERATIONS, SoftmaxAssign, auto_resolution_limit, resolution_length_px
from .engine import best_of_starts, initial_labels, is_finished, mixture_log_likelihood, run_iterations
from .rare_start import RARE_BAND_FACTOR, coherent_groups, group_start_mask, rare_starts_apply, seeded_labels
from .result import Result
from .subtomo_spectra import BandView, ClassReferences, PreparedSpectra, wedge_difference_volumes
from .variability import confine_differences, variability_map, variability_mask


@dataclass
class EM3DOptions:
    """Options of :func:`classify_em3d`. Resolutions in Angstrom."""

    n_classes: int = 4
    n_iter: int = 12
    init: str = "pca"  # "pca", "random" or "maps" (give ``initial_maps``)
    init_lowpass_A: float = 40.0
    init_resolution_A: float | None = None  # band of the PCA features (default: 2.5 x Nyquist)
    n_components: int | None = None  # PCA components for the initial k-means (default 2 x n_classes)
    anneal_start: float = 1.0  # initial temperature (>1 softens early posteriors), falls to 1 by n_iter/2
    tau2_fudge: float = 4.0
    noise_model: str = "weighted"  # "weighted" (variance ~ W per voxel, correct) or "white" (RELION 3.1's)
    resolution_limit_A: float | None = None  # E-step band limit (default Nyquist)
    mask_radius_px: float | None = None  # soft spherical mask on the references (default 0.45 D)
    oversampling: int = 2  # padding of the 2D images inserted into subtomograms (2D-stack input)
    batch_size: int = 32
    seed: int = 0
    cache_gb: float = 3.0  # keep the prepared spectra in memory across iterations when they fit
    tol_changes: float = 0.001  # stop when fewer than this fraction of particles change class
    auto_band: bool = True  # no resolution limit given: E-step band and PCA features from the consensus' resolution
    confine_differences: bool = True  # class maps differ from their mean only inside the PCA's variability mask
    filter_differences: bool = True  # M-step: class differences filtered by half-set agreement (difference_filter)
    difference_smoothing: float = 1.0  # its local averaging width, in E-step resolution lengths
    difference_patterns: bool = False  # M-step: each voxel's class differences on one shared pattern (K > 2;
    # difference_patterns, em2d's default). Off: on ladder seed 0 it fed em3d's small-class drift (CLASSIFY.md
    # section 14), the 15% state shrank 153 -> 0 over 12 iterations (ARI 0.814 -> 0.765)
    rare_starts: int = 3  # PCA start: also try this many coherent groups as a class of their own (em2d's search;
    # with the half-set filter they find ladder's smallest state: ARI 0.69 -> 0.81, CLASSIFY.md section 12)
    start_iterations: int = 2  # iterations each start runs before the one with the highest likelihood goes on
    local_angles_deg: float = 0.0  # local pose search: range of the first rotation grid (0: poses as given)
    local_shifts_px: float = 0.0  # local pose search: range of the first offset grid (pixels)
    sigma_angles_deg: float | None = None  # prior width per axis (None: estimated from the data)
    sigma_shifts_px: float | None = None
    pose_search_iterations: int = 4  # iterations that search the poses (the rest keep them)


# ------------------------------------------------------------------------------------------------ EM steps


@dataclass
class _Sums:
    """Posterior-weighted sums over particles, per class and in-band voxel (float64 / complex128)."""

    d: torch.Tensor  # [K, P] sum g d
    w: torch.Tensor  # [K, P] sum g W
    wd: torch.Tensor  # [K, P] sum g W d
    w2: torch.Tensor  # [K, P] sum g W^2
    d2: torch.Tensor  # [P] sum |d|^2 (all particles)
    n_seen: torch.Tensor  # [P] number of particles with W > 0
    half: _Sums | None = None  # the same sums over half-set A (even particle index) alone

    @staticmethod
    def zeros(k: int, p: int) -> _Sums:
        z = torch.zeros(k, p, dtype=torch.float64)
        return _Sums(z.to(torch.complex128), z.clone(), z.to(torch.complex128), z.clone(),
                     torch.zeros(p, dtype=torch.float64), torch.zeros(p, dtype=torch.float64))  # fmt: skip

    def add(self, g: torch.Tensor, d: torch.Tensor, w: torch.Tensor) -> None:
        """``g [B, K]`` posteriors, ``d [B, P]`` complex, ``w [B, P]`` real (reference frame)."""
        d, w = d.to(torch.complex128), w.double()
        gt = g.T.to(torch.float64)
        self.d += gt.to(torch.complex128) @ d
        self.w += gt @ w
        self.wd += gt.to(torch.complex128) @ (d * w)
        self.w2 += gt @ (w * w)
        self.d2 += (d.abs() ** 2).sum(0)
        self.n_seen += (w > 0).double().sum(0)


def _log_likelihood(d: torch.Tensor, w: torch.Tensor, vr: torch.Tensor, inv_s2: torch.Tensor, model: str):
    """``[B, K]`` log-likelihoods up to a per-particle constant (module docstring). ``d [B, P]`` complex128,
    ``w [B, P]`` float64, ``vr [B or 1, K, P]`` the class spectra in the particle's frame, ``inv_s2 [P]`` =
    m / sigma2 per voxel."""
    if model == "white":
        d, w = d * w, w * w
    a = torch.einsum("bp,bkp->bk", d.real * inv_s2, vr.real.expand(d.shape[0], -1, -1))
    a += torch.einsum("bp,bkp->bk", d.imag * inv_s2, vr.imag.expand(d.shape[0], -1, -1))
    b = torch.einsum("bp,bkp->bk", w * inv_s2, (vr.abs() ** 2).expand(d.shape[0], -1, -1))
    return a - 0.5 * b


def _residual_per_shell(d, w, vr, band: VolumeBand) -> torch.Tensor:
    """``sum_{k in shell} m |d - W V|^2`` per particle, class and shell: ``[B, K, S]`` float64."""
    r = (d.abs() ** 2)[:, None] - 2 * w[:, None] * (d.conj()[:, None] * vr).real + (w * w)[:, None] * vr.abs() ** 2
    onehot = torch.zeros(band.size, band.n_shells, dtype=torch.float64)
    onehot[torch.arange(band.size), band.shell] = band.mult
    return r @ onehot


class EM3DClassifier:
    """State and steps of the 3D EM classification of one dataset (see the module docstring)."""

    def __init__(self, dataset, options: EM3DOptions, prepared: PreparedSpectra | None = None):
        if options.noise_model not in ("weighted", "white"):
            raise ValueError(f"unknown noise_model {options.noise_model!r} (weighted, white)")
        self.ds = dataset
        self.opt = options
        d = dataset.box
        self.d = d
        limit = d // 2 if options.resolution_limit_A is None else d * dataset.pixel_size / options.resolution_limit_A
        self.band = VolumeBand(d, limit)
        if prepared is not None:
            same = prepared.ds is dataset and torch.equal(prepared.band.idx, self.band.idx)
            if not same or (prepared.opt.batch_size, prepared.opt.oversampling) != (
                options.batch_size,
                options.oversampling,
            ):
                raise ValueError("prepared spectra were made for another dataset, band, batch size or oversampling")
        self.source = prepared or PreparedSpectra(dataset, self.band, options)
        r = options.mask_radius_px if options.mask_radius_px is not None else 0.45 * d
        self.mask = soft_sphere(d, r, edge=3.0)
        k = options.n_classes
        self.variability: torch.Tensor | None = None  # [D, D, D] where class maps may differ from their mean
        self.sigma2 = torch.ones(self.band.n_shells, dtype=torch.float64)
        self.tau2 = torch.ones(self.band.n_shells, dtype=torch.float64)
        self.volumes = torch.zeros(k, self.band.size, dtype=torch.complex128)  # in-band spectra
        self.priors = np.full(k, 1.0 / k)
        self.posteriors = np.zeros((dataset.n_particles, k))
        self.log_likelihood = np.zeros((dataset.n_particles, k))
        self.log: list[dict] = []

    # -------------------------------------------------------------------------------------- pieces
    def _noise_power(self, sums: _Sums, vols: torch.Tensor) -> torch.Tensor:
        """sigma2 per shell from the reference-frame sums against maps ``vols [K, P]`` (for the consensus, before
        any E-step; the iterations use the particle-frame residuals of :meth:`_pass`)."""
        b = self.band
        r = sums.d2 - 2 * (vols * sums.wd.conj()).real.sum(0) + ((vols.abs() ** 2) * sums.w2).sum(0)
        num = b.per_shell(r * b.mult)
        den = b.per_shell((sums.w.sum(0) if self.opt.noise_model == "weighted" else sums.n_seen) * b.mult)
        s2 = torch.where(den > 0, num / den.clamp_min(1e-300), self.sigma2)
        return s2.clamp_min(1e-12 * float(s2.max()))

    def _solve(self, num: torch.Tensor, den: torch.Tensor, fudge: float) -> torch.Tensor:
        """Wiener ``num / (den + sigma2 / (fudge tau2))`` per voxel, masked in real space: ``[K, P]`` complex128."""
        reg = (self.sigma2 / (fudge * self.tau2.clamp_min(1e-30)))[self.band.shell]
        vols = num / (den + reg)
        return self._masked(vols)

    def _masked(self, vols: torch.Tensor) -> torch.Tensor:
        return self.band.from_real(self.band.to_real(vols) * self.mask).to(torch.complex128)

    def _confined(self, vols: torch.Tensor) -> torch.Tensor:
        """Class spectra ``[K, P]`` whose differences from their prior-weighted mean lie inside the variability
        mask (:func:`~.variability.confine_differences`; unchanged without a mask or with one class)."""
        if self.variability is None or vols.shape[0] < 2:
            return vols
        real = confine_differences(self.band.to_real(vols), self.priors, self.variability)
        return self.band.from_real(real).to(torch.complex128)

    def _m_step_terms(self, sums: _Sums) -> tuple[torch.Tensor, torch.Tensor]:
        return (sums.d, sums.w) if self.opt.noise_model == "weighted" else (sums.wd, sums.w2)

    def _m_step(self, sums: _Sums) -> torch.Tensor:
        """Class spectra ``[K, P]`` from the M-step sums: Wiener solve, mask, variability mask, and (with
        ``filter_differences`` and the half-set sums) the differences filtered by the agreement of the two
        half-sets (:func:`~.difference_filter.filter_class_differences`, as em2d) and (K > 2) put on one pattern per
        voxel (:func:`~.difference_patterns.project_on_patterns`)."""
        fudge = self.opt.tau2_fudge
        num, den = self._m_step_terms(sums)
        vols = self._confined(self._solve(num, den, fudge))
        filtered = self.opt.filter_differences and sums.half is not None and vols.shape[0] > 1
        patterns = self.opt.difference_patterns and vols.shape[0] > 2
        if not (filtered or patterns):
            return vols
        length_px = resolution_length_px(self.opt.resolution_limit_A, self.ds.pixel_size)
        b = self.band
        real = b.to_real(vols)
        if filtered:
            na, da = self._m_step_terms(sums.half)
            half_a = self._confined(self._solve(na, da, fudge))
            half_b = self._confined(self._solve(num - na, den - da, fudge))
            real, _ = filter_class_differences(real, b.to_real(half_a), b.to_real(half_b), self.priors,
                                               self.opt.difference_smoothing * length_px)  # fmt: skip
        if patterns:
            real, _ = project_on_patterns(real, self.priors, self.variability, PATTERN_SMOOTHING * length_px)
        return b.from_real(real).to(torch.complex128)

    def real_volumes(self) -> torch.Tensor:
        """Class maps ``[K, D, D, D]`` float32 (real space, origin at D//2)."""
        return self.band.to_real(self.volumes)

    def _pass(self, assign: Callable | None, progress: Callable[[int], None] | None = None):
        """One pass over the data: log-likelihoods and posteriors (``assign``; None = one class of all particles,
        no E-step), the M-step sums and the noise power per shell from the posterior-weighted residuals.
        Returns ``(sums, ll [N, K], posteriors [N, K], sigma2 [S] or None)``."""
        k = self.volumes.shape[0] if assign is not None else 1
        sums = _Sums.zeros(k, self.band.size)
        if assign is not None:
            sums.half = _Sums.zeros(k, self.band.size)
        b = self.band
        inv_s2 = b.mult / self.sigma2[b.shell]
        refs = ClassReferences(b, self.volumes) if assign is not None else None
        num = torch.zeros(b.n_shells, dtype=torch.float64)
        den = torch.zeros(b.n_shells, dtype=torch.float64)
        lls, posts = [], []
        for c in self.source:
            if refs is None:
                g = torch.ones(len(c.particles), 1, dtype=torch.float64)
            else:
                d, w = c.d.to(torch.complex128), c.w.double()
                vr = refs.sample(c.rot)
                ll = _log_likelihood(d, w, vr, inv_s2, self.opt.noise_model).numpy()
                post = assign(c.particles, ll)
                lls.append(ll)
                posts.append(post)
                g = torch.from_numpy(post)
                num += (_residual_per_shell(d, w, vr, b) * g[:, :, None]).sum((0, 1))
                seen = w if self.opt.noise_model == "weighted" else (w > 0).double()
                den += b.per_shell((seen * b.mult).sum(0))
            sums.add(g, c.d_ref, c.w_ref)
            if sums.half is not None:
                in_a = torch.from_numpy(c.particles % 2 == 0).to(g.dtype)[:, None]
                sums.half.add(g * in_a, c.d_ref, c.w_ref)
            if progress:
                progress(len(c.particles))
        if refs is None:
            return sums, None, None, None
        s2 = torch.where(den > 0, num / den.clamp_min(1e-300), self.sigma2)
        return sums, np.concatenate(lls), np.concatenate(posts), s2.clamp_min(1e-12 * float(s2.max()))

    # --------------------------------------------------------------------------------- consensus / init
    def consensus(self) -> torch.Tensor:
        """Consensus map (in-band spectrum) of all particles; sets ``sigma2`` and the shared ``tau2``."""
        sums = self._pass(None)[0]
        num, den = self._m_step_terms(sums)
        raw = torch.where(den > 1e-12 * float(den.max()), num / den.clamp_min(1e-300), torch.zeros_like(num))
        self.sigma2 = self._noise_power(sums, raw)
        b = self.band
        # signal power: raw power minus its noise (sigma2 / den per voxel, weighted model), per shell
        noise = torch.where(den > 0, self.sigma2[b.shell] / den.clamp_min(1e-300), torch.zeros_like(den))[0]
        cnt = b.per_shell(b.mult)
        p_raw = b.per_shell((raw[0].abs() ** 2) * b.mult) / cnt.clamp_min(1)
        p_noise = b.per_shell(noise * b.mult) / cnt.clamp_min(1)
        self.tau2 = torch.maximum(p_raw - p_noise, 0.05 * p_raw).clamp_min(1e-30)
        cons = self._solve(num, den, 1.0)
        self.tau2 = self._shell_power(cons[0])  # from the masked consensus, as em2d
        return cons[0]

    def _shell_power(self, vec: torch.Tensor) -> torch.Tensor:
        b = self.band
        p = b.per_shell((vec.abs() ** 2) * b.mult) / b.per_shell(b.mult).clamp_min(1)
        # shells outside the band keep the last in-band value (unused)
        last = int(b.shell.max())
        p[last + 1 :] = p[last]
        return p.clamp_min(1e-30)

    def initialise(self, labels: np.ndarray | None = None, maps: torch.Tensor | None = None) -> None:
        """References from initial labels (weighted reconstruction per class) or from given real maps
        ``[K, D, D, D]``, low-passed to ``init_lowpass_A`` and masked."""
        k = self.opt.n_classes
        if labels is not None:
            self.priors = np.bincount(labels, minlength=k) / len(labels)
            self.posteriors = np.eye(k)[labels]
        if maps is None:
            assert labels is not None
            g = np.eye(k)[labels]
            sums = _Sums.zeros(k, self.band.size)
            for c in self.source:
                sums.add(torch.from_numpy(g[c.particles]), c.d_ref, c.w_ref)
            num, den = self._m_step_terms(sums)
            vols = self.band.to_real(self._solve(num, den, self.opt.tau2_fudge))
        else:
            vols = maps.float()
        apix = self.ds.pixel_size
        vols = torch.stack([lowpass(v, self.opt.init_lowpass_A, apix) * self.mask for v in vols])
        self.volumes = self._confined(self.band.from_real(vols).to(torch.complex128))

    def difference_features(self, consensus: torch.Tensor, resolution_A: float | None) -> torch.Tensor:
        """Wedge-masked difference volumes against the consensus up to ``resolution_A`` (default 2.5 x Nyquist),
        masked and flattened: ``[N, s^3]`` float32."""
        small = feature_box(self.d, self.ds.pixel_size, resolution_A)
        mask = soft_sphere(small, 0.45 * small, edge=1.5)
        return wedge_difference_volumes(self.source, consensus, small, lambda v: (v * mask).reshape(v.shape[0], -1))

    def pca_initial_labels(self, consensus: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Wedge-aware difference PCA + k-means (module docstring); with ``confine_differences`` the variability
        mask of the same features is set (:mod:`.variability`, as em2d). Returns (labels, features ``[N, q]``)."""
        opt = self.opt
        feats = self.difference_features(consensus, opt.init_resolution_A)
        if opt.confine_differences and opt.n_classes > 1:
            var = variability_map(feats, opt.n_classes, self.d, opt.seed)
            self.variability = variability_mask(var, self.ds.pixel_size, self._feature_resolution())
        return pca_kmeans(feats, opt.n_classes, opt.n_components, opt.seed)

    def _feature_resolution(self) -> float:
        return self.opt.init_resolution_A or 2.5 * 2 * self.ds.pixel_size

    def rare_state_starts(self, consensus: torch.Tensor) -> dict[str, tuple[np.ndarray, torch.Tensor | None]]:
        """Starts beside the PCA start, as em2d tries them (:mod:`.rare_start`): k-means into one class fewer
        plus each of ``rare_starts`` coherent groups of particles (difference features at
        :data:`~.rare_start.RARE_BAND_FACTOR` x the PCA band) as the last class; with ``confine_differences``
        each start's mask covers where its group differs and (K > 2) where the other classes do."""
        opt, k, d = self.opt, self.opt.n_classes, self.d
        res = self._feature_resolution()
        base, base_var = np.zeros(self.ds.n_particles, dtype=int), torch.zeros(d, d, d)
        if k > 2:
            feats = self.difference_features(consensus, opt.init_resolution_A)
            base = pca_kmeans(feats, k - 1, None, opt.seed)[0]
            base_var = variability_map(feats, k - 1, d, opt.seed)
        coarse = self.difference_features(consensus, RARE_BAND_FACTOR * res)
        starts = {}
        for j, group in enumerate(coherent_groups(coarse, opt.rare_starts, seed=opt.seed)):
            mask = None
            if opt.confine_differences:
                mask = group_start_mask(base_var, coarse, group, d, self.ds.pixel_size, res)
            starts[f"group {j + 1}"] = (seeded_labels(base, group, k), mask)
        return starts

    def score(self, maps: torch.Tensor) -> np.ndarray:
        """Log-likelihoods ``[N, K]`` (up to a per-particle constant) of every particle under the real maps
        ``[K, D, D, D]`` with the current noise power (run :meth:`consensus` first for a data-driven one)."""
        b = self.band
        refs = ClassReferences(b, b.from_real(maps.float()).to(torch.complex128))
        inv_s2 = b.mult / self.sigma2[b.shell]
        out = np.zeros((self.ds.n_particles, maps.shape[0]))
        for c in self.source:
            vr = refs.sample(c.rot)
            out[c.particles] = _log_likelihood(c.d.to(torch.complex128), c.w.double(), vr, inv_s2,
                                               self.opt.noise_model).numpy()  # fmt: skip
        return out

    # ------------------------------------------------------------------------------------- iterate
    def iterate(self, temperature: float, progress: Callable[[int], None] | None = None) -> dict:
        """One EM iteration: posteriors, then sigma2, priors and the maps."""
        old = self.posteriors.argmax(1)
        sums, ll, post, sigma2, extra = self._expectation(SoftmaxAssign(self.priors, temperature), progress)
        self.log_likelihood, self.posteriors, self.sigma2 = ll, post, sigma2
        self.priors = post.mean(0)
        self.volumes = self._m_step(sums)
        total = mixture_log_likelihood(ll, self.priors)
        changes = max(float((post.argmax(1) != old).mean()), extra.get("pose_changes", 0.0))  # a moved pose counts
        return {"log_likelihood": total, "changes": changes,
                "class_sizes": np.bincount(post.argmax(1), minlength=self.opt.n_classes).tolist(),
                "priors": self.priors.round(4).tolist(), "temperature": temperature, **extra}  # fmt: skip

    def _expectation(self, assign: Callable, progress: Callable[[int], None] | None = None):
        """The E-step and the M-step sums: :meth:`_pass`'s ``(sums, ll, posteriors, sigma2)`` and log entries (a
        model with another E-step, e.g. the local pose search, overrides this)."""
        return (*self._pass(assign, progress), {})

    def prepared_source(self):
        """The prepared spectra the classifier reads (of the full band where it reads a band view of them)."""
        return prepared_of(self.source)

    def pose_corrections(self) -> dict:
        """Pose corrections for ``Result.extra`` (none: the poses as given)."""
        return {}

    # ------------------------------------------------------------------------------------ checkpoint
    def state(self, iteration: int, finished: bool = False) -> dict:
        """What the next iteration needs (maps, priors, noise and signal power, posteriors, log)."""
        return {"volumes": self.volumes, "priors": self.priors, "sigma2": self.sigma2, "tau2": self.tau2,
                "posteriors": self.posteriors, "log": self.log, "iteration": iteration, "finished": finished,
                "variability": self.variability, "resolution_limit_A": self.opt.resolution_limit_A,
                "init_resolution_A": self.opt.init_resolution_A}  # fmt: skip

    def restore(self, state: dict) -> int:
        """Restore a :meth:`state`; returns the number of iterations it had done."""
        self.volumes, self.priors, self.sigma2, self.tau2 = (
            state["volumes"], state["priors"], state["sigma2"], state["tau2"]
        )  # fmt: skip
        self.posteriors, self.log = state["posteriors"], state["log"]
        self.variability = state.get("variability")
        return int(state["iteration"])

    # -------------------------------------------------------------------------------- class maps
    def class_reconstructions(self, labels: np.ndarray, half_set: np.ndarray) -> list[Reconstruction | None]:
        """Gold-standard maps of each class from its members' reference-frame subtomograms: half maps (split by
        ``half_set`` 1/2, or alternately when a class has only one half), their FSC, and the full map, all
        Wiener-filtered with the per-shell SNR from the FSC (as :func:`~tomohet.physics.reconstruct.reconstruct`
        does for 2D stacks). Needs the full band (no resolution limit) for meaningful maps; None for classes
        with fewer than 4 members."""
        k = self.opt.n_classes
        halves = np.asarray(half_set).copy()
        for c in range(k):
            members = np.flatnonzero(labels == c)
            if len(members) and len(set(halves[members])) < 2:
                halves[members] = 1 + np.arange(len(members)) % 2
        group = 2 * np.asarray(labels) + (halves - 1)
        onehot = np.eye(2 * k)[group]
        sums = _Sums.zeros(2 * k, self.band.size)
        for c in self.source:
            sums.add(torch.from_numpy(onehot[c.particles]), c.d_ref, c.w_ref)
        num, den = self._m_step_terms(sums)
        b, d, apix = self.band, self.d, self.ds.pixel_size
        cnt = b.per_shell(b.mult).clamp_min(1)
        out: list[Reconstruction | None] = []
        for c in range(k):
            if (labels == c).sum() < 4:
                out.append(None)
                continue
            nh, dh = num[2 * c : 2 * c + 2], den[2 * c : 2 * c + 2]
            mean_w = torch.stack([b.per_shell(x * b.mult) / cnt for x in dh])  # [2, S]
            wsum = dh.sum(0)
            mean_full = b.per_shell(wsum * b.mult) / cnt

            def half_maps(snr, nh=nh, dh=dh, mean_w=mean_w):
                if snr is None:  # weak constant regulariser
                    reg = (1e-3 * mean_w.mean(1, keepdim=True)).expand(-1, b.n_shells).clamp_min(1e-12)
                else:
                    reg = mean_w / snr.clamp_min(1e-3).double()
                return list(b.to_real(nh / (dh + reg[:, b.shell])))

            def full_map(snr, nh=nh, wsum=wsum, mean_full=mean_full):
                return b.to_real(nh.sum(0) / (wsum + (mean_full / snr.clamp_min(1e-3).double())[b.shell]))

            (h1, h2), curve, full = fsc_regularised(half_maps, full_map)
            res = resolution_at(curve, d, apix)
            out.append(Reconstruction(
                half1=h1, half2=h2, full=full, filtered=lowpass(full, max(res, 2 * apix), apix), fsc=curve,
                frequencies=shell_frequencies(d, apix), resolution=res, pixel_size=apix,
            ))  # fmt: skip
        return out


def prepared_of(source):
    """The prepared spectra behind ``source`` (a band view's full-band spectra, or ``source`` itself)."""
    return source.source if isinstance(source, BandView) else source


def _tries_rare_starts(opt: EM3DOptions, n_particles: int) -> bool:
    """Whether the rare-state starts are tried (as em2d): K >= 2, ``rare_starts`` >= 1, a run long enough to go
    on after them and enough particles for a rare state (:func:`~.rare_start.rare_starts_apply`)."""
    return (opt.rare_starts >= 1 and opt.n_classes >= 2 and opt.n_iter > opt.start_iterations + 1
            and rare_starts_apply(n_particles))  # fmt: skip


def _automatic_band(dataset, opt: EM3DOptions, prepared: PreparedSpectra | None, info: dict):
    """With ``auto_band`` and no resolution limit: the consensus' gold-standard resolution (half maps from the
    full-band subtomograms, prepared once and kept) sets the E-step band and the PCA features' band as in em2d
    (:func:`~.em2d.auto_resolution_limit`, :func:`~.difference_pca.feature_resolution`). Returns the options and
    the spectra the classifier reads (a view of the full band's on the chosen one)."""
    d = dataset.box
    full_band = VolumeBand(d, d // 2)
    usable = prepared is None or torch.equal(prepared.band.idx, full_band.idx)
    if not (opt.auto_band and opt.resolution_limit_A is None and usable):
        return opt, prepared
    full = prepared or PreparedSpectra(dataset, full_band, opt)
    rec = EM3DClassifier(dataset, replace(opt, n_classes=1), full).class_reconstructions(
        np.zeros(dataset.n_particles, dtype=int), dataset.half_set)[0]  # fmt: skip
    if rec is None:
        return opt, full
    info["consensus_resolution_A"] = round(rec.resolution, 2)
    opt = replace(opt, resolution_limit_A=auto_resolution_limit(rec.resolution, d, dataset.pixel_size))
    if opt.init_resolution_A is None:
        opt = replace(opt, init_resolution_A=round(feature_resolution(rec.resolution, dataset.pixel_size), 2))
    limit = d * dataset.pixel_size / opt.resolution_limit_A
    return opt, BandView(full, VolumeBand(d, limit))


def _best_start(em: EM3DClassifier, starts: dict[str, tuple[np.ndarray, torch.Tensor | None]], opt: EM3DOptions,
                progress, info: dict) -> int:  # fmt: skip
    """Run ``opt.start_iterations`` iterations from each start (labels and variability mask) and leave ``em`` in
    the state of the one with the highest log-likelihood (its iterations stay in the log); returns the iterations
    done (:func:`~.engine.best_of_starts`, as em2d)."""
    fresh = em.state(0)  # noise and signal power of the consensus

    def begin(start: tuple[np.ndarray, torch.Tensor | None]) -> None:
        em.restore(fresh)
        em.variability = start[1]
        em.initialise(labels=start[0])

    best = best_of_starts(em, starts, begin, n_short=max(1, min(opt.start_iterations, opt.n_iter)),
                          n_iter=opt.n_iter, anneal_start=opt.anneal_start, n_images=em.ds.n_particles,
                          progress=progress, info=info)  # fmt: skip
    return em.restore(best)


def prepare_em3d(dataset, options: EM3DOptions | None = None) -> PreparedSpectra:
    """Prepared (and, when they fit, cached) spectra of ``dataset`` for :func:`classify_em3d` runs with the same
    band, batch size and oversampling; the spectra are made on the first pass that needs them."""
    opt = options or EM3DOptions()
    d = dataset.box
    limit = d // 2 if opt.resolution_limit_A is None else d * dataset.pixel_size / opt.resolution_limit_A
    return PreparedSpectra(dataset, VolumeBand(d, limit), opt)


def classify_em3d(
    dataset,
    options: EM3DOptions | None = None,
    initial_maps: torch.Tensor | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    prepared: PreparedSpectra | None = None,
    checkpoint: Path | None = None,
) -> Result:
    """EM classification of 3D subtomograms with per-voxel weights, poses given or searched locally.

    ``dataset``: a :class:`~tomohet.data.subtomo.Subtomograms` (RELION 3.1 or 4 files) or a
    :class:`~tomohet.data.model.TiltSeriesParticles` (the subtomograms are made in memory, in batches, in the
    reference frame). ``initial_maps [K, D, D, D]`` real, for ``init="maps"``. ``progress(stage, done, total)``
    reports particles done per stage. Returns a :class:`Result` with ``labels [N]``, ``posteriors [N, K]``, class
    maps ``[K, D, D, D]``, one log entry per iteration and ``extra`` (``sigma2 [D//2+1]``, ``seconds``,
    ``prepare_seconds``: the first pass, which makes the spectra unless ``prepared`` (:func:`prepare_em3d`) already
    holds them). ``checkpoint`` (a file) is written after every iteration and, if it exists, the run resumes from
    it (same classes, box and resolution limit; ``n_iter`` may differ: the run continues up to it).

    With a local pose search (``local_angles_deg`` / ``local_shifts_px``, :mod:`.subtomo_local_pose`) the poses are
    refined first against one class (``pose_search_iterations`` iterations), then the classes start from the
    refined poses and search them again on a grid 4x finer for :data:`~.em2d.CLASS_POSE_ITERATIONS` iterations
    after the start is chosen, as :func:`~.em2d.classify_em2d` does; ``extra`` then holds the corrections
    (``pose_rotation [N, 3, 3]``, ``pose_offset_px [N, 3]``, :mod:`tomohet.data.poses`)."""
    opt = options or EM3DOptions()
    if not _searches_poses(opt):
        return _classify_em3d(dataset, opt, initial_maps, progress, prepared, checkpoint)
    if opt.n_classes == 1 or initial_maps is not None or opt.init == "maps":
        return _classify_em3d(dataset, opt, initial_maps, progress, prepared, checkpoint)
    first = replace(opt, n_classes=1, init="random", n_iter=opt.pose_search_iterations)
    pose_checkpoint = None if checkpoint is None else Path(checkpoint).with_name(Path(checkpoint).stem + "_poses.pt")
    stage = None if progress is None else (lambda name, done, total: progress(f"poses: {name}", done, total))
    pre = _classify_em3d(dataset, first, None, stage, prepared, pose_checkpoint)
    second = replace(opt, local_angles_deg=opt.local_angles_deg / 4, local_shifts_px=opt.local_shifts_px / 4,
                     pose_search_iterations=min(CLASS_POSE_ITERATIONS, opt.pose_search_iterations))  # fmt: skip
    # the class stage searches the same corrections further, with the prior widths the first stage estimated (the
    # prior is on the deviation from the pose read, which the refined poses already are ~3 degrees away from)
    last = pre.log[-1] if pre.log else {}
    widths = (last["sigma_angles_deg"], last["sigma_shifts_px"]) if "sigma_angles_deg" in last else None
    poses = (pre.extra["pose_rotation"], pre.extra["pose_offset_px"], widths)
    res = _classify_em3d(dataset, second, None, progress, pre.extra["prepared_spectra"], checkpoint, poses=poses)
    res.options = asdict(opt)
    res.extra.update(pose_refinement_seconds=round(pre.extra["seconds"], 2), pose_refinement_log=pre.log)
    return res


def _searches_poses(opt: EM3DOptions) -> bool:
    return opt.local_angles_deg > 0 or opt.local_shifts_px > 0


def _view_for(dataset, opt: EM3DOptions, prepared: PreparedSpectra | None):
    """``prepared`` seen on the band of ``opt`` (itself, a band view of it, or None when it is of another dataset,
    batch size or oversampling, or does not cover that band)."""
    if prepared is None or prepared.ds is not dataset:
        return None
    if (prepared.opt.batch_size, prepared.opt.oversampling) != (opt.batch_size, opt.oversampling):
        return None
    band = prepare_em3d(dataset, opt).band
    if torch.equal(prepared.band.idx, band.idx):
        return prepared
    if bool((prepared.band.lookup[band.idx] < 0).any()):
        return None
    return BandView(prepared, band)


def _classify_em3d(
    dataset,
    options: EM3DOptions,
    initial_maps: torch.Tensor | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    prepared: PreparedSpectra | None = None,
    checkpoint: Path | None = None,
    poses: tuple | None = None,
) -> Result:
    """:func:`classify_em3d` in one stage; with a local search in ``options``, from ``poses`` (rotation and offset
    corrections and prior widths to start from; None: the poses as read)."""
    opt = options or EM3DOptions()
    t0 = time.perf_counter()
    n = dataset.n_particles
    info: dict = {}
    start = 0
    fingerprint = run_fingerprint("em3d", {**asdict(opt), "maps": initial_maps is not None}, dataset)
    state = load_checkpoint(checkpoint, fingerprint)
    if state is not None:  # the bands the run chose
        opt = replace(opt, resolution_limit_A=state.get("resolution_limit_A", opt.resolution_limit_A),
                      init_resolution_A=state.get("init_resolution_A", opt.init_resolution_A))  # fmt: skip
        prepared = _view_for(dataset, opt, prepared)
    elif poses is not None and opt.auto_band and opt.resolution_limit_A is None:
        # the band from the consensus at the corrected poses; the classifier reads the data as read and corrects
        from .subtomo_local_pose import CorrectedSpectra  # lazy: it builds on this module

        full = _view_for(dataset, replace(opt, resolution_limit_A=None), prepared) or prepare_em3d(dataset, opt)
        opt, view = _automatic_band(dataset, opt, CorrectedSpectra(full, *poses[:2]), info)
        prepared = _view_for(dataset, opt, full)
    else:
        opt, prepared = _automatic_band(dataset, opt, prepared, info)
    if _searches_poses(opt):
        from .local_pose import PoseSearch
        from .subtomo_local_pose import LocalPoseEM3D

        search = PoseSearch(opt.local_angles_deg, opt.local_shifts_px, opt.sigma_angles_deg, opt.sigma_shifts_px,
                            n_iterations=opt.pose_search_iterations)  # fmt: skip
        em = LocalPoseEM3D(dataset, opt, prepared, search, *(poses or (None, None, None)))
    else:
        em = EM3DClassifier(dataset, opt, prepared)
    if state is not None:
        start = em.restore(state)
        info["resumed_from_iteration"] = start
        t_prep = 0.0
    else:
        consensus = em.consensus()  # first pass: prepares (and caches) the spectra
        t_prep = time.perf_counter() - t0
        if initial_maps is not None or opt.init == "maps":
            if initial_maps is None:
                raise ValueError("init='maps' needs initial_maps")
            em.initialise(maps=initial_maps)
        else:
            labels = initial_labels(opt.init, n, opt.n_classes, opt.seed, lambda: em.pca_initial_labels(consensus))
            if opt.init == "pca":
                info["init_class_sizes"] = np.bincount(labels, minlength=opt.n_classes).tolist()
            em.initialise(labels=labels)
            if opt.init == "pca" and _tries_rare_starts(opt, n):
                starts = {"pca": (labels, em.variability), **em.rare_state_starts(consensus)}
                em.search_poses = False  # the starts are compared at the poses they all begin from
                start = _best_start(em, starts, opt, progress, info)
                em.search_poses = True
            if em.variability is not None:
                info["variability_mask_fraction"] = round(float(em.variability.mean()), 4)
    run_iterations(em, n_iter=opt.n_iter, start=start, finished=is_finished(state, opt.n_iter),
                   anneal_start=opt.anneal_start, tol_changes=opt.tol_changes, n_particles=n, n_images=n,
                   progress=progress, checkpoint=checkpoint, fingerprint=fingerprint)  # fmt: skip
    return Result(
        method="em3d", options=asdict(opt), labels=em.posteriors.argmax(1), posteriors=em.posteriors,
        volumes=em.real_volumes(), pixel_size=dataset.pixel_size, log=em.log,
        extra={"sigma2": em.sigma2.float().numpy(), "seconds": time.perf_counter() - t0, "prepare_seconds": t_prep,
               "prepared_spectra": em.prepared_source(),
               "e_step_limit_A": round(opt.resolution_limit_A or 2 * dataset.pixel_size, 2),
               "init_resolution_A": opt.init_resolution_A,
               "noise_model": opt.noise_model, **info, **em.pose_corrections()},
    )  # fmt: skip


def subtomogram_class_maps(dataset, labels: np.ndarray, n_classes: int, prepared: PreparedSpectra | None = None):
    """Gold-standard class maps (:meth:`EM3DClassifier.class_reconstructions`) of ``labels`` from the subtomograms,
    over the full band; ``prepared`` spectra of a run are reused when they cover the full band."""
    full = EM3DOptions(n_classes=n_classes)
    band = VolumeBand(dataset.box, dataset.box // 2)
    reuse = prepared is not None and prepared.ds is dataset and torch.equal(prepared.band.idx, band.idx)
    if reuse:
        full = EM3DOptions(n_classes=full.n_classes, batch_size=prepared.opt.batch_size,
                           oversampling=prepared.opt.oversampling)  # fmt: skip
    return EM3DClassifier(dataset, full, prepared if reuse else None).class_reconstructions(labels, dataset.half_set)

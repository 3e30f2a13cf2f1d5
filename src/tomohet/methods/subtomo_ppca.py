"""Probabilistic PCA of subtomograms with their per-voxel weights: the linear model under the subtomogram VAE
(:mod:`.vae3d`), the 3D counterpart of tilt-space PPCA (:mod:`.ppca`, :mod:`.ppca_pass`).

Data as the 3D EM sees them (:mod:`.em3d`, :mod:`.subtomo_spectra`): particle i's CTF-premultiplied spectrum
``d_i`` and its CTF^2 / wedge weight ``w_i`` on the in-band coefficients ``[P]`` of the D grid, in the particle's own
(tomogram) frame for the E-step and resampled once into the reference frame for the M-step; 2D tilt stacks are
inserted straight into the reference frame. Model: particle i's map is ``mu + sum_l a_il W_l``; the noise of a
back-projected subtomogram has variance ``w_i(k) sigma2(shell)`` voxel by voxel (em3d's weighted model), so

    log p(d_i | a) = -1/2 sum_k q_k |r_ik - w_ik (W a)_k|^2 / w_ik + const,   r_i = d_i - w_i mu,  q = mult / sigma2

is a quadratic in ``a`` with ``b_i = sum_k q_k Re(conj(W_k) r_ik)`` and ``G_i = sum_k q_k w_ik Re(conj(W_k) W_k^T)``:
the same sufficient statistics as a tilt image's in :class:`~.ppca_pass.ImageStatistics`, so the VAE's networks
train on them unchanged (Tipping & Bishop 1999, J. R. Stat. Soc. B 61:611, with the wedge/CTF^2 weights).

**Sectors.** The statistics are kept per *sector* of Fourier space: the in-band voxels of the particle's own frame
grouped by the angle ``atan2(k_x, k_z)`` about the tilt axis (y), in ``sectors`` equal bins over 180 degrees. In the
tomogram frame the central slice of a tilt at angle ``alpha`` is exactly the voxels at that angle, so a sector is
a group of neighbouring tilts, and sectors play the role of the tilt images of the 2D model: a random subset
encodes a particle in training (tomoDRGN's tilt subsampling), a seeded fraction of each particle's sectors is
held out of the E-step, the maps and the noise power (the held-out gain that shows overfitting), and sectors the
missing wedge leaves empty carry no information. 2D stacks inserted in the reference frame get the same
partition of their reference-frame spectrum.

M-step: per in-band voxel the ``(L+1) x (L+1)`` normal equations ``(sum_i w_i E[y y^T] + prior) M = sum_i d_i E[y]``
(``y = (1, a)``; the Wiener prior ``sigma2 / (fudge tau2)`` for the mean and ``kappa`` times less power for the
basis, ``kappa`` by EM, as :mod:`.ppca`), then the real-space mask and, for the basis, the variability mask. No
interpolation enters the reference-frame sums, so the solve is exact (the 2D model needs a Newton step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.bands import VolumeBand
from ..physics.filters import soft_sphere
from .ppca_pass import ImageStatistics, after_pass, basis_power_ratio
from .subtomo_spectra import ClassReferences


def sector_index(freq: torch.Tensor, sectors: int) -> torch.Tensor:
    """Sector of each frequency ``[..., 3]`` (x, y, z): ``floor((atan2(k_x, k_z) mod pi) / (pi / sectors))``
    (Friedel mates share a sector; the tilt axis is y)."""
    theta = torch.remainder(torch.atan2(freq[..., 0].double(), freq[..., 2].double()), math.pi)
    return (theta * (sectors / math.pi)).long().clamp(0, sectors - 1)


@dataclass
class SubtomoPassState:
    """What one pass does (see :meth:`SubtomoPPCA.run_pass`); the fields of :class:`~.ppca_pass.PassState` that
    apply to subtomograms."""

    latents: np.ndarray | None = None  # [N, L] given latents: M-step sums from them (no E-step)
    mstep: bool = True
    posterior: Callable | None = None  # (particles, ImageStatistics) -> (mean [n, L], cov [n, L, L])
    image_stats: bool = False  # return every particle's per-sector statistics


@dataclass
class SubtomoSums:
    """Sums of one pass (particle order): posterior moments, log-likelihoods, M-step and noise-power sums."""

    mean: np.ndarray  # [N, L]
    cov: np.ndarray  # [N, L, L]
    log_likelihood: np.ndarray  # [N]
    a: torch.Tensor | None  # [P, L+1, L+1] sum_i w_i E[y y^T] (reference frame, held-in voxels)
    c: torch.Tensor | None  # [L+1, P] complex sum_i d_i E[y]
    sig_num: torch.Tensor  # [S] expected squared residuals per shell
    sig_den: torch.Tensor  # [S] their weight per shell
    images: ImageStatistics | None = None  # per-sector statistics [N, T, ...] (float32)


class SubtomoPPCA:
    """State and steps of subtomogram PPCA (module docstring); the interface :class:`~.vae.VAEModel` uses of
    :class:`~.ppca.PPCAModel` (``iterate``, ``run_pass``, ``pass_state``, ``update_sigma2``, ``m_step``,
    ``expand``, ``maps``, ``held_out``, ``unit_visibility``, ``state`` / ``restore``)."""

    def __init__(self, dataset, options, source, focus_mask: torch.Tensor | None = None, sectors: int = 12):
        self.ds, self.opt, self.source = dataset, options, source
        self.band: VolumeBand = source.band
        self.d = self.m = dataset.box
        self.L = options.n_components
        self.sectors = sectors
        r = options.mask_radius_px if options.mask_radius_px is not None else 0.45 * self.d
        self.mask = soft_sphere(self.d, r, edge=3.0)
        if focus_mask is not None:
            self.mask = self.mask * focus_mask.float()
        p = self.band.size
        self.spectra = torch.zeros(self.L + 1, p, dtype=torch.complex128)  # mean then basis, in-band
        self.sigma2 = torch.ones(self.band.n_shells, dtype=torch.float64)
        self.tau2 = torch.ones(self.band.n_shells, dtype=torch.float64)
        self.kappa = options.kappa_init
        self.variability: torch.Tensor | None = None  # [D, D, D] mask of the basis maps
        self.held_out: np.ndarray | None = None  # [N, T] sectors kept out of every pass's sums
        self.mean = np.zeros((dataset.n_particles, self.L))
        self.cov = np.zeros((dataset.n_particles, self.L, self.L))
        self.prev: tuple[torch.Tensor, np.ndarray] | None = None
        self.log: list[dict] = []
        own = sector_index(self.band.freq, sectors)
        self._onehot = torch.nn.functional.one_hot(own, sectors).double()  # [P, T]
        self._members = [torch.nonzero(own == t).squeeze(1) for t in range(sectors)]

    @property
    def maps(self) -> torch.Tensor:
        """Mean and basis maps ``[L+1, D, D, D]`` float32 (real space, origin at D//2)."""
        return self.band.to_real(self.spectra)

    def unit_visibility(self) -> np.ndarray:
        """``[N, T]`` bool: sectors of each particle's own-frame spectrum with weight (the missing wedge's are
        empty); one pass over the weights."""
        out = np.zeros((self.ds.n_particles, self.sectors), dtype=bool)
        for c in self.source:
            per = c.w.double() @ self._onehot
            out[c.particles] = (per > 1e-3 * per.amax(1, keepdim=True).clamp_min(1e-300)).numpy()
        return out

    def pass_state(self, **kw) -> SubtomoPassState:
        return SubtomoPassState(**kw)

    # ------------------------------------------------------------------------------------------------ pass
    def _sector_statistics(self, d, w, mu, basis, q) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``b [n, T, L]``, ``G [n, T, L, L]``, ``r2 [n, T]`` per sector (module docstring); ``mu [n|1, P]``,
        ``basis [n|1, L, P]`` in the particle's frame. ``r2`` leaves out ``sum q |d|^2 / w``, which does not depend on
        the model (and is unstable where an inserted subtomogram's weight is tiny but its data are not, as at the
        edge of the wedge): ``r2 = sum_k q_k (w_k |mu_k|^2 - 2 Re(conj(d_k) mu_k))``, the 3D EM's form."""
        r = d - w * mu
        n, t = r.shape[0], self.sectors
        bvec = ((basis.conj() * (q * r)[:, None]).real @ self._onehot).transpose(1, 2)  # [n, T, L]
        gram = torch.zeros(n, t, self.L, self.L, dtype=torch.float64)
        for s, idx in enumerate(self._members):
            if len(idx) == 0:
                continue
            bs = torch.view_as_real(basis[:, :, idx].expand(n, -1, -1)).reshape(n, self.L, -1)  # [n, L, 2P_s]
            ws = (q[idx] * w[:, idx]).repeat_interleave(2, 1)  # [n, 2P_s]
            gram[:, s] = torch.bmm(bs * ws[:, None], bs.transpose(1, 2))
        r2 = (q * (w * mu.abs() ** 2 - 2 * (d.conj() * mu).real)) @ self._onehot
        return bvec, gram, r2

    def run_pass(self, state: SubtomoPassState, progress: Callable[[int], None] | None = None) -> SubtomoSums:
        """E-step (Gaussian posterior of each particle's coefficients from its held-in sectors, or the moments of
        ``state.posterior``), M-step sums in the reference frame and noise-power sums, over all particles."""
        b, n_l, t = self.band, self.L, self.sectors
        q = b.mult / self.sigma2[b.shell]  # [P]
        log_s2 = b.mult * torch.log(self.sigma2[b.shell])
        refs = ClassReferences(b, self.spectra) if state.latents is None else None
        a_sum = torch.zeros(b.size, n_l + 1, n_l + 1, dtype=torch.float64) if state.mstep else None
        c_sum = torch.zeros(n_l + 1, b.size, dtype=torch.complex128) if state.mstep else None
        num = torch.zeros(b.n_shells, dtype=torch.float64)
        den = torch.zeros(b.n_shells, dtype=torch.float64)
        means, covs, lls, stats = [], [], [], []
        eye = torch.eye(n_l, dtype=torch.float64)
        for c in self.source:
            idx = c.particles
            n = len(idx)
            held = torch.as_tensor(self.held_out[idx]) if self.held_out is not None else torch.zeros(n, t, dtype=bool)
            keep_sec = (~held).double()  # [n, T]
            keep_own = keep_sec @ self._onehot.T  # [n, P]
            if state.latents is not None:
                mean = torch.as_tensor(state.latents[idx], dtype=torch.float64)
                cov = torch.zeros(n, n_l, n_l, dtype=torch.float64)
                ll = torch.zeros(n, dtype=torch.float64)
            else:
                d, w = c.d.to(torch.complex128), c.w.double()
                vr = refs.sample(c.rot)  # [n|1, L+1, P] in the particle's frame
                r = d - w * vr[:, 0]
                basis = vr[:, 1:]
                bsec, gsec, r2sec = self._sector_statistics(d, w, vr[:, 0], basis, q)
                bvec = (bsec * keep_sec[..., None]).sum(1)
                gram = (gsec * keep_sec[..., None, None]).sum(1)
                r2q = (r2sec * keep_sec).sum(1) + ((w > 0).double() * keep_own * log_s2).sum(1)
                sec_stats = ImageStatistics(bsec.float(), gsec.float(), r2sec.float(), held)
                if state.image_stats:
                    stats.append(sec_stats)
                if state.posterior is None:  # the Gaussian posterior
                    chol = torch.linalg.cholesky(eye + gram)
                    cov = torch.cholesky_inverse(chol)
                    mean = (cov @ bvec[:, :, None])[..., 0]
                    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
                    ll = -0.5 * (r2q - (bvec * mean).sum(-1) + logdet)
                else:
                    mean, cov = state.posterior(idx, sec_stats)
                    second = cov + mean[:, :, None] * mean[:, None, :]
                    ll = -0.5 * (r2q - 2 * (bvec * mean).sum(-1) + (gram * second).sum((1, 2)))
                # noise power: E|r - w W a|^2 = |r - w W m|^2 + w^2 sum_lk C_lk Re(conj(W_l) W_k), per voxel
                fit = torch.einsum("nl,nlp->np", mean.to(torch.complex128), basis.expand(n, -1, -1))
                e2 = (r - w * fit).abs() ** 2
                br, bi = basis.real.expand(n, -1, -1), basis.imag.expand(n, -1, -1)
                quad = (torch.bmm(cov, br) * br).sum(1) + (torch.bmm(cov, bi) * bi).sum(1)
                num += b.per_shell(((e2 + w * w * quad) * keep_own).sum(0) * b.mult)
                den += b.per_shell((w * keep_own).sum(0) * b.mult)
            means.append(mean.numpy())
            covs.append(cov.numpy())
            lls.append(ll.numpy())
            if state.mstep:
                keep_ref = keep_own if c.rot is None else self._reference_keep(c.rot, keep_sec)
                y = torch.cat([torch.ones(n, 1, dtype=torch.float64), mean], 1)
                yy = y[:, :, None] * y[:, None, :]
                yy[:, 1:, 1:] += cov
                c_sum += y.T.to(torch.complex128) @ (c.d_ref.to(torch.complex128) * keep_ref)
                a_sum += torch.einsum("np,nkl->pkl", c.w_ref.double() * keep_ref, yy)
            if progress:
                progress(n)
        cat = np.concatenate
        images = None
        if state.image_stats and stats:
            fields = ("b", "gram", "r2", "held_out")
            images = ImageStatistics(*(torch.cat([getattr(s, f) for s in stats]) for f in fields))
        return SubtomoSums(cat(means), cat(covs), cat(lls), a_sum, c_sum, num, den, images)

    def _reference_keep(self, rot: torch.Tensor, keep_sec: torch.Tensor) -> torch.Tensor:
        """``[n, P]`` held-in flags of reference-frame voxels ``q``: the sector of ``R_i q``, where the voxel's data
        came from in the particle's frame (:func:`~.subtomo_spectra.resample_to_reference`)."""
        rq = torch.einsum("nij,pj->npi", rot.double(), self.band.freq.double())
        return torch.gather(keep_sec, 1, sector_index(rq, self.sectors))

    # ----------------------------------------------------------------------------------------------- steps
    def initialise(self, consensus: torch.Tensor, sigma2: torch.Tensor, tau2: torch.Tensor, latents: np.ndarray,
                   progress=None) -> None:  # fmt: skip
        """Mean map = the consensus (in-band spectrum, masked), noise and signal power from the 3D EM's consensus
        pass; then the maps from the start latents taken as known."""
        self.sigma2, self.tau2 = sigma2.double().clone(), tau2.double().clone()
        self.spectra = torch.zeros_like(self.spectra)
        self.spectra[0] = self.band.from_real(self.band.to_real(consensus) * self.mask).to(torch.complex128)
        self.m_step(self.run_pass(SubtomoPassState(latents=latents), progress), start=True)

    def update_sigma2(self, sums: SubtomoSums) -> None:
        s2 = torch.where(sums.sig_den > 0, sums.sig_num / sums.sig_den.clamp_min(1e-300), self.sigma2)
        self.sigma2 = s2.clamp_min(1e-12 * float(s2.max()))

    def m_step(self, sums: SubtomoSums, expansion: np.ndarray | None = None, start: bool = False) -> None:
        """The regularised per-voxel solve (module docstring), masks, and the estimate of ``kappa`` (at the
        ``start``, and every iteration with ``update_kappa``, for the basis after the parameter expansion
        ``expansion``: :func:`~.ppca_pass.basis_power_ratio`)."""
        b, l1 = self.band, self.L + 1
        s2 = self.sigma2[b.shell]
        tau = self.tau2[b.shell].clamp_min(1e-30) * self.opt.tau2_fudge
        prior = torch.cat([(s2 / tau)[:, None], (s2 / (self.kappa * tau))[:, None].expand(-1, l1 - 1)], 1)
        inv = torch.linalg.inv(sums.a + torch.diag_embed(prior))  # [P, L+1, L+1]
        sol = torch.einsum("pkl,lp->kp", inv.to(torch.complex128), sums.c)  # [L+1, P]
        real = b.to_real(sol) * self.mask
        if self.variability is not None:
            real[1:] *= self.variability
        self.spectra = b.from_real(real).to(torch.complex128)
        if self.L > 0 and (start or self.opt.update_kappa):  # posterior covariance sigma2 x inv per re / im
            self.kappa = basis_power_ratio(sol[1:].T, s2[:, None, None] * inv[:, 1:, 1:], tau, expansion)

    def expand(self, eta: np.ndarray, chol: np.ndarray) -> None:
        """Parameter expansion as :meth:`~.ppca.PPCAModel.expand`: ``mu += W eta``, ``W <- W chol``."""
        w = self.spectra[1:]
        self.spectra[0] += torch.from_numpy(eta).to(w.dtype) @ w
        self.spectra[1:] = torch.from_numpy(chol).T.to(w.dtype) @ w

    def iterate(self, temperature: float = 1.0, progress: Callable[[int], None] | None = None) -> dict:
        """One EM iteration: E-step, noise power, M-step, expansion."""
        sums = self.run_pass(SubtomoPassState(), progress)
        return after_pass(self, sums, self.spectra[1:].clone(), "subtomogram PPCA")

    def _changes(self, basis: torch.Tensor, mean: np.ndarray, cov: np.ndarray) -> float:
        """Fraction of particles whose map deviation ``W a`` moved by more than 0.1 posterior sd."""
        if self.prev is None:
            return 1.0
        m = self.band.mult

        def gram(x, y):
            return ((x * m) @ y.conj().T).real

        w1, w0 = basis, self.prev[0]
        z1, z0 = torch.from_numpy(mean), torch.from_numpy(self.prev[1])
        d2 = ((z1 @ gram(w1, w1)) * z1).sum(1) - 2 * ((z1 @ gram(w1, w0)) * z0).sum(1)
        d2 = d2 + ((z0 @ gram(w0, w0)) * z0).sum(1)
        sd2 = torch.einsum("lk,nkl->n", gram(w1, w1), torch.from_numpy(cov))
        return float((d2.clamp_min(0) > 0.01 * sd2).double().mean())

    def state(self, iteration: int, finished: bool = False) -> dict:
        return {"spectra": self.spectra, "sigma2": self.sigma2, "tau2": self.tau2, "kappa": self.kappa,
                "variability": self.variability, "mean": self.mean, "cov": self.cov, "prev": self.prev,
                "log": self.log, "iteration": iteration, "finished": finished,
                "resolution_limit_A": self.opt.resolution_limit_A}  # fmt: skip

    def restore(self, s: dict) -> None:
        self.spectra, self.sigma2, self.tau2, self.kappa = s["spectra"], s["sigma2"], s["tau2"], s["kappa"]
        self.variability, self.mean, self.cov, self.prev, self.log = (
            s["variability"], s["mean"], s["cov"], s["prev"], s["log"]
        )  # fmt: skip

"""One pass of tilt-space probabilistic PCA over a partition of particles: the E-step (each particle's latent
posterior from all its tilts jointly) and the sums of the M-step and of the noise power. The model and the
loop are in :mod:`.ppca`.

Model: ``X_ij = H_ij P(mu + sum_l z_il W_l, A_ij) + N_ij`` on the Fourier-cropped working grid, ``z_i ~ N(0, I)``,
Gaussian noise with power ``sigma2(shell)`` per full-spectrum coefficient (``physics.likelihood``). With
``B_ijl = H_ij P(W_l, A_ij)`` and ``r_ij = X_ij - H_ij P(mu, A_ij)``, the log-likelihood of particle i in ``z`` is
``-1/2 sum_j sum_k q_k |r_ijk - B_ijk z|^2`` (``q = multiplicity / sigma2`` on valid pixels), so the posterior
is Gaussian with precision ``I + G_i``, ``G_i = sum_j Re(B_ij^H diag(q) B_ij)``, and mean ``Cov_i b_i``,
``b_i = sum_j Re(B_ij^H diag(q) r_ij)`` (Tipping & Bishop 1999, J. R. Stat. Soc. B 61:611; for cryo-EM images
through a CTF: cryoSPARC 3DVA, Punjani & Fleet 2021, J. Struct. Biol. 213:107702, and RECOVAR, Gilles & Singer
2024, PNAS 121:e2419140121, whose tilt-series mode sums over a particle's tilts the same way).

M-step sums: with ``y_i = (1, z_i)`` the expected complete log-likelihood is quadratic in the L+1 maps
``(mu, W_1..W_L)``; its normal equations couple the maps per Fourier voxel v through
``A_v = sum_i E[y_i y_i^T] D_i(v)`` and ``c_v = sum_i E[y_i] R_i(v)``, where ``D_i`` and ``R_i`` are particle i's own
insertions (trilinear, the kernel of :class:`~tomohet.physics.projector.FourierAccumulator`) of
``H^2 / sigma2`` and ``H X / sigma2``. Inserting per particle and contracting with the ``(L+1) x (L+1)`` moments
afterwards costs one 3-channel insertion per image instead of ``(L+1)(L+2)/2`` weight insertions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.insertion import band_points, scatter_channels, slice_points, trilinear_corners
from ..physics.likelihood import ImageBand, PreparedImages, SpectraCache, prepare_images_cached
from ..physics.projector import VolumeProjector


@dataclass
class PassState:
    """What one pass needs (picklable: sent to Dask workers)."""

    maps: torch.Tensor  # [1+L, D, D, D]: mean map then basis maps
    sigma2: torch.Tensor  # [D//2+1] noise power per shell
    size: int  # working box M
    resolution_limit_A: float | None
    max_dose: float | None
    batch_size: int
    subtract: torch.Tensor | None = None  # consensus outside the focus mask, removed from the images
    latents: np.ndarray | None = None  # [N, L] given latents: M-step sums from them (no E-step)
    mstep: bool = True  # accumulate the M-step sums
    noise_only: bool = False  # only the noise power of the residuals against the mean map (maps = [mean])
    posterior: Callable | None = None  # replaces the Gaussian E-step: see :class:`ImageStatistics`
    image_stats: bool = False  # also return every image's statistics (``PassSums.images``)
    held_out: np.ndarray | None = None  # [N, T] bool: images left out of the M-step and noise sums


@dataclass
class ImageStatistics:
    """Each image's sufficient statistics for the coefficients ``a`` of the basis maps (``B_ij = H_ij P(W, A_ij)``,
    ``r_ij`` the residual against the mean map, ``q`` multiplicity / sigma2 on valid pixels):
    ``b`` ``[n, T, L]`` = ``Re(B^H diag(q) r)``, ``gram`` ``[n, T, L, L]`` = ``Re(B^H diag(q) B)``,
    ``r2`` ``[n, T]`` = ``r^H diag(q) r``; an image's log-likelihood at ``a`` is ``-(r2 - 2 a.b + a.gram.a) / 2``
    up to a constant. ``held_out`` ``[n, T]`` marks images kept out of the E-step and the M-step.
    A ``posterior(particles, stats) -> (mean [n, L], cov [n, L, L])`` hook in :class:`PassState` receives them
    and returns the moments of ``a`` the M-step uses (e.g. the amortised encoder of :mod:`.vae`)."""

    b: torch.Tensor
    gram: torch.Tensor
    r2: torch.Tensor
    held_out: torch.Tensor


@dataclass
class PassSums:
    """Sums of one partition, merged in partition order (results do not depend on where partitions ran)."""

    particles: np.ndarray  # [n]
    mean: np.ndarray  # [n, L] posterior means
    cov: np.ndarray  # [n, L, L] posterior covariances
    log_likelihood: np.ndarray  # [n] marginal log-likelihood (up to a constant independent of the model)
    a: torch.Tensor | None  # [G^3, L+1, L+1] M-step matrices (not Hermitian-completed)
    c: torch.Tensor | None  # [G^3, L+1, 2] M-step gradients (re, im) at the pass's maps
    sig_sum: torch.Tensor  # [D//2+1]
    sig_cnt: torch.Tensor
    images: ImageStatistics | None = None  # per-image statistics (float32) when ``PassState.image_stats``

    def merge(self, other: PassSums) -> PassSums:
        def add(x, y):
            return None if x is None else x + y

        images = None
        if self.images is not None:
            images = ImageStatistics(*(torch.cat([getattr(self.images, f), getattr(other.images, f)])
                                       for f in ("b", "gram", "r2", "held_out")))  # fmt: skip
        return PassSums(
            np.concatenate([self.particles, other.particles]), np.concatenate([self.mean, other.mean]),
            np.concatenate([self.cov, other.cov]), np.concatenate([self.log_likelihood, other.log_likelihood]),
            add(self.a, other.a), add(self.c, other.c), self.sig_sum + other.sig_sum, self.sig_cnt + other.sig_cnt,
            images,
        )  # fmt: skip


def prepared_chunk(ds, chunk: np.ndarray, state: PassState, cache: SpectraCache | None, sub) -> PreparedImages:
    """Prepared spectra of a chunk on the working grid, served from the run's ``cache`` when it holds them."""
    return prepare_images_cached(ds, chunk, cache, size=state.size, max_dose=state.max_dose, subtract=sub)


def insert_per_particle(
    values: torch.Tensor, rotations: torch.Tensor, n_tilts: int, grid: int, channels_per_particle: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trilinear insertion of images ``values`` ``[C, B*T, M, M//2+1]`` (real channels, particle-major images)
    seen with ``rotations`` ``[B*T, 3, 3]``: the first ``C - channels_per_particle`` channels summed over all
    images into one grid ``[C1, G^3]``, the last ``channels_per_particle`` into each particle's own grid
    ``[C2, B, G^3]`` (full centred grid, ``scale = G / M``, before Hermitian completion). The kernel, band and
    Friedel halving of :class:`~tomohet.physics.projector.FourierAccumulator` (:mod:`~tomohet.physics.insertion`),
    so completing the sums (``x(k) + conj x(-k)``) equals inserting the images there."""
    nch, bt, m = values.shape[:3]
    g, b, dev = grid, bt // n_tilts, values.device
    idx, _, half = band_points(m, g, dev)
    flat, w = trilinear_corners(slice_points(rotations, m, g, centre=g // 2), g)  # [8, BT * n_band]
    vals = (values.reshape(nch, bt, -1)[:, :, idx] * half).reshape(nch, -1)
    n1 = nch - channels_per_particle
    shared = torch.zeros(n1, g**3, dtype=torch.float32, device=dev)
    scatter_channels(shared, flat, w, vals[:n1])
    particle = torch.arange(bt, device=dev) // n_tilts
    flat = flat + (particle[:, None] * g**3).expand(bt, len(idx)).reshape(1, -1)
    own = torch.zeros(channels_per_particle, b * g**3, dtype=torch.float32, device=dev)
    scatter_channels(own, flat, w, vals[n1:])
    return shared, own.reshape(channels_per_particle, b, g**3)


def ppca_pass(
    ds, particles: np.ndarray, state: PassState, cache: SpectraCache | None = None, progress: Callable | None = None
) -> PassSums:
    """E-step, M-step sums and noise-power sums of one partition of particles (the map of the map/reduce)."""
    d, m = ds.box, state.size
    band = ImageBand(d, ds.pixel_size, state.resolution_limit_A, m)
    n_comp = state.maps.shape[0] - 1
    proj = None if state.latents is not None else VolumeProjector(state.maps, oversampling=2, out_size=m)
    sub = VolumeProjector(state.subtract, oversampling=2, out_size=m) if state.subtract is not None else None
    inv_s2 = band.per_pixel(1.0 / state.sigma2)
    qpix = band.weight * inv_s2  # [M, Mh] multiplicity / sigma2 inside the band
    log_norm = (band.weight * band.per_pixel(torch.log(state.sigma2))).reshape(-1)  # Gaussian normaliser x 2
    sig_sum = torch.zeros(band.n_shells, dtype=torch.float64)
    sig_cnt = torch.zeros(band.n_shells, dtype=torch.float64)
    a_sum = torch.zeros(m**3, n_comp + 1, n_comp + 1, dtype=torch.float64) if state.mstep else None
    g_sum = torch.zeros(m**3, 2 * (n_comp + 1), dtype=torch.float64) if state.mstep else None
    means, covs, lls = [], [], []
    eye = torch.eye(n_comp, dtype=torch.float64)
    held = torch.as_tensor(state.held_out) if state.held_out is not None else None
    img_stats: list[ImageStatistics] = []
    for chunk in ds.chunks(state.batch_size, particles):
        p = prepared_chunk(ds, chunk, state, cache, sub)
        b, t = p.n_particles, p.n_tilts
        n, npx = b * t, m * (m // 2 + 1)
        held_chunk = held[chunk] if held is not None else torch.zeros(b, t, dtype=torch.bool)
        img_keep = (~held_chunk).float().reshape(n, 1, 1)  # held-out images enter no sum
        if state.latents is not None:  # given latents (the start): no E-step
            mean = torch.as_tensor(state.latents[chunk], dtype=torch.float64)
            cov = torch.zeros(b, n_comp, n_comp, dtype=torch.float64)
            ll = torch.zeros(b, dtype=torch.float64)
        else:
            pr = proj.project_ft(p.rotations)  # [1+L, BT, M, Mh]
            resid = (p.x - pr[0] * p.h) * p.valid  # [BT, M, Mh]
            q = (qpix * p.valid).reshape(n, npx)  # [BT, P]
            rr = torch.view_as_real(resid).reshape(n, npx, 2)
            r2_img = (rr.square().sum(-1) * q).sum(1).reshape(b, t)  # [B, T]
            keep = (~held_chunk).double()[:, :, None]  # the E-step sees the held-in images only
            r2q = ((r2_img + (p.valid.reshape(n, npx) * log_norm).sum(1).reshape(b, t)).double() * keep[..., 0]).sum(1)
            if state.noise_only:
                s, c = band.shell_sums(resid.abs() ** 2 * img_keep, p.valid * img_keep)
                sig_sum += s
                sig_cnt += c
                if progress:
                    progress(len(chunk))
                continue
            bf = torch.view_as_real(pr[1:] * p.h).permute(1, 0, 2, 3, 4).reshape(n, n_comp, npx, 2)
            bq = bf * q[:, None, :, None]
            bf, bq = bf.reshape(n, n_comp, 2 * npx), bq.reshape(n, n_comp, 2 * npx)
            gram_img = torch.bmm(bq, bf.transpose(1, 2)).reshape(b, t, n_comp, n_comp)  # [B, T, L, L]
            bvec_img = torch.bmm(bq, rr.reshape(n, 2 * npx, 1)).reshape(b, t, n_comp)  # [B, T, L]
            gram = (gram_img.double() * keep[..., None]).sum(1)  # [B, L, L]
            bvec = (bvec_img.double() * keep).sum(1)  # [B, L]
            stats = ImageStatistics(bvec_img, gram_img, r2_img, held_chunk)
            if state.image_stats:
                img_stats.append(stats)
            if state.posterior is None:  # the Gaussian posterior of PPCA
                prec = eye + gram
                chol = torch.linalg.cholesky(prec)
                cov = torch.cholesky_inverse(chol)
                mean = (cov @ bvec[:, :, None])[..., 0]
                logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
                ll = -0.5 * (r2q - (bvec * mean).sum(-1) + logdet)
            else:  # given moments: the expected log-likelihood of the held-in images
                mean, cov = state.posterior(chunk, stats)
                second = cov + mean[:, :, None] * mean[:, None, :]
                ll = -0.5 * (r2q - 2 * (bvec * mean).sum(-1) + (gram * second).sum((1, 2)))
            # noise power: E|r - B z|^2 = |r - B m|^2 + sum_lk C_lk Re(B_l^* B_k) per pixel
            m_img = mean.float().repeat_interleave(t, 0)  # [BT, L]
            c_img = cov.float().repeat_interleave(t, 0)  # [BT, L, L]
            e = rr.reshape(n, 2 * npx) - (m_img[:, :, None] * bf).sum(1)
            quad = (torch.bmm(c_img, bf) * bf).sum(1)  # [BT, 2P]
            r2 = (e.square() + quad).reshape(n, npx, 2).sum(-1).reshape(n, m, m // 2 + 1)
            s, c = band.shell_sums(r2 * p.valid * img_keep, p.valid * img_keep)
            sig_sum += s
            sig_cnt += c
        means.append(mean.numpy())
        covs.append(cov.numpy())
        lls.append(ll.numpy())
        if state.mstep:
            hw = p.h * p.valid * inv_s2 * band.inside * img_keep  # [BT, M, Mh]: H / sigma2 in the band
            y = torch.cat([torch.ones(b, 1, dtype=torch.float64), mean], 1)  # E[(1, z)]
            yy = y[:, :, None] * y[:, None, :]
            yy[:, 1:, 1:] += cov  # E[(1, z)(1, z)^T]
            # gradient of the expected log-likelihood in the maps: E[y_k] H X - H^2 P(sum_l E[y_k y_l] M_l)
            grad = y.float().repeat_interleave(t, 0)[:, :, None, None] * (p.x * hw)[:, None]  # [BT, L+1, M, Mh]
            if state.latents is None:
                grad = (
                    grad
                    - torch.einsum("nkl,lnxy->nkxy", yy.float().repeat_interleave(t, 0).to(pr.dtype), pr)
                    * (p.h * hw)[:, None]
                )
            vals = torch.view_as_real(grad).permute(1, 4, 0, 2, 3).reshape(2 * (n_comp + 1), n, m, m // 2 + 1)
            vals = torch.cat([vals, (p.h * hw)[None]])  # + the CTF^2 weight, inserted per particle
            shared, own = insert_per_particle(vals, p.rotations, t, m, channels_per_particle=1)
            g_sum += shared.T.double()
            ins = own[0]  # [B, G^3]
            a_sum += torch.einsum("bv,bij->vij", ins.double(), yy)
        if progress:
            progress(len(chunk))
    n_p = len(particles)
    cat = np.concatenate
    return PassSums(
        np.asarray(particles),
        cat(means) if means else np.zeros((n_p, n_comp)),
        cat(covs) if covs else np.zeros((n_p, n_comp, n_comp)),
        cat(lls) if lls else np.zeros(n_p),
        a_sum, None if g_sum is None else g_sum.reshape(m**3, n_comp + 1, 2), sig_sum, sig_cnt,
        _cat_images(img_stats, len(particles), ds.n_tilts, n_comp) if state.image_stats else None,
    )  # fmt: skip


def _cat_images(stats: list[ImageStatistics], n: int, t: int, n_comp: int) -> ImageStatistics:
    if not stats:
        z = torch.zeros
        return ImageStatistics(z(n, t, n_comp), z(n, t, n_comp, n_comp), z(n, t), z(n, t, dtype=torch.bool))
    return ImageStatistics(*(torch.cat([getattr(x, f) for x in stats]) for f in ("b", "gram", "r2", "held_out")))


def latent_expansion(mean: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The parameter expansion of a linear latent model (PX-EM; Liu, Rubin & Wu 1998, Biometrika 85:755) from the
    posterior moments ``mean`` ``[N, L]``, ``cov`` ``[N, L, L]``: the latents' mean ``eta`` ``[L]`` and the Cholesky
    factor ``chol`` ``[L, L]`` of their second moment about it, ``S = chol chol^T``. Absorbing them into the maps
    (``mu += W eta``, ``W <- W chol``) makes the next E-step's latents ~N(0, I) again; old ``z = eta + chol z_new``."""
    n_lat = mean.shape[1]
    eta = mean.mean(0)
    s = cov.mean(0) + np.cov(mean.T, bias=True).reshape(n_lat, n_lat)
    return eta, np.linalg.cholesky(s + 1e-9 * np.eye(n_lat))


def basis_power_ratio(
    w_map: torch.Tensor, post_cov: torch.Tensor, tau: torch.Tensor, expansion: np.ndarray | None
) -> float:
    """The EM estimate of ``kappa``, the basis maps' prior power relative to ``tau`` (the mean map's prior power
    per voxel): the mean of ``E|w'|^2 / tau`` over voxels and components, ``E|w'|^2 = |w'_MAP|^2 + 2 Var`` (real
    and imaginary parts, each with the per-voxel posterior covariance ``post_cov`` ``[V, L, L]`` of the basis
    values ``w_map`` ``[V, L]`` complex), taken for the basis **after** the parameter expansion ``w' = chol^T w``
    (``expansion`` = ``chol``, or None for none). Taken before it (until 2026-12-01) the prior's shrinkage of ``W``
    fed back (the expansion grows ``W`` back, the next ``kappa``, from the shrunk ``W``, is smaller) and ``kappa``
    fell ~12% per iteration; taken after it, still ~8% on ``ladder`` (``benchmarks/LANDSCAPE.md``), so PPCA
    estimates it once, from the start maps, unless ``update_kappa``."""
    if expansion is not None:
        chol = torch.as_tensor(expansion, dtype=post_cov.dtype)
        w_map = w_map @ chol.to(w_map.dtype)
        post_cov = chol.T @ post_cov @ chol
    e2 = w_map.abs() ** 2 + 2 * torch.diagonal(post_cov, dim1=1, dim2=2)
    return max(float((e2 / (2 * tau[:, None])).mean()), 1e-6)


def m_step_and_expand(model, sums) -> tuple[np.ndarray, np.ndarray]:
    """M-step, then the parameter expansion of the latents' moments in ``sums`` (:func:`latent_expansion`); the
    M-step is told the expansion that follows, so a ``kappa`` it estimates is for the expanded basis
    (:func:`basis_power_ratio`). Returns ``(eta, chol)``: old coordinates ``z = eta + chol z_new``."""
    eta, chol = latent_expansion(sums.mean, sums.cov)
    model.m_step(sums, expansion=chol)
    model.expand(eta, chol)
    return eta, chol


def after_pass(model, sums, basis: torch.Tensor, what: str) -> dict:
    """The rest of one linear-model EM iteration once its pass gave ``sums`` (shared by tilt-space PPCA and
    subtomogram PPCA): latent change against the previous iteration (``basis`` = the basis before the M-step),
    the latents' moments kept, noise power (``update_noise``), M-step, parameter expansion; the log entry."""
    changes = model._changes(basis, sums.mean, sums.cov)
    model.prev = (basis, sums.mean)
    model.mean, model.cov = sums.mean, sums.cov
    if model.opt.update_noise:
        model.update_sigma2(sums)
    m_step_and_expand(model, sums)
    ll = float(sums.log_likelihood.sum())
    if not math.isfinite(ll):
        raise FloatingPointError(f"{what} log-likelihood is not finite: a map or the noise power went NaN")
    return {"log_likelihood": ll, "changes": changes, "kappa": round(model.kappa, 6),
            "latent_var": np.round(np.var(model.mean, axis=0), 4).tolist()}  # fmt: skip

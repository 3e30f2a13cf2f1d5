"""Tilt-space probabilistic PCA (``ppca``, the default landscape method): a mean map and a low-rank basis of 3D
maps fitted directly to the 2D tilt images through the one forward model, each particle's latent estimated
from all its tilts jointly, with its posterior covariance.

Model (Tipping & Bishop 1999, J. R. Stat. Soc. B 61:611, through the forward model): particle i's map is
``mu + sum_l z_il W_l`` with ``z_i ~ N(0, I)``; its image j is ``X_ij = H_ij P(mu + W z_i, A_ij) + N_ij`` (``H = CTF x
exposure``, per-shell Gaussian noise power ``sigma2`` as in EM classification). EM alternates (details in
:mod:`.ppca_pass`):

- E-step: the Gaussian posterior of every particle's ``z_i`` given all its tilt images (missing tilts and
  masked pixels simply contribute nothing, so the latent of a particle does not depend on which tilts it
  lost, only its uncertainty does);
- M-step: mean and basis maps jointly by solving, per Fourier voxel, the ``(L+1) x (L+1)`` normal equations
  built from the particles' posterior moments and their own CTF^2-weighted insertions, with a Wiener-type
  prior (signal power per shell ``tau2`` from the consensus map, as :mod:`.em2d`; for the basis a fraction
  ``kappa`` of it, ``kappa`` estimated from the start maps' expected power, their posterior variance included,
  and then kept: :func:`~.ppca_pass.basis_power_ratio`), then masked, the basis also confined to where the
  particles vary (below);
- the noise power per shell from the expected residuals.

As in cryoSPARC 3DVA (Punjani & Fleet 2021, J. Struct. Biol. 213:107702) the basis is solved from the
images, not from back-projected subtomograms, so the missing wedge enters only as missing data, and the band
is limited (automatic band from the consensus resolution, Fourier-cropped working grid, as :mod:`.em2d`);
as in RECOVAR (Gilles & Singer 2024, PNAS 121:e2419140121) the latents carry their posterior covariance.
The start is the wedge-masked difference PCA (:mod:`.difference_pca`) or random latents. At the end the basis
is orthonormalised and ordered by the variance of the latents (:func:`~.landscape.orthonormalize_basis`).

Low SNR (``benchmarks/LANDSCAPE.md``, ``ladder`` at SNR 0.005, oracle ARI 0.945): a basis free over the whole box
fits noise (~10^4 voxels per component against 1000 particles), and the update ``kappa = |W_MAP|^2 / |mu|^2``
shrinks the prior every iteration (the posterior variance of the basis, ~30x |W_MAP|^2 there, was left out):
clusters of the latents fell from ARI 0.49 to 0.33 over the iterations. Confining the basis to the variability
mask of the start's difference features (:mod:`.variability`, as the EM confines its class differences) and
the EM update of ``kappa`` take the same data to 0.76 (xd clusters, :mod:`.latent_mixture`). Each voxel's L
basis values are then put on one of L lines shared by the voxels (:func:`~.difference_patterns.voxel_patterns`,
as em2d's class differences: a piece of the structure varies along one direction of the latent space), one
number per voxel instead of L: 0.828 / 0.866 / 0.844 on seeds 0-2 (0.760 / 0.822 / 0.744 without;
``benchmarks/LANDSCAPE.md``). Re-estimated after every M-step, ``kappa`` fell ~8-12% per iteration without end
(a prior scale fitted jointly with the maps it shrinks has no floor at this SNR) and the clusters with it (seed 0:
0.868 after 2 iterations, 0.802 after 15); estimated once from the start and kept (``update_kappa`` False), the
data's log-likelihood rises every iteration and the clusters reach 0.862 / 0.896 / 0.867 after 15.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..physics.filters import soft_sphere
from ..physics.fourier import fft3_centered, radial_index_3d
from ..physics.likelihood import SpectraCache, shell_power
from ..physics.projector import gridding_correction, wiener_volume
from ..physics.reconstruct import reconstruct
from .checkpoint import load_checkpoint, run_fingerprint
from .difference_patterns import PATTERN_SMOOTHING, voxel_patterns
from .difference_pca import difference_features, feature_resolution, leading_scores, standardise_
from .em2d import auto_resolution_limit, resolution_length_px, working_size
from .engine import map_partitions, run_iterations, runs_here
from .iteration import stage_ticker
from .landscape import LandscapeMethod, LandscapeOptions, cluster_latents, orthonormalize_basis, register
from .latent_mixture import information_form
from .ppca_pass import PassState, PassSums, after_pass, basis_power_ratio, ppca_pass
from .result import Result
from .variability import variability_map, variability_mask


@dataclass
class PPCAOptions(LandscapeOptions):
    """Options of :func:`fit_ppca` (and the common :class:`~.landscape.LandscapeOptions`)."""

    n_iter: int = 15
    init: str = "pca"  # "pca" (difference-PCA scores) or "random" (seeded Gaussian latents)
    tau2_fudge: float = 4.0  # prior signal power multiplier (as em2d)
    auto_band: bool = True  # no resolution limit given: the consensus map's resolution sets the band (em2d)
    mask_radius_px: float | None = None  # soft spherical mask on the maps (default 0.45 D)
    kappa_init: float = 0.1  # basis power relative to the mean map's, before it is estimated
    update_noise: bool = True  # re-estimate the noise power per shell each iteration
    cache_gb: float = 1.0  # keep prepared spectra in memory across iterations when they fit (a pass is compute-bound:
    # streamed from the stacks it is ~2% slower at box 32, LANDSCAPE.md; 10^4 x 41 at box 64 would cache 2.9 GB)
    tol_changes: float = 0.001  # stop when fewer particles' maps move by more than 0.1 posterior sd
    confine_basis: bool = True  # basis only inside the variability mask of the start's difference features
    basis_patterns: bool = True  # each voxel's L basis values on one of L shared lines (difference_patterns)
    update_kappa: bool = False  # re-estimate kappa every iteration (else once, from the start maps; LANDSCAPE.md)


def pass_batch(batch_size: int, working_box: int) -> int:
    """Particles per chunk of a PPCA pass: ``batch_size`` at a working box of 32 or less, scaled by
    ``(32 / M)^2`` above, so a chunk's (L+1)-channel projections and insertions keep their size (at box 64 with
    32 particles x 41 tilts they alone took ~2 GB)."""
    return max(1, round(batch_size * min(1.0, (32 / working_box) ** 2)))


def _mirror_voxels(x: torch.Tensor, g: int) -> torch.Tensor:
    """``x(-k)`` of per-voxel quantities ``[G^3, ...]`` on the full centred grid."""
    v = x.reshape(g, g, g, *x.shape[1:])
    v = torch.roll(torch.flip(v, dims=(0, 1, 2)), shifts=(1, 1, 1), dims=(0, 1, 2))
    return v.reshape(x.shape)


class PPCAModel:
    """State and steps of tilt-space PPCA on one dataset (see the module docstring)."""

    def __init__(self, dataset, options: PPCAOptions, executor=None, focus_mask: torch.Tensor | None = None):
        self.ds, self.opt, self.executor = dataset, options, executor
        d = dataset.box
        self.d, self.L = d, options.n_components
        self.m = working_size(d, dataset.pixel_size, options.resolution_limit_A)
        r = options.mask_radius_px if options.mask_radius_px is not None else 0.45 * d
        self.mask = soft_sphere(d, r, edge=3.0)
        if focus_mask is not None:
            self.mask = self.mask * focus_mask.float()
        self.focus_mask = focus_mask
        self.subtract: torch.Tensor | None = None
        self.maps = torch.zeros(self.L + 1, d, d, d)
        self.sigma2 = torch.ones(d // 2 + 1)
        self.tau2 = torch.ones(d // 2 + 1)
        self.kappa = options.kappa_init
        self.variability: torch.Tensor | None = None  # [D, D, D] mask the basis maps are confined to
        self.mean = np.zeros((dataset.n_particles, self.L))
        self.cov = np.zeros((dataset.n_particles, self.L, self.L))
        self.prev: tuple[torch.Tensor, np.ndarray] | None = None  # (basis, means) of the previous E-step
        self.held_out: np.ndarray | None = None  # [N, T] images kept out of every pass's sums (the VAE's held-out)
        self.log: list[dict] = []
        self._cache = SpectraCache.if_it_fits(dataset, self.m, options.cache_gb) if runs_here(executor) else None

    def unit_visibility(self) -> np.ndarray:
        """``[N, T]`` bool: the tilt images each particle has (the units the VAE holds out and subsamples)."""
        return self.ds.visible.numpy()

    # ------------------------------------------------------------------------------------------------ passes
    def pass_state(self, **kw) -> PassState:
        o = self.opt
        batch = pass_batch(o.batch_size, self.m)
        kw.setdefault("held_out", self.held_out)
        return PassState(self.maps, self.sigma2, self.m, o.resolution_limit_A, o.max_dose, batch, self.subtract, **kw)

    def run_pass(self, state: PassState, progress=None) -> PassSums:
        sums = map_partitions(ppca_pass, self.ds, state, self.opt.partition_size, self.executor, self._cache,
                              progress)  # fmt: skip
        order = np.argsort(sums.particles, kind="stable")
        sums.mean, sums.cov, sums.log_likelihood = sums.mean[order], sums.cov[order], sums.log_likelihood[order]
        return sums

    def initialise(self, consensus: torch.Tensor, latents: np.ndarray, progress=None) -> None:
        """Mean map, signal power and noise power from the consensus; then the maps from the start latents
        (one M-step with the latents taken as known)."""
        if self.focus_mask is not None:  # focus: the consensus outside the mask is subtracted from the images
            self.subtract = consensus * (1 - self.focus_mask.float())
        self.tau2 = shell_power(fft3_centered(consensus * self.mask), self.d)
        self.maps = torch.zeros(self.L + 1, self.d, self.d, self.d)
        self.maps[0] = consensus * self.mask
        n = self.ds.n_particles
        sums = self.run_pass(replace(self.pass_state(), maps=self.maps[:1], noise_only=True, mstep=False),
                             stage_ticker(progress, "noise power", n))  # fmt: skip
        self.update_sigma2(sums)
        sums = self.run_pass(self.pass_state(latents=latents), stage_ticker(progress, "start maps", n))
        self.m_step(sums, from_zero=True)

    def update_sigma2(self, sums: PassSums) -> None:
        new = (sums.sig_sum / sums.sig_cnt.clamp_min(1)).float()
        self.sigma2 = torch.where(sums.sig_cnt > 0, new, self.sigma2).clamp_min(1e-12)

    def m_step(self, sums: PassSums, from_zero: bool = False, expansion: np.ndarray | None = None) -> None:
        """One preconditioned Newton step on the maps: ``M += (A_v + prior)^-1 (gradient - prior M)`` per Fourier
        voxel of the working grid, inside the band. ``A_v`` (the per-voxel ``(L+1) x (L+1)`` normal matrices from
        the inserted CTF^2 weights) is the diagonal-in-voxels approximation of the Hessian that a Wiener
        reconstruction divides by; because the gradient is taken with the exact projections of the current maps
        (:mod:`.ppca_pass`), the fixed point solves the regularised least squares exactly, not the interpolation-
        blurred approximation (a plain ``data / weight`` step stops short of it). ``from_zero``: the gradient was
        taken at zero maps (the start), so the step is the Wiener solution itself. ``expansion``: the ``chol`` of the
        parameter expansion that follows (:meth:`expand`), for the update of ``kappa``."""
        g, l1 = self.m, self.L + 1
        a = sums.a + _mirror_voxels(sums.a, g)  # Hermitian completion (the matrices are real)
        c = sums.c + _mirror_voxels(sums.c, g) * torch.tensor([1.0, -1.0], dtype=torch.float64)
        shells = radial_index_3d(g).reshape(-1)
        inside = shells < g / 2
        tau = self.tau2.double()[shells.clamp(max=self.d // 2)][inside].clamp_min(1e-20) * self.opt.tau2_fudge
        prior = torch.cat([1.0 / tau[:, None], (1.0 / (self.kappa * tau))[:, None].expand(-1, l1 - 1)], 1)
        ai = a[inside] + torch.diag_embed(prior)
        if from_zero:
            cur = torch.zeros(int(inside.sum()), l1, 2, dtype=torch.float64)
        else:  # the maps on the working grid, in the insertion's (gridding-corrected) domain
            lo = self.d // 2 - g // 2
            ftm = fft3_centered(self.maps * gridding_correction(self.d))[:, lo : lo + g, lo : lo + g, lo : lo + g]
            cur = torch.view_as_real(ftm.reshape(l1, -1).T[inside]).double()
        inv = torch.linalg.inv(ai)  # the posterior covariance of each voxel's L+1 map values (per re / im)
        sol = cur + torch.einsum("vkl,vlc->vkc", inv, c[inside] - prior[..., None] * cur)  # [V_in, L+1, 2]
        ft = torch.zeros(g**3, l1, dtype=torch.complex128)
        ft[inside] = torch.view_as_complex(sol.contiguous())
        ft = ft.T.reshape(l1, g, g, g).to(torch.complex64)
        one = torch.ones(())
        self.maps = torch.stack([wiener_volume(ft[k], one, self.d, 0.0) * self.mask for k in range(l1)])
        if self.variability is not None:
            self.maps[1:] *= self.variability
        if self.opt.basis_patterns and self.L > 1:
            length_px = resolution_length_px(self.opt.resolution_limit_A, self.ds.pixel_size)
            basis, _ = voxel_patterns(self.maps[1:].double(), self.variability, PATTERN_SMOOTHING * length_px, self.L)
            self.maps[1:] = basis.float()
        if self.L > 0 and (from_zero or self.opt.update_kappa):  # the prior's scale (basis_power_ratio)
            w_map = torch.view_as_complex(sol[:, 1:].contiguous())
            self.kappa = basis_power_ratio(w_map, inv[:, 1:, 1:], tau, expansion)

    def expand(self, eta: np.ndarray, chol: np.ndarray) -> None:
        """Parameter expansion (:func:`~.ppca_pass.latent_expansion`): the latents' mean ``eta`` and covariance
        factor ``chol`` over the particles are absorbed into the maps, ``mu += W eta``, ``W <- W chol``, so the next
        E-step's latents are again ~N(0, I). This removes the scale drift between W and z that any shrinkage of
        the M-step (prior, mask, interpolation) causes at high SNR, and speeds up EM."""
        lc = torch.from_numpy(chol).float()
        w = self.maps[1:].reshape(self.L, -1)
        self.maps[0] += (torch.from_numpy(eta).float() @ w).reshape(self.maps.shape[1:])
        self.maps[1:] = (lc.T @ w).reshape(self.maps[1:].shape)

    def iterate(self, temperature: float = 1.0, progress: Callable[[int], None] | None = None) -> dict:
        """One EM iteration: E-step with the current maps, noise power, M-step."""
        sums = self.run_pass(self.pass_state(), progress)
        entry = after_pass(self, sums, self.maps[1:].clone(), "PPCA")
        entry["mean_posterior_sd"] = float(np.sqrt(np.diagonal(self.cov, axis1=1, axis2=2)).mean())
        return entry

    def _changes(self, basis: torch.Tensor, mean: np.ndarray, cov: np.ndarray) -> float:
        """Fraction of particles whose map deviation ``W z`` moved by more than 0.1 of its posterior sd since
        the previous E-step (invariant to rotations of the basis)."""
        if self.prev is None:
            return 1.0
        w1, w0 = basis.reshape(self.L, -1).double(), self.prev[0].reshape(self.L, -1).double()
        g11, g10, g00 = w1 @ w1.T, w1 @ w0.T, w0 @ w0.T
        z1, z0 = torch.from_numpy(mean), torch.from_numpy(self.prev[1])
        d2 = ((z1 @ g11) * z1).sum(1) - 2 * ((z1 @ g10) * z0).sum(1) + ((z0 @ g00) * z0).sum(1)
        sd2 = torch.einsum("lk,nkl->n", g11, torch.from_numpy(cov))
        return float((d2.clamp_min(0) > 0.01 * sd2).double().mean())

    def state(self, iteration: int, finished: bool = False) -> dict:
        return {"maps": self.maps, "sigma2": self.sigma2, "tau2": self.tau2, "kappa": self.kappa,
                "variability": self.variability,
                "subtract": self.subtract, "mean": self.mean, "cov": self.cov, "prev": self.prev, "log": self.log,
                "iteration": iteration, "finished": finished,
                "resolution_limit_A": self.opt.resolution_limit_A}  # fmt: skip

    def restore(self, s: dict) -> None:
        self.maps, self.sigma2, self.tau2, self.kappa = s["maps"], s["sigma2"], s["tau2"], s["kappa"]
        self.variability = s.get("variability")
        self.subtract, self.mean, self.cov, self.prev, self.log = (
            s["subtract"],
            s["mean"],
            s["cov"],
            s["prev"],
            s["log"],
        )


def start_latents(dataset, consensus: torch.Tensor, opt: PPCAOptions, resolution_A: float, focus_mask=None,
                  progress=None) -> tuple[np.ndarray, torch.Tensor | None]:  # fmt: skip
    """Start latents ``[N, L]`` with unit variance per column: the leading difference-PCA scores (wedge-masked
    per-particle difference volumes up to ``resolution_A``, :func:`~.difference_pca.difference_features`) or
    seeded Gaussian noise; and, with ``opt.confine_basis`` and the PCA start, the variability mask ``[D, D, D]``
    of the same features (:mod:`.variability`, ``L + 1`` classes' worth of components), else None."""
    n, q = dataset.n_particles, opt.n_components
    if opt.init == "random":
        return np.random.default_rng(opt.seed).standard_normal((n, q)), None
    if opt.init != "pca":
        raise ValueError(f"unknown init {opt.init!r} (pca, random)")
    feats = difference_features(dataset, consensus, resolution_A=resolution_A, max_dose=opt.max_dose,
                                focus_mask=focus_mask, batch_size=opt.batch_size, progress=progress)  # fmt: skip
    x = standardise_(feats.float())
    mask = None
    if opt.confine_basis:
        var = variability_map(x, q + 1, dataset.box, opt.seed)
        mask = variability_mask(var, dataset.pixel_size, resolution_A)
    z = leading_scores(x, min(q, *x.shape), opt.seed).numpy()
    if z.shape[1] < q:  # more components than the features support: pad with seeded noise
        z = np.concatenate([z, np.random.default_rng(opt.seed).standard_normal((n, q - z.shape[1]))], 1)
    return z / np.maximum(z.std(0), 1e-12), mask


def start_or_resume(dataset, opt, name: str, build: Callable, checkpoint: Path | None, focus_mask, progress):
    """The model of a PPCA-based method (``ppca``, ``vae``) resumed from ``checkpoint`` or started afresh:
    consensus map, automatic band, difference-PCA start latents, maps from them. ``build(options)`` makes the
    model (a :class:`PPCAModel`, or an object with one as ``.ppca`` and a ``restore(state)``). Returns
    ``(model, options, start iteration, finished, info, fingerprint)``; ``options`` carry the band used."""
    fingerprint = run_fingerprint(name, asdict(opt), dataset)
    saved = load_checkpoint(checkpoint, fingerprint)
    info: dict = {}
    if saved is not None:
        opt = replace(opt, resolution_limit_A=saved["resolution_limit_A"])
        model = build(opt)
        model.restore(saved)
        return model, opt, saved["iteration"], saved["finished"], info, fingerprint
    n = dataset.n_particles
    ts = time.perf_counter()
    rec = reconstruct(dataset, oversampling=1, progress=stage_ticker(progress, "consensus map", n))
    info["consensus_seconds"] = round(time.perf_counter() - ts, 2)
    info["consensus_resolution_A"] = round(rec.resolution, 2)
    if opt.resolution_limit_A is None and opt.auto_band:
        opt = replace(opt, resolution_limit_A=auto_resolution_limit(rec.resolution, dataset.box, dataset.pixel_size))
    model = build(opt)
    ppca = getattr(model, "ppca", model)
    ts = time.perf_counter()
    band = feature_resolution(rec.resolution, dataset.pixel_size)
    z0, ppca.variability = start_latents(dataset, rec.full, ppca.opt, band, focus_mask,
                                         stage_ticker(progress, "start latents", n))  # fmt: skip
    ppca.initialise(rec.full, z0, progress)
    info["init_seconds"] = round(time.perf_counter() - ts, 2)
    if ppca.variability is not None:
        info["variability_mask_fraction"] = round(float(ppca.variability.mean()), 4)
    return model, opt, 0, False, info, fingerprint


def fit_ppca(
    dataset,
    options: PPCAOptions,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    focus_mask: torch.Tensor | None = None,
    executor=None,
    checkpoint: Path | None = None,
) -> Result:
    """Tilt-space PPCA of a :class:`~tomohet.data.model.TiltSeriesParticles` dataset (landscape contract:
    :mod:`.landscape`). ``focus_mask`` ``[D, D, D]`` (0..1) restricts the maps to a region (the consensus
    outside it is subtracted from the images); ``checkpoint`` (a file) is written after every iteration and a
    run resumes from it; ``executor`` runs the per-particle passes on Dask workers (same result)."""
    opt = options
    if opt.n_components < 1:
        raise ValueError(f"n_components must be at least 1, got {opt.n_components}")
    n, t0 = dataset.n_particles, time.perf_counter()
    model, opt, start, finished, info, fingerprint = start_or_resume(
        dataset, opt, "ppca", lambda o: PPCAModel(dataset, o, executor, focus_mask), checkpoint, focus_mask, progress
    )
    run_iterations(model, n_iter=opt.n_iter, start=start, finished=finished, tol_changes=opt.tol_changes,
                   n_particles=n, n_images=dataset.n_images, progress=progress, checkpoint=checkpoint,
                   fingerprint=fingerprint)  # fmt: skip
    # final E-step: the latents of the final maps
    sums = model.run_pass(model.pass_state(mstep=False), stage_ticker(progress, "latents", n))
    return _result(dataset, opt, model, sums, {**info, "seconds": round(time.perf_counter() - t0, 2)})


def _result(dataset, opt: PPCAOptions, model: PPCAModel, sums: PassSums, info: dict) -> Result:
    ortho = orthonormalize_basis(model.maps[0], model.maps[1:], sums.mean, sums.cov)
    var = ortho["variance"]
    b, g = information_form(sums.mean, sums.cov)  # what each particle's tilts say of its latent (native coordinates)
    fitted = {"maps": model.maps, "transform": ortho["transform"], "offset": ortho["offset"],
              "sigma2": model.sigma2, "subtract": model.subtract, "size": model.m,
              "resolution_limit_A": opt.resolution_limit_A}  # fmt: skip
    extra = {
        "mean_map": ortho["mean_map"], "explained_variance": var,
        "explained_variance_ratio": var / max(float(var.sum()), 1e-30), "ratio_of": "components",
        "latent_sd": ortho["latent_sd"], "orthonormal": True, "sigma2": model.sigma2.numpy(),
        "e_step_limit_A": round(opt.resolution_limit_A or 2 * dataset.pixel_size, 2), "working_box": model.m,
        "log_likelihood": float(sums.log_likelihood.sum()), "model": fitted,
        "latent_information": {"b": b, "G": g}, "variability_mask": model.variability, **info,
    }  # fmt: skip
    return Result(method="ppca", options=asdict(opt), latents=ortho["latents"], volumes=ortho["volumes"],
                  pixel_size=dataset.pixel_size, log=model.log, extra=extra)  # fmt: skip


def infer_latents(dataset, result: Result, particles: np.ndarray | None = None, batch_size: int = 32):
    """Posterior means and standard deviations ``([n, L], [n, L])`` of the latents of ``particles`` (default all)
    of ``dataset`` under a fitted PPCA ``result``, in the result's (orthonormal) coordinates."""
    f = result.extra["model"]
    idx = np.arange(dataset.n_particles) if particles is None else np.asarray(particles)
    state = PassState(f["maps"], f["sigma2"], f["size"], f["resolution_limit_A"], result.options.get("max_dose"),
                      pass_batch(batch_size, f["size"]), f["subtract"], mstep=False)  # fmt: skip
    sums = ppca_pass(dataset, idx, state)
    tr = f["transform"].numpy() if isinstance(f["transform"], torch.Tensor) else np.asarray(f["transform"])
    mean = sums.mean @ tr.T - np.asarray(f["offset"])
    sd = np.sqrt(np.maximum(np.einsum("al,nlm,am->na", tr, sums.cov, tr), 0))
    return mean, sd


PPCA_START_ITERATIONS = 4  # EM iterations of the PPCA behind classify's --init ppca


def ppca_start_labels(dataset, n_classes: int, *, seed: int = 0, max_dose: float | None = None,
                      resolution_limit_A: float | None = None, focus_mask: torch.Tensor | None = None,
                      batch_size: int = 32, progress=None) -> np.ndarray:  # fmt: skip
    """Initial classes ``[N]`` for the EM (``classify --init ppca``): tilt-space PPCA with ``n_classes - 1``
    components (the dimension K class means span), :data:`PPCA_START_ITERATIONS` iterations, then the ``xd``
    clusters of the latents (:mod:`.latent_mixture`: each particle scored through its own latent likelihood)."""
    opt = PPCAOptions(n_components=max(1, n_classes - 1), n_iter=PPCA_START_ITERATIONS, seed=seed,
                      max_dose=max_dose, resolution_limit_A=resolution_limit_A, batch_size=batch_size)  # fmt: skip
    res = fit_ppca(dataset, opt, progress=progress, focus_mask=focus_mask)
    return cluster_latents(res.latents, n_classes, "xd", seed, res.extra["latent_information"])


_DESCRIPTION = "tilt-space probabilistic PCA: mean + low-rank basis fitted to the 2D tilt images by EM"
register(LandscapeMethod("ppca", fit_ppca, PPCAOptions, "2d", _DESCRIPTION))

"""Subtomogram variational autoencoder (``vae3d``, OPUS-TOMO's family): the networks and training loop of the
tilt-series VAE (:mod:`.vae`, :mod:`.vae_net`) on 3D subtomograms, whose loss carries each voxel's wedge/CTF^2
weight.

Input: RELION 3.1 / 4 subtomograms (:class:`~tomohet.data.subtomo.Subtomograms`) or 2D tilt stacks made into
subtomograms in memory, in the reference frame (:mod:`.subtomo_spectra`, as the 3D EM does). The model is the
VAE's: particle i's map is ``mu + sum_b a_b(z_i) W_b``, decoder ``z -> a``, encoder pooled over units of the
particle's data; here the linear model under it is subtomogram PPCA (:class:`~.subtomo_ppca.SubtomoPPCA`): the
Gaussian likelihood of the weighted 3D EM (noise variance ``w_i(k) sigma2(shell)`` per voxel, so voxels many tilts
reach count more and the missing wedge not at all), and the units the encoder pools, subsamples and holds out are
angular sectors of Fourier space about the tilt axis (a sector is a group of neighbouring tilts in the tomogram
frame). Band: the consensus map's gold-standard resolution sets it as for ``vae`` (``auto_band``); the start is the
PCA of the wedge-masked difference volumes (:func:`~.subtomo_spectra.wedge_difference_volumes`), the basis confined
to their variability mask.

Differences from ``vae`` on the same 2D stacks: the subtomograms are inserted once (trilinear, 2x padded), so their
interpolation enters the data rather than the model, and a pass is a few matrix products per chunk instead of a
projection of every map into every image; sectors are coarser units than tilt images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..physics.bands import VolumeBand
from ..physics.filters import soft_sphere
from .checkpoint import load_checkpoint, run_fingerprint
from .difference_pca import feature_box, feature_resolution, leading_scores, standardise_
from .em2d import auto_resolution_limit
from .em3d import EM3DClassifier, EM3DOptions
from .engine import run_iterations
from .iteration import stage_ticker
from .landscape import LandscapeMethod, register
from .result import Result
from .subtomo_ppca import SubtomoPPCA
from .subtomo_spectra import BandView, PreparedSpectra, wedge_difference_volumes
from .vae import VAEModel, VAEOptions, check_options, finish_training, vae_result
from .variability import variability_map, variability_mask


@dataclass
class VAE3DOptions(VAEOptions):
    """Options of :func:`fit_vae3d`: those of :class:`~.vae.VAEOptions` (``held_out`` and ``tilt_keep`` are
    fractions of sectors) plus the sectors and the insertion of 2D stacks."""

    sectors: int = 12  # angular sectors about the tilt axis (15 degrees each)
    oversampling: int = 2  # padding of 2D images inserted into subtomograms
    cache_gb: float = 2.0  # prepared spectra kept in memory when they fit (full band, once)


def _em3d_options(opt: VAE3DOptions, **kw) -> EM3DOptions:
    return EM3DOptions(n_classes=1, batch_size=opt.batch_size, oversampling=opt.oversampling, cache_gb=opt.cache_gb,
                       mask_radius_px=opt.mask_radius_px, seed=opt.seed, **kw)  # fmt: skip


def _band_limit_px(d: int, pixel_size: float, resolution_A: float | None) -> float:
    return d // 2 if resolution_A is None else d * pixel_size / resolution_A


def fit_vae3d(
    dataset,
    options: VAE3DOptions,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    focus_mask: torch.Tensor | None = None,
    executor=None,
    checkpoint: Path | None = None,
) -> Result:
    """Subtomogram VAE of a :class:`~tomohet.data.subtomo.Subtomograms` or
    :class:`~tomohet.data.model.TiltSeriesParticles` dataset (landscape contract: :mod:`.landscape`; module
    docstring). ``checkpoint`` is written after every epoch and a run resumes from it. Runs in this process
    (``executor`` is not used: a pass is a few matrix products per chunk)."""
    opt = options
    check_options(opt)
    if opt.sectors < 4:
        raise ValueError(f"sectors must be at least 4, got {opt.sectors}")
    n, d, apix, t0 = dataset.n_particles, dataset.box, dataset.pixel_size, time.perf_counter()
    fingerprint = run_fingerprint("vae3d", asdict(opt), dataset)
    saved = load_checkpoint(checkpoint, fingerprint)
    info: dict = {"input": "subtomograms" if dataset.kind == "3d" else "2D stacks inserted"}
    full = None
    consensus_res = None
    if saved is not None:
        opt = replace(opt, resolution_limit_A=saved["resolution_limit_A"])
    else:
        ts = time.perf_counter()
        full = PreparedSpectra(dataset, VolumeBand(d, d // 2), _em3d_options(opt))
        em_full = EM3DClassifier(dataset, _em3d_options(opt), full)
        rec = em_full.class_reconstructions(np.zeros(n, dtype=int), dataset.half_set)[0]
        consensus_res = rec.resolution if rec is not None else None
        info["consensus_seconds"] = round(time.perf_counter() - ts, 2)
        if consensus_res is not None:
            info["consensus_resolution_A"] = round(consensus_res, 2)
            if opt.resolution_limit_A is None and opt.auto_band:
                opt = replace(opt, resolution_limit_A=auto_resolution_limit(consensus_res, d, apix))
    band = VolumeBand(d, _band_limit_px(d, apix, opt.resolution_limit_A))
    source = BandView(full, band) if full is not None else PreparedSpectra(dataset, band, _em3d_options(opt))
    linear = SubtomoPPCA(dataset, replace(opt, n_components=opt.basis), source, focus_mask, opt.sectors)
    model = VAEModel(dataset, opt, focus_mask=focus_mask, linear=linear)
    start, finished = 0, False
    if saved is not None:
        model.restore(saved)
        start, finished = saved["iteration"], saved["finished"]
        info["resumed_from_iteration"] = start
    else:
        ts = time.perf_counter()
        _start(dataset, opt, linear, source, consensus_res, progress)
        info["init_seconds"] = round(time.perf_counter() - ts, 2)
        if linear.variability is not None:
            info["variability_mask_fraction"] = round(float(linear.variability.mean()), 4)
    n_images = dataset.n_images if dataset.kind == "2d" else n
    run_iterations(model, n_iter=opt.n_iter, start=start, finished=finished, tol_changes=0.0, n_particles=n,
                   n_images=n_images, progress=progress, checkpoint=checkpoint, fingerprint=fingerprint)  # fmt: skip
    finish_training(model, info, progress)
    info["sectors"] = opt.sectors
    return vae_result(dataset, opt, model, {**info, "seconds": round(time.perf_counter() - t0, 2)}, method="vae3d")


def _start(dataset, opt: VAE3DOptions, linear: SubtomoPPCA, source, consensus_res: float | None, progress) -> None:
    """Consensus, noise and signal power (the 3D EM's consensus pass on the model's band), start latents from the
    PCA of the wedge-masked difference volumes (their variability mask confines the basis), maps from them."""
    n, d, apix = dataset.n_particles, dataset.box, dataset.pixel_size
    em = EM3DClassifier(dataset, _em3d_options(opt, resolution_limit_A=opt.resolution_limit_A), source)
    consensus = em.consensus()
    feat_res = feature_resolution(consensus_res, apix) if consensus_res is not None else None
    small = feature_box(d, apix, feat_res)
    sphere = soft_sphere(small, 0.45 * small, edge=1.5)
    tick = stage_ticker(progress, "start latents", n)
    feats = wedge_difference_volumes(source, consensus, small, lambda v: (v * sphere).reshape(v.shape[0], -1), tick)
    x = standardise_(feats.float())
    q = opt.basis
    if opt.confine_basis:
        linear.variability = variability_mask(variability_map(x, q + 1, d, opt.seed), apix, feat_res or 2.5 * 2 * apix)
    z = leading_scores(x, min(q, *x.shape), opt.seed).numpy()
    if z.shape[1] < q:
        z = np.concatenate([z, np.random.default_rng(opt.seed).standard_normal((n, q - z.shape[1]))], 1)
    z = z / np.maximum(z.std(0), 1e-12)
    linear.initialise(consensus, em.sigma2, em.tau2, z, stage_ticker(progress, "start maps", n))


_DESCRIPTION = "subtomogram VAE: the vae's networks on 3D subtomograms, loss weighted by each voxel's wedge/CTF^2"
register(LandscapeMethod("vae3d", fit_vae3d, VAE3DOptions, "both", _DESCRIPTION))

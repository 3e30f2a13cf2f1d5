"""Wedge-masked difference PCA on tilt-series particles (PEET, Heumann et al. 2011, J. Struct. Biol. 175:288;
Dynamo's PCA), the start that breaks the symmetry between classes in every discrete method.

Each particle's residual images against the consensus map are back-projected into a small per-particle
volume with a Wiener filter (frequencies its tilts never sampled, the missing wedge, carry no deviation
rather than a made-up one), band-limited; the volumes are the features of a PCA, and k-means on the leading
scores gives initial classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..physics.filters import soft_sphere
from ..physics.fourier import fourier_crop_volume, ifft3_centered
from ..physics.likelihood import prepare_images
from ..physics.projector import VolumeProjector
from ..physics.subtomogram import insert_batched
from .kmeans import kmeans

MAX_FEATURE_BOX = 32  # per-particle features are at most 32^3 voxels (10^4 particles: 1.3 GB, float32)
FEATURE_BAND_MARGIN = 1.1  # the features reach 1.1 x the consensus map's FSC-0.143 resolution (Angstrom)


def feature_resolution(consensus_resolution_A: float, pixel_size: float) -> float:
    """Band limit (Angstrom) of the PCA features from the consensus map's gold-standard resolution: just
    coarser than it (x :data:`FEATURE_BAND_MARGIN`), never finer than 2.2 pixels. Class differences carry
    signal up to about that resolution; a fixed coarse band (e.g. 60 A) blurs differences made of several small
    pieces of density. Measured on the ``ladder`` preset (box 32, 12 A/px, consensus 33 A): features at 36 A
    instead of 60 A raise the correlation of the first PC with the state from 0.86 to 0.90 and the EM's final
    ARI from 0.38 to 0.67 (``benchmarks/CLASSIFY.md``)."""
    return max(consensus_resolution_A * FEATURE_BAND_MARGIN, 2.2 * pixel_size)


def feature_box(d: int, pixel_size: float, resolution_A: float | None) -> int:
    """Even box of the per-particle PCA features: the band up to ``resolution_A`` (default 2.5 x Nyquist),
    at least 8, at most :data:`MAX_FEATURE_BOX` and D (a coarser band when the limit would exceed it)."""
    res = resolution_A or 2.5 * 2 * pixel_size
    small = int(min(d, MAX_FEATURE_BOX, max(8, 2 * math.ceil(d * pixel_size / res))))
    return small + small % 2


def difference_features(
    dataset,
    consensus: torch.Tensor,
    *,
    resolution_A: float | None = None,
    max_dose: float | None = None,
    focus_mask: torch.Tensor | None = None,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Per-particle difference volumes ``[N, s^3]`` (float32, inside a soft sphere of radius 0.45 s; ``s`` from
    :func:`feature_box`): the Wiener back-projection of each particle's residuals against ``consensus``
    ``[D, D, D]``. ``focus_mask`` (0..1, ``[D, D, D]``) restricts the difference volumes to the masked region
    (resampled to the feature box); the signal outside it is subtracted from the images first."""
    d, apix = dataset.box, dataset.pixel_size
    small = feature_box(d, apix, resolution_A)
    proj = VolumeProjector(consensus, oversampling=2)
    sub = None
    if focus_mask is not None:  # residuals of the focus region only
        proj = VolumeProjector(consensus * focus_mask, oversampling=2)
        sub = VolumeProjector(consensus * (1 - focus_mask), oversampling=2)
    feats = torch.empty(dataset.n_particles, small**3)  # filled in place: a list + torch.cat held it twice
    mask = soft_sphere(small, 0.45 * small, edge=1.5)
    if focus_mask is not None:  # the residual images hold all differences; keep those inside the focus region
        mask = mask * fourier_crop_volume(focus_mask.float(), small).clamp(0, 1)
    lo = d // 2 - small // 2
    for chunk in dataset.chunks(batch_size):
        p = prepare_images(dataset, chunk, max_dose=max_dose, subtract=sub)
        resid = (p.x - proj.project_ft(p.rotations) * p.h) * p.valid
        # crop spectra to the low-resolution band: [BT, small, small//2+1]
        r = resid[:, lo : lo + small, : small // 2 + 1]
        h = (p.h * p.valid)[:, lo : lo + small, : small // 2 + 1]
        vols = per_particle_backprojection(r * h, h * h, p.rotations, p.n_particles, p.n_tilts, small)
        feats[torch.as_tensor(np.asarray(chunk), dtype=torch.long)] = (vols * mask).reshape(p.n_particles, -1)
        if progress:
            progress(len(chunk))
    return feats


def standardise_(features: torch.Tensor) -> torch.Tensor:
    """Per-particle features ``[N, F]`` centred per column and scaled by the mean column standard deviation, **in
    place** (the form every PCA of them takes; a second call changes nothing): at 10^4 particles x 32^3 features
    a centred copy would take another 1.3 GB. Returns the same tensor."""
    features -= features.mean(0)
    features /= features.std(0).clamp_min(1e-12).mean()
    return features


def pca_kmeans(features: torch.Tensor, n_classes: int, n_components: int | None, seed: int):
    """Labels ``[N]`` and PCA scores ``[N, q]`` of per-particle features ``[N, F]`` (float32; standardised in place,
    :func:`standardise_`): top ``q`` components (default ``2 n_classes``), k-means (20 starts).

    Twice as many components as classes: on the ``ladder`` preset (4 states, 1000 particles) k-means on 8 PCs
    gave better starts than on 4 in all three comparisons (ARI 0.54 vs 0.34 at a 60 A band, 0.60 vs 0.58 and
    0.51 vs 0.36 at 36 A), and EM from them reached a higher likelihood."""
    x = standardise_(features.float())
    q = min(n_components or 2 * n_classes, *x.shape)
    z = leading_scores(x, q, seed).numpy()
    return kmeans(z, n_classes, n_init=20, seed=seed)[0], z


def leading_scores(x: torch.Tensor, q: int, seed: int = 0, exact_below: int = 2000) -> torch.Tensor:
    """Scores ``U_q S_q`` ``[N, q]`` (float64) of the top ``q`` principal components of a centred ``[N, F]``
    matrix. Exact SVD when ``min(N, F) <= exact_below``; otherwise a seeded randomised range finder with
    power iterations (Halko, Martinsson & Tropp 2011, SIAM Rev. 53:217), which needs O(N F q) time and
    no N x N or F x F matrix, so 10^4 particles x 10^4-10^5 features fit in memory."""
    n, f = x.shape
    if n <= exact_below and f > n:  # exact, from the N x N Gram matrix (no N x F copies; ~0.2 GB less at 1000 x 22^3)
        gram = torch.zeros(n, n, dtype=torch.float64)
        for lo in range(0, f, 4096):
            block = x[:, lo : lo + 4096].double()
            gram += block @ block.T
        evals, evecs = torch.linalg.eigh(gram)
        top = torch.argsort(evals, descending=True)[:q]
        return evecs[:, top] * evals[top].clamp_min(0).sqrt()
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


def per_particle_backprojection(
    data: torch.Tensor, weight: torch.Tensor, rotations: torch.Tensor, n_particles: int, n_tilts: int, size: int
) -> torch.Tensor:
    """Real-space Wiener back-projections ``[B, s, s, s]`` of each particle's own images: ``data`` (``H X``)
    and ``weight`` (``H^2``) ``[B*T, s, s//2+1]``, ``rotations`` ``[B*T, 3, 3]``; the Wiener constant is each
    particle's mean weight."""
    b, t = n_particles, n_tilts
    vis = torch.ones(b, t, dtype=torch.bool)
    dsum, wsum = insert_batched(
        data.reshape(b, t, size, size // 2 + 1), weight.reshape(b, t, size, size // 2 + 1),
        rotations.reshape(b, t, 3, 3), vis, size, multiplicity=False,
    )[:2]  # fmt: skip
    lam = wsum.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return ifft3_centered(dsum / (wsum + lam))

"""Wedge-masked-difference PCA (``wmd-pca``): a continuous landscape from per-particle difference volumes
(PEET, Heumann, Hoenger & Mastronarde 2011, J. Struct. Biol. 175:288; Dynamo's PCA).

Each particle's *wedge-masked difference* is its data minus the average seen through that particle's own
wedge and CTF, back to real space, band-limited and masked:

- 2D tilt stacks (:class:`~tomohet.data.model.TiltSeriesParticles`): the residual images against the projected
  consensus, ``X_ij - H_ij P_ij V0``, Wiener back-projected into a small per-particle box,
  ``sum_j H_ij (X_ij - H_ij P_ij V0) / (sum_j H_ij^2 + lambda_i)`` (``lambda_i`` the particle's mean weight), as
  :func:`~tomohet.methods.difference_pca.difference_features` does; the consensus is the gold-standard
  Wiener reconstruction of all particles (:func:`~tomohet.physics.reconstruct.reconstruct`).
- 3D subtomograms (:class:`~tomohet.data.subtomo.Subtomograms`, RELION 3.1 or 4): ``d_i`` the CTF-premultiplied
  data and ``W_i`` its CTF^2/wedge weight per voxel in the reference frame (prepared exactly as the 3D EM does,
  :class:`~tomohet.methods.em3d.PreparedSpectra`), the difference ``(d_i - W_i V0) / (W_i + lambda_i)`` =
  ``W_i (d_i / W_i - V0)``, Wiener-normalised per particle; ``V0`` the 3D EM's consensus. Frequencies the
  particle's tilts never sampled (the missing wedge) carry no difference rather than a made-up one.

The difference volumes live on a small Fourier-cropped box ``s`` (the band up to ``resolution_A``, soft
raised-cosine edge), inside a soft sphere of radius ``mask_radius`` (or the focus mask, resampled to ``s``).
Their PCA is a (randomised, for large N) SVD of the centred ``[N, s^3]`` matrix,
:func:`~tomohet.methods.difference_pca.leading_scores`; the component maps are the right singular vectors
``V = X^T U / s``, computed from the scores without an ``F x F`` matrix, and Fourier-padded back to the D box.

Output (the landscape contract, :mod:`tomohet.methods.landscape`): ``volumes [L, D, D, D]`` the component maps,
orthonormal as D-box voxel vectors (``extra["orthonormal"] = True``; padding keeps the Fourier coefficients, so
the small-box unit vectors are scaled by ``(D/s)^(3/2)``), float32 at the dataset's pixel size; ``latents [N, L]``
the scores ``U S`` in the same units (float64, decreasing variance), so that
``map(z) = extra["mean_map"] + sum_l z_l volumes[l]``; ``extra["mean_map"]`` the consensus plus the mean
difference; ``extra["explained_variance"] [L]`` the variance of each latent column (the eigenvalues);
``extra["explained_variance_ratio"] [L]`` the fraction of the total variance of the difference volumes each
component carries (sorted, sums to <= 1; ``ratio_of = "total"``); ``extra["variance_map"] [D, D, D]`` the
per-voxel variance of the difference volumes around their mean (PEET's variance map: where the particles
differ). Registered as ``wmd-pca`` in :data:`~tomohet.methods.landscape.LANDSCAPE_METHODS` (2D and 3D input).

Amplitudes: the per-particle Wiener filter shrinks each difference towards zero where the particle's weight is
small, so the component maps are in consensus density units but attenuated; the directions, not the
amplitudes, are what the landscape needs. FFT normalisation as in :mod:`tomohet.physics.fourier`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..physics.filters import soft_sphere
from ..physics.fourier import fft3_centered, fourier_crop_volume, ifft3_centered, pad_to
from ..physics.likelihood import prepare_images
from ..physics.projector import VolumeProjector
from .checkpoint import load_checkpoint, run_fingerprint, save_checkpoint
from .difference_pca import leading_scores, per_particle_backprojection
from .engine import map_partitions
from .iteration import stage_ticker
from .result import Result
from .subtomo_spectra import wedge_difference_volumes

DEFAULT_RESOLUTION_NYQUIST = 2.5  # default band of the differences: 2.5 x Nyquist (as the discrete PCA start)
MIN_FEATURE_BOX = 8
EDGE_PX = 2.0  # width of the raised-cosine band edges (Fourier pixels)


@dataclass
class WMDPCAOptions:
    """Options of :func:`fit` (``wmd-pca``); the fields of :class:`~tomohet.methods.landscape.LandscapeOptions`
    plus the feature box cap and the mask. Lengths in Angstrom, radii in pixels of the D box."""

    n_components: int = 8
    seed: int = 0
    resolution_limit_A: float | None = None  # band of the differences (default 2.5 x Nyquist; at most Nyquist)
    n_iter: int = 15  # ignored: one pass, no iterations
    batch_size: int = 32  # particles per batch inside a partition
    max_dose: float | None = None  # 2D stacks: leave out images with more pre-exposure (e/A^2)
    partition_size: int = 512  # particles per map/reduce partition
    max_feature_box: int = 32  # memory cap: N x s^3 float32 features (10^4 particles at s = 32: 1.3 GB)
    mask_radius_px: float | None = None  # soft sphere on the differences (default 0.45 D)


# ------------------------------------------------------------------------------------------ feature geometry


def box_for_resolution(d: int, pixel_size: float, resolution_A: float, cap: int) -> int:
    """Smallest even box ``s <= min(D, cap)`` (at least 8) that holds the band up to ``resolution_A`` with its
    soft edge: the D box's spectrum cropped to ``s`` keeps every frequency up to ``D apix / resolution_A + 1``
    Fourier pixels."""
    need = 2 * math.ceil(d * pixel_size / resolution_A + EDGE_PX / 2 - 1e-6)
    s = int(min(d, cap, max(MIN_FEATURE_BOX, need)))
    return min(s + s % 2, d - d % 2) if d >= MIN_FEATURE_BOX else d


def finest_resolution(d: int, pixel_size: float, cap: int) -> float:
    """Finest band limit (Angstrom) a feature box capped at ``cap`` holds with its soft edge: the edge must end
    before the box's Nyquist, so ``D apix / (s/2 - 1)`` (25.6 A at box 32, 12 A/px; Nyquist is 24 A)."""
    s = min(d - d % 2, cap)
    return d * pixel_size / (s / 2 - EDGE_PX / 2)


def band_filter(size: int, low_px: float, high_px: float, edge_px: float = EDGE_PX) -> torch.Tensor:
    """``[s, s, s]`` full centred raised-cosine band: 1 from ``low_px`` to ``high_px`` Fourier pixels (radius,
    of the D grid, which the cropped box samples one to one), cosine edges ``edge_px`` wide centred on both; the
    DC and the one-sided Nyquist planes of an even box are always 0."""
    k = torch.arange(size, dtype=torch.float32) - size // 2
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    hi = 0.5 * (1 + torch.cos(math.pi * ((r - high_px + edge_px / 2) / edge_px).clamp(0, 1)))
    lo = 0.5 * (1 - torch.cos(math.pi * ((r - low_px + edge_px / 2) / edge_px).clamp(0, 1))) if low_px > 0 else 1.0
    f = hi * lo
    f[size // 2, size // 2, size // 2] = 0.0
    if size % 2 == 0:
        f[0], f[:, 0], f[:, :, 0] = 0.0, 0.0, 0.0
    return f


def check_focus_mask(focus_mask: torch.Tensor | None, d: int) -> None:
    """One-line error unless ``focus_mask`` is None or a ``[D, D, D]`` volume."""
    if focus_mask is not None and tuple(focus_mask.shape) != (d, d, d):
        raise InputError(None, f"focus mask is {tuple(focus_mask.shape)}, expected {(d, d, d)} (the particle box)",
                         "focus_mask")  # fmt: skip


def small_mask(d: int, size: int, radius_px: float | None, focus_mask: torch.Tensor | None) -> torch.Tensor:
    """Real-space mask ``[s, s, s]`` of the difference volumes: a soft sphere (``radius_px`` of the D box, default
    0.45 D) times the focus mask Fourier-resampled to ``s`` (clamped to 0..1)."""
    r = (0.45 * d if radius_px is None else radius_px) * size / d
    mask = soft_sphere(size, r, edge=max(1.5, 3.0 * size / d))
    if focus_mask is not None:
        check_focus_mask(focus_mask, d)
        fm = focus_mask.float() if size == d else fourier_crop_volume(focus_mask.float(), size)
        mask = mask * fm.clamp(0, 1)
    return mask


def pad_volumes(vols: torch.Tensor, d: int) -> torch.Tensor:
    """Small-box volumes ``[..., s, s, s]`` (difference units: their spectrum holds the D box's coefficients,
    unrescaled) -> band-limited D-box volumes ``[..., D, D, D]`` float32 at the dataset's pixel size."""
    s = vols.shape[-1]
    if s == d:
        return vols.float()
    ft = fft3_centered(vols.double())
    if s % 2 == 0:  # the one-sided Nyquist planes would not be Hermitian in the larger box
        ft[..., 0, :, :] = 0
        ft[..., :, 0, :] = 0
        ft[..., :, :, 0] = 0
    ft = pad_to(ft, d, 3)
    return ifft3_centered(ft).float()


# ------------------------------------------------------------------------------------- difference volumes


@dataclass
class _Features:
    """Difference volumes of one partition (concatenated in partition order on merge)."""

    x: torch.Tensor  # [B, s^3] float32

    def merge(self, other: _Features) -> _Features:
        return _Features(torch.cat([self.x, other.x]))


def _finish(vols: torch.Tensor, filt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Band-limit ``[B, s, s, s]`` volumes (full centred filter) and mask them: ``[B, s^3]`` float32."""
    out = ifft3_centered(fft3_centered(vols.double()) * filt.double()) * mask.double()
    return out.float().reshape(vols.shape[0], -1)


def _step_2d(dataset, particles: np.ndarray, state: dict, cache=None, progress=None) -> _Features:
    """Wiener back-projected residuals of one partition of ``particles`` (2D stacks) against the consensus, in
    batches; a :func:`~tomohet.methods.engine.map_partitions` step."""
    proj: VolumeProjector = state["projector"]
    s, d = state["size"], dataset.box
    lo = d // 2 - s // 2
    out = []
    for chunk in dataset.chunks(state["batch_size"], particles):
        p = prepare_images(dataset, chunk, max_dose=state["max_dose"])
        resid = (p.x - proj.project_ft(p.rotations) * p.h) * p.valid
        r = resid[:, lo : lo + s, : s // 2 + 1]
        h = (p.h * p.valid)[:, lo : lo + s, : s // 2 + 1]
        vols = per_particle_backprojection(r * h, h * h, p.rotations, p.n_particles, p.n_tilts, s)
        out.append(_finish(vols, state["filter"], state["mask"]))
        if progress:
            progress(len(chunk))
    return _Features(torch.cat(out))


def difference_volumes_2d(
    dataset,
    consensus: torch.Tensor,
    size: int,
    filt: torch.Tensor,
    mask: torch.Tensor,
    *,
    max_dose: float | None = None,
    batch_size: int = 32,
    partition_size: int = 512,
    executor=None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Wedge-masked differences ``[N, s^3]`` of a 2D-stack dataset: each particle's residual images against the
    projected ``consensus [D, D, D]``, Wiener back-projected on the ``s`` box (the same operation as
    :func:`~tomohet.methods.difference_pca.difference_features`, with an explicit box), band-limited by ``filt``
    ``[s, s, s]`` and masked by ``mask [s, s, s]``. ``executor`` (``tomohet.parallel``) maps the partitions of
    ``partition_size`` particles (fixed, so the result does not depend on the workers)."""
    state = {"projector": VolumeProjector(consensus.float(), oversampling=2), "size": size, "filter": filt,
             "mask": mask, "max_dose": max_dose, "batch_size": batch_size}  # fmt: skip
    return map_partitions(_step_2d, dataset, state, partition_size, executor, progress=progress).x


def difference_volumes_3d(
    em,
    consensus_vec: torch.Tensor,
    size: int,
    filt: torch.Tensor,
    mask: torch.Tensor,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Wedge-masked differences ``[N, s^3]`` float32 of subtomograms prepared by the 3D EM ``em``
    (:class:`~tomohet.methods.em3d.EM3DClassifier`; :func:`~.subtomo_spectra.wedge_difference_volumes`),
    band-limited and masked."""
    return wedge_difference_volumes(em.source, consensus_vec, size, lambda v: _finish(v, filt, mask), progress)


@dataclass
class Differences:
    """Difference volumes of a dataset and what made them."""

    features: torch.Tensor  # [N, s^3] float32
    size: int  # s
    consensus: torch.Tensor  # [D, D, D] float32
    consensus_resolution_A: float
    resolution_A: float  # band limit of the differences
    seconds: dict[str, float] = field(default_factory=dict)


def is_subtomograms(dataset) -> bool:
    return dataset.kind == "3d"


def consensus_map(dataset, batch_size: int, progress: Callable[[str, int, int], None] | None):
    """Consensus of all particles: ``(map [D, D, D], resolution_A, em, vec)``; ``em`` is the 3D EM state that holds
    the prepared subtomogram spectra and ``vec`` the consensus as its in-band vector (both None for 2D stacks)."""
    n = dataset.n_particles
    if not is_subtomograms(dataset):
        from ..physics.reconstruct import reconstruct

        rec = reconstruct(dataset, oversampling=1, progress=stage_ticker(progress, "consensus map", n))
        return rec.full.float(), float(rec.resolution), None, None
    from .em3d import EM3DClassifier, EM3DOptions

    em = EM3DClassifier(dataset, EM3DOptions(n_classes=1, batch_size=batch_size))
    tick = stage_ticker(progress, "consensus map", n)
    vec = em.consensus()  # first pass: prepares (and caches, when they fit) the spectra
    tick(n)
    recs = em.class_reconstructions(np.zeros(n, dtype=int), np.asarray(dataset.half_set))
    res = float(recs[0].resolution) if recs[0] is not None else float("inf")
    return em.band.to_real(vec).float(), res, em, vec


def compute_differences(
    dataset,
    resolution: Callable[[float], tuple[float, float]],
    *,
    max_feature_box: int = 32,
    mask_radius_px: float | None = None,
    focus_mask: torch.Tensor | None = None,
    max_dose: float | None = None,
    batch_size: int = 32,
    partition_size: int = 512,
    executor=None,
    progress: Callable[[str, int, int], None] | None = None,
    notes: list[str] | None = None,
) -> Differences:
    """Consensus, then every particle's wedge-masked difference (2D stacks or subtomograms) on the small box.

    ``resolution(consensus_resolution_A) -> (low_A, high_A)``: the band of the differences in Angstrom
    (``low_A`` <= 0: no high-pass beyond the DC); the box is the smallest that holds ``high_A`` (at most
    ``max_feature_box``; a coarser band when the cap binds, said in ``notes``)."""
    d, apix, n = dataset.box, dataset.pixel_size, dataset.n_particles
    t0 = time.perf_counter()
    consensus, cres, em, vec = consensus_map(dataset, batch_size, progress)
    t_cons = time.perf_counter() - t0
    low_A, high_A = resolution(cres)
    finest = finest_resolution(d, apix, max_feature_box)
    if high_A < finest - 1e-6:
        if notes is not None:
            notes.append(f"band {high_A:.1f} A is finer than the feature box holds (box {d}, max_feature_box "
                         f"{max_feature_box}): limited to {finest:.1f} A")  # fmt: skip
        high_A = finest
    size = box_for_resolution(d, apix, high_A, max_feature_box)
    high_px = d * apix / high_A
    low_px = d * apix / low_A if low_A > 0 else 0.0
    filt = band_filter(size, low_px, high_px)
    mask = small_mask(d, size, mask_radius_px, focus_mask)
    tick = stage_ticker(progress, "difference volumes", n)
    t1 = time.perf_counter()
    if em is None:
        feats = difference_volumes_2d(dataset, consensus, size, filt, mask, max_dose=max_dose, batch_size=batch_size,
                                      partition_size=partition_size, executor=executor, progress=tick)  # fmt: skip
    else:
        feats = difference_volumes_3d(em, vec, size, filt, mask, tick)
    secs = {"consensus": t_cons, "differences": time.perf_counter() - t1}
    return Differences(feats, size, consensus, cres, high_A, secs)


# ------------------------------------------------------------------------------------------------- the SVD


@dataclass
class Components:
    """Top principal components of ``[N, F]`` features: ``scores [N, q]`` (``U S``, float64), unit right singular
    vectors ``vectors [q, F]`` (float32), ``explained [q]`` (fraction of the total variance), the feature mean
    ``mean [F]`` and the total variance ``total`` (sum of squares of the centred features)."""

    scores: np.ndarray
    vectors: torch.Tensor
    explained: np.ndarray
    mean: torch.Tensor
    total: float


def principal_components(features: torch.Tensor, q: int, seed: int = 0, chunk: int = 4096) -> Components:
    """PCA of ``[N, F]`` features by :func:`~tomohet.methods.difference_pca.leading_scores` (exact or seeded
    randomised SVD); the right singular vectors from the scores, ``V = X^T U / s`` (no ``F x F`` matrix). Signs
    are fixed so that each vector's largest-magnitude entry is positive (deterministic)."""
    n, f = features.shape
    q = int(min(q, n, f))
    mean = features.double().mean(0)
    x = features - mean.float()
    scores = leading_scores(x, q, seed)  # [N, q] float64
    s2 = (scores**2).sum(0).clamp_min(1e-300)  # singular values squared
    vec = torch.zeros(q, f, dtype=torch.float64)
    for a in range(0, n, chunk):  # V^T = S^-2 (U S)^T X, accumulated over particle chunks
        vec += scores[a : a + chunk].T @ x[a : a + chunk].double()
    vec /= s2[:, None]
    total = float(sum(float((x[a : a + chunk].double() ** 2).sum()) for a in range(0, n, chunk)))
    sign = torch.sign(vec.gather(1, vec.abs().argmax(1, keepdim=True))).squeeze(1)
    sign[sign == 0] = 1.0
    return Components(
        scores=(scores * sign).numpy(), vectors=(vec * sign[:, None]).float(),
        explained=(s2 / max(total, 1e-300)).numpy(), mean=mean.float(), total=total,
    )  # fmt: skip


def variance_map(features: torch.Tensor, mean: torch.Tensor, size: int, d: int, chunk: int = 256) -> torch.Tensor:
    """Per-voxel variance ``[D, D, D]`` of the difference volumes around their mean, each padded to the D box
    (PEET's variance map)."""
    acc = torch.zeros(d, d, d, dtype=torch.float64)
    n = features.shape[0]
    for a in range(0, n, chunk):
        x = (features[a : a + chunk] - mean).reshape(-1, size, size, size)
        acc += (pad_volumes(x, d).double() ** 2).sum(0)
    return (acc / max(n, 1)).float()


def check_counts(**counts: int | None) -> None:
    """One-line error naming the option unless every given count (None: not given) is at least 1."""
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(None, f"{name} must be at least 1 (got {value!r})", name)


def fingerprint_options(options: dict, focus_mask: torch.Tensor | None) -> dict:
    """Options plus a digest of the focus mask: what a checkpoint of a finished run must match."""
    return {**options, "focus": None if focus_mask is None else round(float(focus_mask.double().sum()), 3)}


def images_per_s(dataset, seconds: float) -> float:
    """Tilt images (2D stacks) or subtomograms processed per second."""
    n = dataset.n_particles if is_subtomograms(dataset) else dataset.n_images
    return round(n / max(seconds, 1e-9), 1)


def fit(
    dataset,
    options: WMDPCAOptions | None = None,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    focus_mask: torch.Tensor | None = None,
    executor=None,
    checkpoint: str | Path | None = None,
) -> Result:
    """Wedge-masked-difference PCA of ``dataset`` (2D tilt stacks or 3D subtomograms); see the module docstring.

    ``progress(stage, done, total)`` reports particles per stage; ``focus_mask [D, D, D]`` (0..1) restricts the
    differences to a region; ``executor`` maps the 2D difference pass over partitions (e.g. Dask; the 3D pass
    runs here); ``checkpoint`` (a file) keeps the finished result, so rerunning the same run returns it."""
    opt = options or WMDPCAOptions()
    check_counts(n_components=opt.n_components, batch_size=opt.batch_size, partition_size=opt.partition_size,
                 max_feature_box=opt.max_feature_box)  # fmt: skip
    check_focus_mask(focus_mask, dataset.box)
    t0 = time.perf_counter()
    d, apix, n = dataset.box, dataset.pixel_size, dataset.n_particles
    fingerprint = run_fingerprint("wmd-pca", fingerprint_options(asdict(opt), focus_mask), dataset)
    saved = load_checkpoint(checkpoint, fingerprint)
    if saved is not None and saved.get("finished"):
        return saved["result"]
    notes: list[str] = []
    res_A = opt.resolution_limit_A if opt.resolution_limit_A is not None else DEFAULT_RESOLUTION_NYQUIST * 2 * apix
    diff = compute_differences(dataset, lambda _: (0.0, res_A), max_feature_box=opt.max_feature_box,
                               mask_radius_px=opt.mask_radius_px, focus_mask=focus_mask, max_dose=opt.max_dose,
                               batch_size=opt.batch_size, partition_size=opt.partition_size, executor=executor,
                               progress=progress, notes=notes)  # fmt: skip
    ts = time.perf_counter()
    s = diff.size
    pcs = principal_components(diff.features, opt.n_components, opt.seed)
    # orthonormal at box D: padding keeps the coefficients, so a unit vector of the s box has norm (s/D)^(3/2)
    scale = (d / s) ** 1.5
    vols = pad_volumes(pcs.vectors.reshape(-1, s, s, s), d) * scale
    latents = pcs.scores / scale
    var_map = variance_map(diff.features, pcs.mean, s, d)
    mean_map = diff.consensus + pad_volumes(pcs.mean.reshape(s, s, s), d)
    t_svd = time.perf_counter() - ts
    total = time.perf_counter() - t0
    log = [fit_log_entry(dataset, total, diff, t_svd, notes, feature_box=s, n_features=int(diff.features.shape[1]))]
    result = Result(
        method="wmd-pca", options=asdict(opt), latents=latents, volumes=vols, pixel_size=apix, log=log,
        extra={"mean_map": mean_map, "explained_variance": latents.var(0, ddof=1) if n > 1 else pcs.explained,
               "explained_variance_ratio": pcs.explained, "ratio_of": "total", "orthonormal": True,
               "variance_map": var_map, "consensus": diff.consensus,
               "consensus_resolution_A": diff.consensus_resolution_A,
               "consensus_seconds": diff.seconds["consensus"], "resolution_limit_A": diff.resolution_A,
               "feature_box": s, "feature_pixel_size": apix * d / s, "seconds": total, "notes": notes,
               "input": "subtomograms" if is_subtomograms(dataset) else "tilt stacks"},
    )  # fmt: skip
    if checkpoint is not None:
        save_checkpoint(checkpoint, {"finished": True, "result": result}, fingerprint)
    return result


def fit_log_entry(dataset, total: float, diff: Differences, svd_seconds: float, notes: list[str], **more) -> dict:
    """The one log entry of a one-pass linear method (the landscape contract's per-pass keys)."""
    return {"iteration": 1, "stage": "fit", "seconds": round(total, 3), "images_per_s": images_per_s(dataset, total),
            "consensus_seconds": round(diff.seconds["consensus"], 3),
            "difference_seconds": round(diff.seconds["differences"], 3), "svd_seconds": round(svd_seconds, 3),
            "resolution_limit_A": round(diff.resolution_A, 2),
            "consensus_resolution_A": round(diff.consensus_resolution_A, 2), "notes": list(notes), **more}  # fmt: skip


from .landscape import LandscapeMethod, register  # noqa: E402  (after the definitions: landscape imports this module)

register(LandscapeMethod("wmd-pca", fit, WMDPCAOptions, "both",
                         "wedge-masked-difference PCA of per-particle difference volumes (PEET, Dynamo)"))  # fmt: skip

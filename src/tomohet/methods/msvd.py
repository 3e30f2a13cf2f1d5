"""Multiscale SVD (``msvd``): the wedge-masked differences of :mod:`tomohet.methods.wmd_pca` decomposed at several
length scales (emClarity, Himes & Zhang 2018, Nat. Methods 15:955; ``pcaScaleSpace`` in its ``BH_pcaPub``).

For each length scale ``L`` (default 10, 20 and 40 Angstrom) the difference volumes are band-passed as emClarity
does: a high-pass at ``highpass_A`` (400 Angstrom; at the usual boxes only the DC goes) and a raised-cosine
low-pass at ``L``, so a coarser scale keeps only the coarse differences and a finer one adds detail. Each scale
lives on the smallest Fourier-cropped box that holds it, is masked (soft sphere or focus mask) and decomposed on
its own (exact or randomised SVD, :func:`~tomohet.methods.wmd_pca.principal_components`); the top
``components_per_scale`` components of every scale are concatenated into one latent vector.

Scales are kept within what the data hold: a scale finer than Nyquist (2 x pixel size), than the consensus map's
gold-standard resolution (FSC 0.143) or than the feature box cap is clamped to that limit, and scales that
coincide after clamping are merged; ``extra["notes"]`` and the log say which.

Output (the landscape contract, :mod:`tomohet.methods.landscape`): ``latents [N, L]``, the scores ``U S`` of each
scale divided by that scale's norm (every scale normalised to unit total variance per particle, as emClarity
normalises each scale), ordered by decreasing variance; ``volumes [L, D, D, D]`` each component's right singular
vector Fourier-padded to the D box and multiplied by its scale's norm, so ``extra["mean_map"] + z_l volumes[l]``
is in density units; ``extra["mean_map"]`` the consensus plus the mean difference (finest scale);
``extra["explained_variance"] [L]`` the variance of each latent column; ``extra["explained_variance_ratio"] [L]``
each component's share of the total variance of the concatenated, normalised features (sorted, sums to <= 1;
``ratio_of = "total"``); ``extra["component_scale_A"] [L]`` the scale each component came from,
``extra["scale_explained_variance_ratio"] [L]`` its share of its own scale's variance, ``extra["scales_A"]`` the
scales used, ``extra["notes"]`` what was clamped or merged. Components of different scales are not orthogonal
(a fine scale contains the coarse band; ``extra["orthonormal"] = False``), so ``mean_map + z_l volumes[l]`` is
meaningful one component at a time. Registered as ``msvd`` in :data:`~tomohet.methods.landscape.LANDSCAPE_METHODS`.
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
from ..physics.fourier import fft3_centered, ifft3_centered
from .checkpoint import load_checkpoint, run_fingerprint, save_checkpoint
from .result import Result
from .wmd_pca import (
    band_filter,
    box_for_resolution,
    check_counts,
    check_focus_mask,
    compute_differences,
    finest_resolution,
    fingerprint_options,
    fit_log_entry,
    is_subtomograms,
    pad_volumes,
    principal_components,
    small_mask,
)


@dataclass
class MSVDOptions:
    """Options of :func:`fit` (``msvd``): the fields of :class:`~tomohet.methods.landscape.LandscapeOptions` plus
    the scales. Lengths in Angstrom, radii in pixels of the D box.

    ``n_components``: latents kept in all (None: ``components_per_scale`` of every scale); when given, each scale
    contributes ``max(components_per_scale, ceil(n_components / n_scales))`` and the top ``n_components`` by
    explained variance are kept. ``resolution_limit_A``: no scale finer than this (besides Nyquist and,
    with ``limit_to_consensus_resolution``, the consensus map's resolution)."""

    n_components: int | None = None
    seed: int = 0
    resolution_limit_A: float | None = None
    n_iter: int = 15  # ignored: one pass, no iterations
    batch_size: int = 32
    max_dose: float | None = None
    partition_size: int = 512
    scales_A: list[float] = field(default_factory=lambda: [10.0, 20.0, 40.0])
    components_per_scale: int = 3
    highpass_A: float = 400.0  # emClarity's high-pass of every scale
    limit_to_consensus_resolution: bool = True  # clamp scales finer than the consensus map's resolution
    max_feature_box: int = 32
    mask_radius_px: float | None = None


def effective_scales(scales_A: list[float], limits: dict[str, float], notes: list[str]) -> list[float]:
    """Scales (Angstrom, ascending, distinct) after clamping each to the coarsest of ``limits`` (name -> Angstrom,
    e.g. Nyquist, the consensus resolution, what the feature box holds); every change is noted in ``notes``."""
    why, floor = max(limits.items(), key=lambda kv: kv[1])
    out: list[float] = []
    for s in sorted(float(x) for x in scales_A):
        eff = max(s, floor)
        if eff != s:
            notes.append(f"scale {s:g} A is finer than {why} ({floor:.1f} A): clamped to {eff:.1f} A")
        if out and abs(out[-1] - eff) < 0.05 * eff:
            notes.append(f"scale {s:g} A coincides with {out[-1]:.1f} A after clamping: merged")
            continue
        out.append(eff)
    return out


def scale_features(
    base: torch.Tensor,
    base_size: int,
    d: int,
    pixel_size: float,
    scale_A: float,
    highpass_A: float,
    mask: torch.Tensor,
    chunk: int = 256,
) -> tuple[torch.Tensor, int]:
    """The base difference volumes ``[N, s0^3]`` band-passed to one scale: spectrum cropped to the smallest box
    ``s`` that holds ``scale_A``, high-pass at ``highpass_A``, low-pass at ``scale_A``, masked by ``mask``
    (``[s, s, s]``, made by the caller for that box). Returns ``([N, s^3] float32, s)``."""
    s = min(box_for_resolution(d, pixel_size, scale_A, base_size), base_size)
    lo = base_size // 2 - s // 2
    filt = band_filter(s, d * pixel_size / highpass_A, d * pixel_size / scale_A).double()
    out = torch.empty(base.shape[0], s**3)
    for a in range(0, base.shape[0], chunk):
        ft = fft3_centered(base[a : a + chunk].reshape(-1, base_size, base_size, base_size).double())
        ft = ft[..., lo : lo + s, lo : lo + s, lo : lo + s] * filt
        out[a : a + chunk] = (ifft3_centered(ft) * mask.double()).float().reshape(-1, s**3)
    return out, s


def fit(
    dataset,
    options: MSVDOptions | None = None,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    focus_mask: torch.Tensor | None = None,
    executor=None,
    checkpoint: str | Path | None = None,
) -> Result:
    """Multiscale SVD of ``dataset`` (2D tilt stacks or 3D subtomograms); see the module docstring. Arguments as
    :func:`tomohet.methods.wmd_pca.fit`."""
    opt = options or MSVDOptions()
    check_counts(n_components=opt.n_components, components_per_scale=opt.components_per_scale,
                 batch_size=opt.batch_size, partition_size=opt.partition_size,
                 max_feature_box=opt.max_feature_box)  # fmt: skip
    if not opt.scales_A or min(opt.scales_A) <= 0:
        raise InputError(None, f"scales_A must be positive lengths in Angstrom (got {opt.scales_A})", "scales_A")
    check_focus_mask(focus_mask, dataset.box)
    t0 = time.perf_counter()
    d, apix, n = dataset.box, dataset.pixel_size, dataset.n_particles
    fingerprint = run_fingerprint("msvd", fingerprint_options(asdict(opt), focus_mask), dataset)
    saved = load_checkpoint(checkpoint, fingerprint)
    if saved is not None and saved.get("finished"):
        return saved["result"]
    notes: list[str] = []
    chosen: list[float] = []

    def band(cres: float) -> tuple[float, float]:
        limits = {"Nyquist (2 x pixel size)": 2 * apix,
                  f"the finest band a box of {min(d - d % 2, opt.max_feature_box)} holds with its soft edge":
                  finest_resolution(d, apix, opt.max_feature_box)}  # fmt: skip
        if opt.limit_to_consensus_resolution and np.isfinite(cres):
            limits["the consensus resolution (FSC 0.143)"] = cres
        if opt.resolution_limit_A is not None:
            limits["resolution_limit_A"] = opt.resolution_limit_A
        chosen.extend(effective_scales(opt.scales_A, limits, notes))
        return 0.0, chosen[0]

    diff = compute_differences(dataset, band, max_feature_box=opt.max_feature_box, mask_radius_px=opt.mask_radius_px,
                               focus_mask=focus_mask, max_dose=opt.max_dose, batch_size=opt.batch_size,
                               partition_size=opt.partition_size, executor=executor, progress=progress,
                               notes=notes)  # fmt: skip
    s0 = diff.size
    per = opt.components_per_scale
    if opt.n_components is not None:
        per = max(per, math.ceil(opt.n_components / len(chosen)))
    ts = time.perf_counter()
    latents, vols, ratio, ratio_scale, comp_scale, per_scale = [], [], [], [], [], []
    for scale in chosen:
        mask = small_mask(d, box_for_resolution(d, apix, scale, s0), opt.mask_radius_px, focus_mask)
        x, s = scale_features(diff.features, s0, d, apix, scale, opt.highpass_A, mask)
        pcs = principal_components(x, per, opt.seed)
        del x
        q = pcs.scores.shape[1]
        # each scale normalised to unit total variance per particle (emClarity normalises every scale): latents in
        # those units, the maps carry the factor, so mean_map + z * volume is unchanged
        c = math.sqrt(max(pcs.total, 1e-300) / max(n - 1, 1))
        latents.append(pcs.scores / c)
        vols.append(pad_volumes(pcs.vectors.reshape(q, s, s, s), d) * c)
        ratio_scale.append(pcs.explained)
        ratio.append(pcs.explained / len(chosen))
        comp_scale += [scale] * q
        per_scale.append({"scale_A": round(scale, 2), "feature_box": s,
                          "explained_variance_ratio": np.round(pcs.explained, 5).tolist()})  # fmt: skip
    ev = np.concatenate(ratio)
    order = np.argsort(-ev, kind="stable")[: opt.n_components or len(ev)]
    z = np.concatenate(latents, 1)[:, order]
    volumes = torch.cat(vols)[torch.from_numpy(order)]
    mean_map = diff.consensus + pad_volumes(diff.features.double().mean(0).float().reshape(s0, s0, s0), d)
    t_svd = time.perf_counter() - ts
    total = time.perf_counter() - t0
    log = [fit_log_entry(dataset, total, diff, t_svd, notes, scales_A=[round(x, 2) for x in chosen],
                         per_scale=per_scale)]  # fmt: skip
    result = Result(
        method="msvd", options=asdict(opt), latents=z, volumes=volumes, pixel_size=apix, log=log,
        extra={"mean_map": mean_map, "explained_variance": z.var(0, ddof=1) if n > 1 else ev[order],
               "explained_variance_ratio": ev[order], "ratio_of": "total", "orthonormal": False,
               "scale_explained_variance_ratio": np.concatenate(ratio_scale)[order],
               "component_scale_A": np.asarray(comp_scale)[order], "scales_A": list(chosen),
               "consensus": diff.consensus, "consensus_resolution_A": diff.consensus_resolution_A,
               "consensus_seconds": diff.seconds["consensus"], "feature_box": s0, "seconds": total,
               "notes": notes, "input": "subtomograms" if is_subtomograms(dataset) else "tilt stacks"},
    )  # fmt: skip
    if checkpoint is not None:
        save_checkpoint(checkpoint, {"finished": True, "result": result}, fingerprint)
    return result


from .landscape import LandscapeMethod, register  # noqa: E402  (after the definitions: landscape imports this module)

register(
    LandscapeMethod(
        "msvd",
        fit,
        MSVDOptions,
        "both",
        "multiscale SVD of wedge-masked differences at several length scales (emClarity)",
    )
)

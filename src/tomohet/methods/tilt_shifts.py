"""Per-tilt alignment refinement: one 2D shift per tilt image of each tomogram (the tilt-series alignment residual
that Warp/M and emClarity refine), estimated from every particle seen in that tilt against the current maps.

With the maps ``V_k``, each particle's class posteriors ``g_ik`` and the per-shell noise power of the EM, the
log-likelihood of shifting every particle image of tomogram ``t``, tilt ``j`` by ``d`` (pixels) is, up to terms
that do not depend on ``d``, ``sum_i sum_k g_ik Re sum_f w X_ij(f) conj(H P_ijk(f)) exp(2 pi i f.d / D)``: one
cross spectrum per tilt image, summed over its particles, scored on a grid of shifts (coarse, then fine around the
best) with a Gaussian prior ``-|d|^2 / (2 sigma^2)`` that keeps tilts with few particles or little signal at zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.fourier import half_grid_2d
from ..physics.likelihood import ImageBand, prepare_images
from ..physics.projector import VolumeProjector
from .em2d import working_size


@dataclass
class TiltShifts:
    """``shifts_px`` ``[n_tomograms, T, 2]`` (x, y image pixels: where the particles appear relative to the
    geometry read), the log-likelihood gain of each shift over none and the images behind it, per tomogram."""

    tomograms: list[str]
    shifts_px: torch.Tensor
    gain: np.ndarray  # [n_tomograms, T]
    n_images: np.ndarray  # [n_tomograms, T]

    @property
    def rms_px(self) -> float:
        """Root-mean-square length of the shifts (pixels)."""
        return float(self.shifts_px.norm(dim=-1).pow(2).mean().sqrt())


def tomogram_index(dataset) -> tuple[list[str], np.ndarray]:
    """The dataset's tomogram names (sorted) and each particle's index into them."""
    names = sorted(set(dataset.tomogram))
    lookup = {n: i for i, n in enumerate(names)}
    return names, np.array([lookup[t] for t in dataset.tomogram])


def _shift_grid(centre: torch.Tensor, half_width: float, step: float) -> torch.Tensor:
    """``[n, G, 2]`` grids of shifts around each of ``centre`` ``[n, 2]``."""
    ax = torch.arange(-half_width, half_width + step / 2, step, dtype=torch.float64)
    g = torch.cartesian_prod(ax, ax)
    return centre[:, None, :] + g[None]


def _score(cross: torch.Tensor, shifts: torch.Tensor, box: int, m: int) -> torch.Tensor:
    """``Re sum_f cross(f) exp(2 pi i f.d / D)`` ``[n, G]`` for cross spectra ``[n, M, M//2+1]`` and shifts
    ``[n, G, 2]``."""
    kx, ky = (k.double() * (2 * np.pi / box) for k in half_grid_2d(m))
    out = []
    for s0 in range(0, len(cross), 16):  # 16 tilt images at a time bounds the phase table
        sh = shifts[s0 : s0 + 16]
        arg = kx * sh[..., 0, None, None] + ky * sh[..., 1, None, None]
        phase = torch.polar(torch.ones_like(arg), arg).to(torch.complex64).reshape(*sh.shape[:2], -1)
        out.append(torch.einsum("nf,ngf->ng", cross[s0 : s0 + 16].reshape(len(sh), -1), phase).real.double())
    return torch.cat(out)


def estimate_tilt_shifts(
    dataset,
    volumes: torch.Tensor,
    posteriors: np.ndarray,
    sigma2: torch.Tensor,
    resolution_limit_A: float | None,
    range_px: float = 3.0,
    sigma_px: float = 2.0,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> TiltShifts:
    """Shift of each tilt image of each tomogram (see the module docstring) against ``volumes`` ``[K, D, D, D]``
    with the particles' class ``posteriors`` ``[N, K]`` and noise power ``sigma2`` ``[D//2+1]``, within
    ``+-range_px`` pixels (0.25 px grid, then 0.05 px around the best), prior width ``sigma_px`` per axis."""
    d = dataset.box
    m = working_size(d, dataset.pixel_size, resolution_limit_A)
    band = ImageBand(d, dataset.pixel_size, resolution_limit_A, m)
    proj = VolumeProjector(volumes, oversampling=2, out_size=m)
    inv_s2 = band.per_pixel(1.0 / sigma2)
    names, tomo = tomogram_index(dataset)
    t = dataset.n_tilts
    cross = torch.zeros(len(names) * t, m, m // 2 + 1, dtype=torch.complex64)
    count = torch.zeros(len(names) * t, dtype=torch.float64)
    for chunk in dataset.chunks(batch_size):
        p = prepare_images(dataset, chunk, size=m)
        hp = proj.project_ft(p.rotations) * p.h  # [K, BT, M, Mh]
        g = torch.from_numpy(posteriors[chunk]).float().T.repeat_interleave(t, dim=1)  # [K, BT]
        c = ((hp.conj() * g[:, :, None, None]).sum(0)) * p.x * (band.weight * inv_s2 * p.valid)
        key = torch.from_numpy(tomo[chunk] * t)[:, None] + torch.arange(t)[None]
        cross.index_add_(0, key.reshape(-1), c)
        count.index_add_(0, key.reshape(-1), (p.valid.sum((-2, -1)) > 0).double())
        if progress:
            progress(len(chunk))
    zero = torch.zeros(len(cross), 2, dtype=torch.float64)
    best = zero
    for half_width, step in ((range_px, 0.25), (0.25, 0.05)):
        grid = _shift_grid(best, half_width, step)
        grid = grid.clamp(-range_px, range_px)
        s = _score(cross, grid, d, m) - (grid**2).sum(-1) / (2 * sigma_px**2)
        best = grid[torch.arange(len(grid)), s.argmax(1)]
    gain = (_score(cross, best[:, None], d, m)[:, 0] - (best**2).sum(-1) / (2 * sigma_px**2)
            - _score(cross, zero[:, None], d, m)[:, 0])  # fmt: skip
    best = torch.where((count > 0)[:, None], best, zero)
    return TiltShifts(names, best.reshape(len(names), t, 2).float(), gain.reshape(len(names), t).numpy(),
                      count.reshape(len(names), t).numpy())  # fmt: skip

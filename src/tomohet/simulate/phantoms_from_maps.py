"""Phantom states from user MRC maps, Fourier-resampled to the requested box and pixel size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..physics.fourier import crop_to, fft3_centered, fourier_crop_volume, ifft3_centered, pad_to
from .phantom_set import PhantomSet


def _fourier_pad_volume(vol: torch.Tensor, size: int) -> torch.Tensor:
    """Upsample ``[D, D, D]`` to ``[size]*3`` by zero-padding its centred spectrum (values per voxel kept)."""
    d = vol.shape[-1]
    ft = pad_to(fft3_centered(vol), size, 3)
    return ifft3_centered(ft) * (size / d) ** 3


def resample_volume(vol: torch.Tensor, pixel_size_in: float, box: int, pixel_size: float) -> torch.Tensor:
    """Resample a cubic map (``[D, D, D]``, ``pixel_size_in`` Angstrom) onto ``[box]*3`` at ``pixel_size`` Angstrom.

    The map is zero-padded in real space to a size ``D'`` for which ``D' * pixel_size_in / pixel_size`` is an
    integer ``G`` (to 0.1%, else the nearest), its centred spectrum is cropped (coarser pixels) or zero-padded
    (finer pixels) to ``G``, and the result is cropped or zero-padded in real space to ``box`` about the centre
    (index ``D // 2``). Values are density per voxel (a constant map stays constant); float32.
    """
    v = vol.float()
    d = v.shape[-1]
    ratio = pixel_size_in / pixel_size
    best = (math.inf, d)
    for dp in range(d, 2 * d + 1):
        err = abs(dp * ratio - round(dp * ratio)) / (dp * ratio)
        if err < best[0] - 1e-12:
            best = (err, dp)
        if err < 1e-3:
            break
    dp = best[1]
    g = max(1, int(round(dp * ratio)))
    v = pad_to(v, dp, 3)
    if g < dp:
        v = fourier_crop_volume(v, g)
    elif g > dp:
        v = _fourier_pad_volume(v, g)
    return (crop_to(v, box, 3) if g > box else pad_to(v, box, 3)).contiguous().float()


def load_map(path: str | Path, box: int, pixel_size: float) -> torch.Tensor:
    """A user's MRC map resampled to ``[box]*3`` at ``pixel_size`` Angstrom (see :func:`resample_volume`)."""
    from ..data.mrc import read_volume

    vol, apix = read_volume(path)
    if apix <= 0:
        raise InputError(path, f"voxel size must be positive, got {apix}", field="voxel_size")
    return resample_volume(vol, apix, box, pixel_size)


def states_from_maps(
    paths: Sequence[str | Path],
    box: int,
    pixel_size: float,
    weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> PhantomSet:
    """Discrete ground-truth states from user MRC maps (one state per map), resampled to the box and pixel size;
    ``weights`` are the abundances (default equal), ``names`` default to the file stems."""
    if not paths:
        raise InputError(None, "expected at least one map", field="maps")
    vols = torch.stack([load_map(p, box, pixel_size) for p in paths])
    w = np.full(len(paths), 1.0) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(paths),) or (w < 0).any() or w.sum() <= 0:
        raise InputError(None, f"expected {len(paths)} non-negative abundances, got {list(w)}", field="weights")
    return PhantomSet(
        name="maps",
        description=f"{len(paths)} states from user maps",
        box=box,
        pixel_size=float(pixel_size),
        volumes=vols,
        state=np.arange(len(paths)),
        coordinate=None,
        state_names=list(names) if names is not None else [Path(p).stem for p in paths],
        state_weights=w / w.sum(),
    )

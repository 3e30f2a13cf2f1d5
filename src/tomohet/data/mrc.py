"""MRC volumes and stacks via ``mrcfile``: float32 arrays ``[z, y, x]`` with voxel size and origin."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import torch

from ..errors import InputError


def read_volume(path: str | Path) -> tuple[torch.Tensor, float]:
    """A cubic volume as float32 ``[D, D, D]`` and its voxel size (Angstrom)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "map file not found")
    try:
        with mrcfile.open(path, mode="r", permissive=False) as m:
            data = np.array(m.data, dtype=np.float32)
            apix = float(m.voxel_size.x)
    except Exception as exc:
        raise InputError(path, f"not a readable MRC file ({exc})") from exc
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(path, f"expected a cubic 3D map, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(path, "map contains NaN or Inf values")
    return torch.from_numpy(data), apix


def write_volume(path: str | Path, volume: torch.Tensor | np.ndarray, pixel_size: float) -> Path:
    """Write a float32 volume (or image stack) with the given voxel size; origin 0 (centre at D//2)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(arr, dtype=np.float32))
        m.voxel_size = pixel_size
        if arr.ndim == 3 and path.suffix == ".mrcs":
            m.set_image_stack()
        _fixed_label(m)
    return path


def write_stack(path: str | Path, images: np.ndarray | torch.Tensor, pixel_size: float, float16: bool = False) -> Path:
    """Write an image stack ``[n, D, D]`` (MRC mode 2, or mode 12 float16 as WarpTools does)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(arr, dtype=np.float16 if float16 else np.float32))
        m.set_image_stack()
        m.voxel_size = pixel_size
        _fixed_label(m)
    return path


def _fixed_label(m) -> None:
    """Replace mrcfile's time-stamped label so that the same data give byte-identical files."""
    m.header.label[0] = b"written by tomohet"
    m.header.nlabl = 1

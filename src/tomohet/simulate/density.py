"""Smooth density primitives: isotropic Gaussians integrated exactly over the voxels of a cubic grid.

Conventions (DESIGN.md): centres are ``(x, y, z)`` in Angstrom relative to the box centre; volumes are
``[z, y, x]`` with the origin at index ``D // 2``; voxel ``i`` spans ``[(i - D//2 - 1/2) p, (i - D//2 + 1/2) p]``
along its axis for pixel size ``p``. A voxel's value is the mass of the Gaussians inside it (error functions,
no truncation), so the sum of a map equals the sum of the weights of the Gaussians inside the box.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erf as scipy_erf

from ..errors import InputError


def render(
    atoms_xyz_A: np.ndarray | torch.Tensor,
    weights: np.ndarray | torch.Tensor | float,
    sigma_A: np.ndarray | torch.Tensor | float,
    box: int,
    pixel_size: float,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Render isotropic Gaussians onto a ``[box, box, box]`` float32 grid ``[z, y, x]``.

    ``atoms_xyz_A`` ``[N, 3]`` are (x, y, z) centres in Angstrom relative to the box centre (index ``box // 2``);
    ``weights`` ``[N]`` (or a scalar) the mass of each Gaussian; ``sigma_A`` ``[N]`` (or a scalar) its standard
    deviation in Angstrom. Each voxel receives the Gaussian's integral over the voxel (separable products of
    error-function differences), evaluated exactly over the whole grid and accumulated as one matrix product per
    chunk of atoms, so ``render(...).sum() == sum(weights)`` for atoms well inside the box, and a single atom's
    profile along an axis has variance ``sigma^2 + pixel^2 / 12`` (the Gaussian convolved with the voxel).
    About 0.3 s for 5000 atoms at box 64 on 2 CPU cores.
    """
    xyz = torch.as_tensor(atoms_xyz_A, dtype=torch.float64, device=device).reshape(-1, 3)
    n = xyz.shape[0]
    w = torch.as_tensor(weights, dtype=torch.float64, device=xyz.device).expand(n)
    s = torch.as_tensor(sigma_A, dtype=torch.float64, device=xyz.device).expand(n)
    if (s <= 0).any():
        raise InputError(None, "Gaussian widths must be positive (Angstrom)", field="sigma_A")
    out = torch.zeros(box, box * box, dtype=torch.float32, device=xyz.device)
    if n == 0:
        return out.reshape(box, box, box)
    edges = (torch.arange(box + 1, dtype=torch.float32, device=xyz.device) - box // 2 - 0.5) * pixel_size
    scale = (1.0 / (s * math.sqrt(2.0))).float()[:, None]

    def axis_factors(c: torch.Tensor) -> torch.Tensor:  # [N] centres -> [N, box] voxel integrals
        arg = (edges[None, :] - c.float()[:, None]) * scale
        # on the CPU scipy's erf is much faster than torch's for these small arrays (no thread start-up)
        e = torch.from_numpy(scipy_erf(arg.numpy())) if arg.device.type == "cpu" else torch.erf(arg)
        return 0.5 * (e[:, 1:] - e[:, :-1])

    gx, gy, gz = axis_factors(xyz[:, 0]), axis_factors(xyz[:, 1]), axis_factors(xyz[:, 2])
    gz = gz * w.float()[:, None]
    chunk = max(1, (1 << 24) // (box * box))  # <= 64 MB of [chunk, box*box] float32 per step
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        yx = (gy[sl, :, None] * gx[sl, None, :]).reshape(-1, box * box)
        out.addmm_(gz[sl].T, yx)
    return out.reshape(box, box, box)

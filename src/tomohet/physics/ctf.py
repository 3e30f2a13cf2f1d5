"""Contrast transfer function (RELION's definition) and the exposure (dose) filter.

CTF (RELION convention, particles bright, CTF(0) = +amplitude contrast):
``CTF(k) = scale * sin(chi(k) + phase_shift + atan(w / sqrt(1 - w^2)))`` with
``chi = pi * lambda * dz(theta) * k^2 - pi/2 * Cs * lambda^3 * k^4``, ``dz(theta) = (U + V)/2 + (U - V)/2 *
cos(2 (theta - angle))`` (U, V: defocus in Angstrom, underfocus positive), k in 1/Angstrom, Cs in Angstrom.

Exposure filter after Grant & Grigorieff (2015), eLife 4:e06980, eq. 3: critical exposure
``Ne(k) = 0.245 * k^-1.665 + 2.81`` e/A^2 at 300 kV (scaled by 0.8 at 200 kV), attenuation
``exp(-N / (2 Ne(k)))`` for cumulative exposure N (e/A^2).
"""

from __future__ import annotations

import math

import torch

from .fourier import half_grid_2d


def electron_wavelength(voltage_kv: float | torch.Tensor) -> torch.Tensor:
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV."""
    v = torch.as_tensor(voltage_kv, dtype=torch.float64) * 1e3
    return 12.2642598 / torch.sqrt(v * (1 + v * 0.978466e-6))


def ctf_2d(
    size: int,
    pixel_size: float | torch.Tensor,
    defocus_u: torch.Tensor,
    defocus_v: torch.Tensor,
    defocus_angle: torch.Tensor,
    voltage: float | torch.Tensor,
    spherical_aberration: float | torch.Tensor,
    amplitude_contrast: float | torch.Tensor,
    phase_shift: torch.Tensor | float = 0.0,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """CTF on a half centred grid: ``[B, M, M//2+1]`` float32 for ``B`` images.

    Per-image inputs are ``[B]`` tensors (or scalars): defocus U/V in Angstrom, defocus angle and phase shift
    in degrees, voltage in kV, Cs in mm, amplitude contrast as a fraction, ``scale`` an amplitude factor
    (``rlnCtfScalefactor``). ``pixel_size`` in Angstrom (scalar or ``[B]``).
    """
    du = torch.as_tensor(defocus_u, dtype=torch.float32).reshape(-1)
    b = du.shape[0]

    def per_image(v):
        return torch.as_tensor(v, dtype=torch.float32).reshape(-1).expand(b)[:, None, None]

    dv, ang = per_image(defocus_v), torch.deg2rad(per_image(defocus_angle))
    lam = per_image(electron_wavelength(torch.as_tensor(voltage)).float())
    cs = per_image(spherical_aberration) * 1e7
    w = per_image(amplitude_contrast)
    ps = torch.deg2rad(per_image(phase_shift))
    apix = per_image(pixel_size)
    kx, ky = half_grid_2d(size, du.device)
    kx = kx[None] / (size * apix)
    ky = ky[None] / (size * apix)
    k2 = kx**2 + ky**2
    theta = torch.atan2(ky, kx)
    du = du[:, None, None]
    dz = 0.5 * (du + dv) + 0.5 * (du - dv) * torch.cos(2 * (theta - ang))
    chi = math.pi * lam * dz * k2 - 0.5 * math.pi * cs * lam**3 * k2**2
    amp = torch.atan(w / torch.sqrt(1 - w**2))
    return per_image(scale) * torch.sin(chi + ps + amp)


def exposure_filter_2d(
    size: int, pixel_size: float | torch.Tensor, dose: torch.Tensor, voltage: float | torch.Tensor = 300.0
) -> torch.Tensor:
    """Grant & Grigorieff (2015) exposure filter on a half centred grid ``[B, M, M//2+1]`` for cumulative
    doses ``[B]`` (e/A^2, before this image's own exposure as RELION's ``rlnMicrographPreExposure``)."""
    dose = torch.as_tensor(dose, dtype=torch.float32).reshape(-1)
    b = dose.shape[0]
    apix = torch.as_tensor(pixel_size, dtype=torch.float32).reshape(-1).expand(b)[:, None, None]
    kx, ky = half_grid_2d(size, dose.device)
    k = torch.sqrt(kx**2 + ky**2)[None] / (size * apix)
    ne = 0.245 * k.clamp_min(1e-9) ** -1.665 + 2.81
    volt = torch.as_tensor(voltage, dtype=torch.float32).reshape(-1).expand(b)[:, None, None]
    ne = ne * torch.where(volt < 250, 0.8, 1.0)
    return torch.exp(-dose[:, None, None].clamp_min(0) / (2 * ne))

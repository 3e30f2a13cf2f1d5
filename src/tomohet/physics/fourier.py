"""Centred Fourier transforms, frequency grids, padding and cropping.

Layouts: a *full centred* 3D spectrum is ``[G, G, G]`` complex with k = 0 at index ``G // 2`` on every
axis (order z, y, x). A *half centred* 2D spectrum is ``[M, M // 2 + 1]``: rows are ky fftshifted (k = 0 at
row ``M // 2``), columns are kx = 0..M//2 (rfft). Forward transforms are unnormalised, inverses carry 1/N.
Real-space arrays have their origin at index ``D // 2``.
"""

from __future__ import annotations

import torch

DIMS3 = (-3, -2, -1)


def fft3_centered(vol: torch.Tensor) -> torch.Tensor:
    """Real volume ``[..., G, G, G]`` (origin at G//2) -> full centred complex spectrum."""
    return torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(vol, dim=DIMS3), dim=DIMS3), dim=DIMS3)


def ifft3_centered(ft: torch.Tensor) -> torch.Tensor:
    """Full centred spectrum -> real volume (origin at G//2); the imaginary residue is dropped."""
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(ft, dim=DIMS3), dim=DIMS3), dim=DIMS3).real


def rfft2_centered(img: torch.Tensor) -> torch.Tensor:
    """Real images ``[..., M, M]`` (origin at M//2) -> half centred spectra ``[..., M, M//2+1]``."""
    ft = torch.fft.rfft2(torch.fft.ifftshift(img, dim=(-2, -1)))
    return torch.fft.fftshift(ft, dim=-2)


def irfft2_centered(ft: torch.Tensor, size: int) -> torch.Tensor:
    """Half centred spectra ``[..., M, M//2+1]`` -> real images ``[..., M, M]`` (origin at M//2)."""
    img = torch.fft.irfft2(torch.fft.ifftshift(ft, dim=-2), s=(size, size))
    return torch.fft.fftshift(img, dim=(-2, -1))


def half_grid_2d(size: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer frequency coordinates ``(kx, ky)`` of a half centred 2D spectrum, each ``[M, M//2+1]``
    float32, in cycles per box (divide by ``size * pixel_size`` for 1/Angstrom)."""
    ky = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    kx = torch.arange(size // 2 + 1, device=device, dtype=torch.float32)
    return kx[None, :].expand(size, -1), ky[:, None].expand(-1, size // 2 + 1)


def half_spectrum_multiplicity(size: int) -> torch.Tensor:
    """``[M, M//2+1]``: how many coefficients of the full spectrum each half-spectrum coefficient stands for
    (2, except the kx = 0 column and, for even M, the kx = M/2 column)."""
    w = torch.full((size, size // 2 + 1), 2.0)
    w[:, 0] = 1.0
    if size % 2 == 0:
        w[:, -1] = 1.0
    return w


def shell_index_2d(size: int) -> torch.Tensor:
    """Rounded radius (Fourier pixels) of each pixel of a half centred ``[M, M//2+1]`` spectrum, int64."""
    kx, ky = half_grid_2d(size)
    return torch.round(torch.sqrt(kx**2 + ky**2)).long()


def radial_index_3d(size: int, device=None) -> torch.Tensor:
    """Rounded radius (in Fourier voxels) of each voxel of a full centred ``[G, G, G]`` grid, int64."""
    k = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return torch.round(r).long()


def shift_phase_2d(size: int, shifts: torch.Tensor) -> torch.Tensor:
    """Phase factors ``[B, M, M//2+1]`` that translate images by ``shifts`` ``[B, 2]`` (x, y) pixels
    when multiplied onto their half centred spectra (content moves by +shift)."""
    kx, ky = half_grid_2d(size, shifts.device)
    arg = kx * shifts[:, 0, None, None].float() + ky * shifts[:, 1, None, None].float()
    return torch.polar(torch.ones_like(arg), -2 * torch.pi * arg / size)


def pad_to(x: torch.Tensor, size: int, ndim: int) -> torch.Tensor:
    """Zero-pad the last ``ndim`` axes of a real array to ``size``, keeping the origin at index size//2."""
    d = x.shape[-1]
    if size == d:
        return x
    lo = size // 2 - d // 2
    pads: list[int] = []
    for _ in range(ndim):
        pads += [lo, size - d - lo]
    return torch.nn.functional.pad(x, pads)


def crop_to(x: torch.Tensor, size: int, ndim: int) -> torch.Tensor:
    """Crop the last ``ndim`` axes of a real array to ``size`` around the origin (index D//2)."""
    d = x.shape[-1]
    lo = d // 2 - size // 2
    sl = (Ellipsis,) + (slice(lo, lo + size),) * ndim
    return x[sl]


def fourier_crop_volume(vol: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample a volume ``[D, D, D]`` to ``[size]*3`` by cropping its spectrum (box ratio sets the new
    pixel size: ``pixel * D / size``). Keeps the mean density per voxel."""
    d = vol.shape[-1]
    ft = fft3_centered(vol)
    lo = d // 2 - size // 2
    ft = ft[..., lo : lo + size, lo : lo + size, lo : lo + size]
    return ifft3_centered(ft) * (size / d) ** 3


def fourier_crop_images(img: torch.Tensor, size: int) -> torch.Tensor:
    """Downsample images ``[..., M, M]`` to ``size`` by cropping their spectra (mean kept)."""
    m = img.shape[-1]
    ft = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(img, dim=(-2, -1))), dim=(-2, -1))
    lo = m // 2 - size // 2
    ft = ft[..., lo : lo + size, lo : lo + size]
    out = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(ft, dim=(-2, -1))), dim=(-2, -1)).real
    return out * (size / m) ** 2

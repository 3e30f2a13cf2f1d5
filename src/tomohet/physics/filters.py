"""Real-space masks, Fourier filters, Fourier shell correlation and resolution."""

from __future__ import annotations

import math

import torch

from .fourier import fft3_centered, ifft3_centered, radial_index_3d


def soft_sphere(size: int, radius: float, edge: float = 3.0, device=None) -> torch.Tensor:
    """``[D, D, D]`` mask: 1 inside ``radius`` pixels of the centre (index D//2), raised-cosine edge of
    ``edge`` pixels, 0 outside."""
    k = torch.arange(size, device=device, dtype=torch.float32) - size // 2
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    if edge <= 0:
        return (r <= radius).float()
    t = ((r - radius) / edge).clamp(0, 1)
    return 0.5 * (1 + torch.cos(math.pi * t))


def shell_frequencies(size: int, pixel_size: float) -> torch.Tensor:
    """Spatial frequency (1/Angstrom) of each Fourier shell index 0..D//2."""
    return torch.arange(size // 2 + 1, dtype=torch.float32) / (size * pixel_size)


def lowpass(vol: torch.Tensor, resolution: float, pixel_size: float, edge_shells: float = 2.0) -> torch.Tensor:
    """Low-pass a volume to ``resolution`` Angstrom with a raised-cosine edge ``edge_shells`` wide."""
    d = vol.shape[-1]
    k = torch.arange(d, device=vol.device, dtype=torch.float32) - d // 2
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    cutoff = d * pixel_size / resolution
    t = ((r - cutoff + edge_shells / 2) / edge_shells).clamp(0, 1)
    return ifft3_centered(fft3_centered(vol) * 0.5 * (1 + torch.cos(math.pi * t)))


def fsc(v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
    """Fourier shell correlation of two ``[D, D, D]`` volumes for shells 0..D//2 (float64)."""
    d = v1.shape[-1]
    f1, f2 = fft3_centered(v1.double()), fft3_centered(v2.double())
    shells = radial_index_3d(d, v1.device).reshape(-1)
    n = d // 2 + 1
    keep = shells < n
    idx = shells[keep]

    def shell_sum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.float64, device=x.device).index_add_(0, idx, x.reshape(-1)[keep])

    num = shell_sum((f1 * f2.conj()).real)
    den = torch.sqrt(shell_sum(f1.abs() ** 2) * shell_sum(f2.abs() ** 2))
    curve = num / den.clamp_min(1e-30)
    curve[0] = 1.0  # the DC "shell" is one voxel; by convention (as RELION) it is set to 1
    return curve


def resolution_at(curve: torch.Tensor, size: int, pixel_size: float, threshold: float = 0.143) -> float:
    """Resolution (Angstrom) where the FSC curve first drops below ``threshold`` (linear interpolation
    between shells); Nyquist (2 x pixel) if it never does."""
    c = curve.tolist()
    for i in range(1, len(c)):
        if c[i] < threshold:
            f = (c[i - 1] - threshold) / max(c[i - 1] - c[i], 1e-12)
            shell = i - 1 + f
            return size * pixel_size / max(shell, 1e-6)
    return 2 * pixel_size


def masked_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Pearson correlation of two volumes over the voxels where ``mask > 0.5``."""
    m = mask > 0.5
    x, y = a[m].double(), b[m].double()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / torch.sqrt((x * x).sum() * (y * y).sum()).clamp_min(1e-30))

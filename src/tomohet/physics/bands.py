"""The frequencies a band-limited method works on, one helper per spectrum layout.

- :class:`ImageBand`: pixels of a half centred 2D spectrum ``[M, M//2+1]`` on a (Fourier-cropped) working grid,
  their shell on the D grid and in-band multiplicity: the band of the 2D likelihood (:mod:`.likelihood`).
- :class:`VolumeBand`: coefficients of a 3D FFTW half spectrum ``[D, D, D//2+1]`` inside a radius, gathered to a
  vector ``[P]``: the band of the 3D subtomogram methods.
- :func:`~.insertion.band_points`: the in-band pixels an insertion or a slice extraction touches.

Shells are rounded radii in Fourier pixels of the D grid; a half-spectrum coefficient stands for its Friedel pair
(multiplicity 2) except on the kx = 0 plane (and, in 2D, the kx = M/2 column).
"""

from __future__ import annotations

import torch

from .fourier import half_spectrum_multiplicity, shell_index_2d


class ImageBand:
    """The frequencies a band-limited method compares, on the half spectrum of its working grid.

    ``shells`` ``[M, M//2+1]``: rounded radius in Fourier pixels (of the D grid, which the working grid
    samples one to one), clamped to D//2; ``weight``: the full-spectrum multiplicity of each pixel inside the
    band (radius below ``D apix / resolution_limit_A``, Nyquist and M/2), 0 outside; ``n_shells = D//2 + 1``."""

    def __init__(self, box: int, pixel_size: float, resolution_limit_A: float | None = None, size: int | None = None):
        m = box if size is None else size
        self.box, self.size, self.n_shells = box, m, box // 2 + 1
        self.shells = shell_index_2d(m).clamp(max=box // 2)
        limit = box // 2 if resolution_limit_A is None else box * pixel_size / resolution_limit_A
        inside = (self.shells < min(limit, box // 2, m // 2)).float()
        self.weight = half_spectrum_multiplicity(m) * inside
        self.inside = inside

    def per_pixel(self, per_shell: torch.Tensor) -> torch.Tensor:
        """A ``[D//2+1]`` per-shell quantity spread onto the pixels ``[M, M//2+1]``."""
        return per_shell[self.shells]

    def shell_sums(self, values: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-shell sums ``[D//2+1]`` (float64) of ``values`` and ``counts`` ``[..., M, M//2+1]`` (summed over
        leading axes), each weighted by the in-band multiplicity: numerator and denominator of a per-shell
        mean such as the noise power."""
        idx = self.shells.reshape(-1)
        s = torch.zeros(self.n_shells, dtype=torch.float64)
        c = torch.zeros(self.n_shells, dtype=torch.float64)
        s.index_add_(0, idx, (values * self.weight).reshape(-1, idx.numel()).sum(0).double())
        c.index_add_(0, idx, (counts * self.weight).reshape(-1, idx.numel()).sum(0).double())
        return s, c


class VolumeBand:
    """In-band coefficients of the D-grid FFTW half layout ``[D, D, D//2+1]`` (z, y in FFT order, kx = 0..D//2):
    flat indices ``[P]``, rounded shell ``[P]``, Friedel multiplicity ``[P]`` and frequencies ``[P, 3]`` (x, y, z)."""

    def __init__(self, d: int, limit_px: float):
        self.d = d
        f = torch.fft.fftfreq(d, 1.0 / d)
        kx = torch.arange(d // 2 + 1, dtype=torch.float32)
        kz, ky, kxx = torch.meshgrid(f, f, kx, indexing="ij")
        shell = torch.round(torch.sqrt(kz**2 + ky**2 + kxx**2)).long().reshape(-1)
        self.idx = torch.nonzero(shell < min(limit_px, d // 2)).squeeze(1)
        self.shell = shell[self.idx]
        self.n_shells = d // 2 + 1
        self.mult = torch.where(kxx.reshape(-1)[self.idx] == 0, 1.0, 2.0).double()
        self.freq = torch.stack([kxx.reshape(-1), ky.reshape(-1), kz.reshape(-1)], -1)[self.idx]  # (x, y, z)
        self.lookup = torch.full((d * d * (d // 2 + 1),), -1, dtype=torch.long)
        self.lookup[self.idx] = torch.arange(len(self.idx))

    @property
    def size(self) -> int:
        return len(self.idx)

    def gather(self, half: torch.Tensor) -> torch.Tensor:
        """``[..., D, D, D//2+1]`` -> ``[..., P]``."""
        return half.reshape(*half.shape[:-3], -1)[..., self.idx]

    def scatter(self, vec: torch.Tensor) -> torch.Tensor:
        """``[..., P]`` -> ``[..., D, D, D//2+1]`` (zeros outside the band)."""
        d = self.d
        out = torch.zeros(*vec.shape[:-1], d * d * (d // 2 + 1), dtype=vec.dtype)
        out[..., self.idx] = vec
        return out.reshape(*vec.shape[:-1], d, d, d // 2 + 1)

    def per_shell(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of ``[P]`` values per shell -> ``[D//2+1]`` float64."""
        return torch.zeros(self.n_shells, dtype=torch.float64).index_add_(0, self.shell, x.double())

    def to_real(self, vec: torch.Tensor) -> torch.Tensor:
        """In-band spectra ``[..., P]`` -> real volumes ``[..., D, D, D]`` (origin at D//2)."""
        d = self.d
        vol = torch.fft.irfftn(self.scatter(vec.to(torch.complex128)), s=(d, d, d), dim=(-3, -2, -1))
        return torch.fft.fftshift(vol, dim=(-3, -2, -1)).float()

    def from_real(self, vol: torch.Tensor) -> torch.Tensor:
        """Real volumes ``[..., D, D, D]`` (origin at D//2) -> in-band spectra ``[..., P]`` complex64."""
        return self.gather(rfft3_half(vol)).to(torch.complex64)


def rfft3_half(vol: torch.Tensor) -> torch.Tensor:
    """Real ``[..., D, D, D]`` (origin at D//2) -> FFTW half layout ``[..., D, D, D//2+1]`` (unnormalised)."""
    return torch.fft.rfftn(torch.fft.ifftshift(vol, dim=(-3, -2, -1)), dim=(-3, -2, -1))

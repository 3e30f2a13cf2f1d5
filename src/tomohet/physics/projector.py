"""Fourier slice projection (extraction) and its adjoint (insertion), pure PyTorch.

One forward model for everything: a projection of a volume seen with rotation ``A`` (RELION convention,
see :mod:`tomohet.physics.rotations`) has the 2D spectrum ``P(k2) = V(A.T @ (kx, ky, 0))``. Extraction uses
trilinear interpolation (``grid_sample``) on an oversampled, gridding-precorrected full spectrum; insertion
scatters trilinear weights into a full spectrum that is made Hermitian at the end. The trilinear kernel
multiplies real space by ``sinc^2(x / G)`` per axis, which :func:`gridding_correction` undoes.
"""

from __future__ import annotations

import math

import torch

from .fourier import crop_to, fft3_centered, half_grid_2d, ifft3_centered, irfft2_centered, pad_to
from .insertion import band_points, scatter_complex, slice_points, trilinear_corners


def gridding_correction(size: int, device=None) -> torch.Tensor:
    """``[G, G, G]`` separable ``sinc^2`` profile of trilinear interpolation on a G-grid (real space)."""
    x = (torch.arange(size, device=device, dtype=torch.float32) - size // 2) / size
    s = torch.sinc(x) ** 2
    return s[:, None, None] * s[None, :, None] * s[None, None, :]


def slice_coordinates(rotations: torch.Tensor, size: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """3D sample coordinates (x, y, z), in volume Fourier voxels, of the half centred 2D grid of size
    ``size`` seen with ``rotations`` ``[B, 3, 3]``: ``scale * A.T @ (kx, ky, 0)``. Returns the coordinates
    ``[B, M, M//2+1, 3]`` and the in-band mask ``[M, M//2+1]`` (radius < M/2)."""
    kx, ky = half_grid_2d(size, rotations.device)
    rt = rotations.to(torch.float32).transpose(-1, -2)  # A^T
    # column 0 and 1 of A^T multiply kx and ky
    coords = rt[:, None, None, :, 0] * kx[None, :, :, None] + rt[:, None, None, :, 1] * ky[None, :, :, None]
    inband = (kx**2 + ky**2) < (size / 2) ** 2
    return coords * scale, inband


class VolumeProjector:
    """Projects one volume (or a stack of K volumes) for many rotations at once.

    The volume ``[D, D, D]`` or ``[K, D, D, D]`` is zero-padded by ``oversampling``, divided by the gridding
    profile and transformed once; :meth:`project_ft` then returns half centred spectra on the D grid, or with
    ``out_size`` M < D only their central M x (M//2+1) part (the frequencies below M/2 of the D grid, same
    values; Fourier cropping for band-limited work, with a table cropped to match).
    """

    def __init__(self, volume: torch.Tensor, oversampling: float = 2.0, out_size: int | None = None):
        vol = volume.to(torch.float32)
        self.stacked = vol.ndim == 4
        if not self.stacked:
            vol = vol[None]
        self.box = vol.shape[-1]
        self.out_size = self.box if out_size is None else int(out_size)
        if self.out_size != self.box and not (2 <= self.out_size < self.box and self.out_size % 2 == 0):
            raise ValueError(f"out_size must be even and at most the box {self.box}, got {out_size}")
        g = int(round(self.box * oversampling))
        g += g % 2
        self.grid = g
        vol = pad_to(vol, g, 3) / gridding_correction(g, vol.device)
        ft = fft3_centered(vol)  # [K, G, G, G]
        # in-band points of an M-spectrum lie within (M/2) G/D voxels of the centre: keep that cube plus one
        # voxel on each side, so every trilinear corner reads the same value as on the full grid
        self._scale = g / self.box
        gc = min(g, 2 * math.ceil(self.out_size * self._scale / 2) + 2)
        self._centre = gc // 2
        ft = crop_to(ft, gc, 3)
        self.n_volumes = vol.shape[0]
        # voxel-major table [Gc^3, K, 2] (Gc: the kept cube): the K volumes' (re, im) of one voxel are
        # contiguous, so a trilinear corner is one short contiguous read for all volumes (a channels-first
        # grid_sample reads 2K far-apart places per corner and is slower on CPU). One zero plane is appended on
        # the high side of each axis: uncropped, in-band points reach up to G/2 voxels from the centre, i.e.
        # between index G-1 and G (zero there, as grid_sample's zero padding); they never go below index 0.
        self._table_size = gc
        tab = torch.view_as_real(ft).permute(1, 2, 3, 0, 4).reshape(gc, gc, gc, 2 * self.n_volumes)
        self._table = torch.nn.functional.pad(tab, (0, 0, 0, 1, 0, 1, 0, 1)).reshape(-1, 2 * self.n_volumes)

    def project_ft(self, rotations: torch.Tensor, chunk: int = 1 << 17) -> torch.Tensor:
        """Half centred spectra on the M grid (``out_size``, default D): ``[B, M, M//2+1]`` (or
        ``[K, B, M, M//2+1]`` for a stack).

        Trilinear interpolation at ``(G/D) A^T (kx, ky, 0)`` of the in-band pixels (radius < M/2, zero
        outside), the same values as ``grid_sample(align_corners=True)`` on the oversampled grid; ``chunk``
        bounds the number of pixels interpolated at once (memory)."""
        d, k = self.out_size, self.n_volumes
        idx, _, _ = band_points(d, d * self._scale, rotations.device)
        b = rotations.shape[0]
        c = slice_points(rotations, d, d * self._scale, centre=self._centre)  # [B*n, 3] (x, y, z) voxels
        vals = self._interpolate(c, chunk)
        out = torch.zeros(k, b, d * (d // 2 + 1), dtype=torch.complex64, device=c.device)
        per_volume = vals.view(b, -1, k, 2)
        for j in range(k):  # volume by volume: no transposed copy of all values at once
            out[j][:, idx] = torch.view_as_complex(per_volume[:, :, j])
        ft = out.reshape(k, b, d, d // 2 + 1)
        return ft if self.stacked else ft[0]

    def sample(self, points: torch.Tensor, chunk: int = 1 << 17) -> torch.Tensor:
        """The volumes' spectra at 3D frequencies ``points [N, 3]`` (x, y, z, in Fourier voxels of the D grid,
        zero at the centre; ``|k| < out_size / 2``): ``[N, K, 2]`` float32 (real, imaginary), by the trilinear
        interpolation of :meth:`project_ft` (a central section is the special case ``A^T (kx, ky, 0)``)."""
        c = points.to(torch.float32) * self._scale + self._centre
        return self._interpolate(c, chunk).view(-1, self.n_volumes, 2)

    def _interpolate(self, c: torch.Tensor, chunk: int) -> torch.Tensor:
        """Trilinear values ``[N, 2K]`` at table coordinates ``c [N, 3]`` (x, y, z voxels of the kept cube)."""
        g, k = self._table_size, self.n_volumes
        vals = torch.empty(c.shape[0], 2 * k, dtype=torch.float32, device=c.device)
        g1 = g + 1  # the padded table's size
        offsets = [(oz * g1 + oy) * g1 + ox for oz in (0, 1) for oy in (0, 1) for ox in (0, 1)]
        for s0 in range(0, c.shape[0], chunk):
            cc = c[s0 : s0 + chunk]
            base = torch.floor(cc).clamp(0, g - 1)
            f = (cc - base).clamp(0, 1)
            bl = base.long()
            flat = (bl[:, 2] * g1 + bl[:, 1]) * g1 + bl[:, 0]
            wx, wy, wz = [(1 - f[:, i : i + 1], f[:, i : i + 1]) for i in range(3)]
            acc = vals[s0 : s0 + chunk].zero_()
            corner = 0
            for oz in (0, 1):
                for oy in (0, 1):
                    wzy = wz[oz] * wy[oy]
                    for ox in (0, 1):
                        acc.addcmul_(self._table.index_select(0, flat + offsets[corner]), wzy * wx[ox])
                        corner += 1
        return vals

    def project(self, rotations: torch.Tensor) -> torch.Tensor:
        """Real-space projections ``[B, D, D]`` (sum along the rotated z axis, in volume units)."""
        if self.out_size != self.box:
            raise ValueError("real-space projections need the full box (out_size = D)")
        return irfft2_centered(self.project_ft(rotations), self.box)


class FourierAccumulator:
    """Weighted Fourier insertion (the adjoint of :class:`VolumeProjector`) into a ``[G, G, G]`` grid.

    Insert half centred spectra of size M with per-pixel weights; ``scale = G / M`` maps image frequencies
    to volume voxels (1 when images were padded to the grid size). Accumulates ``sum w * X`` and
    ``sum w2`` over all inserted images; both are Hermitian-completed in :meth:`finalize`.
    """

    def __init__(self, grid: int, device=None):
        self.grid = grid
        self.data = torch.zeros(grid**3, 2, dtype=torch.float32, device=device)
        self.weight = torch.zeros(grid**3, dtype=torch.float32, device=device)
        self.count = 0

    def insert(
        self, spectra: torch.Tensor, weights: torch.Tensor | None, rotations: torch.Tensor, chunk: int = 1 << 18
    ) -> None:
        """``spectra`` ``[B, M, M//2+1]`` complex (already multiplied by their weight, e.g. CTF x dose),
        ``weights`` ``[B, M, M//2+1]`` real (e.g. CTF^2 x dose^2) or None, ``rotations`` ``[B, 3, 3]``;
        ``chunk`` bounds the number of pixels inserted at once (the corner indices take 64 bytes per pixel)."""
        b, m = spectra.shape[0], spectra.shape[-2]
        g = self.grid
        idx, _, half = band_points(m, g, spectra.device)
        step = max(1, chunk // max(len(idx), 1))
        for s0 in range(0, b, step):
            sl = slice(s0, s0 + step)
            n = len(rotations[sl])
            # coordinates of the in-band pixels only: scale * A^T @ (kx, ky, 0), shifted to voxel indices
            flat, w = trilinear_corners(slice_points(rotations[sl], m, g, centre=g // 2), g)
            vals = (torch.view_as_real(spectra[sl].reshape(n, -1)[:, idx]) * half[:, None]).reshape(-1, 2)
            scatter_complex(self.data, flat, w, vals)
            if weights is not None:
                wts = (weights[sl].reshape(n, -1)[:, idx].to(torch.float32) * half).reshape(-1)
                self.weight.index_add_(0, flat.reshape(-1), (w * wts).reshape(-1))
        self.count += b

    def merge(self, other: FourierAccumulator) -> None:
        """Add another accumulator's sums (map/reduce over particle chunks)."""
        self.data += other.data
        self.weight += other.weight
        self.count += other.count

    def finalize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Hermitian-completed ``(data [G,G,G] complex, weight [G,G,G] real)``: ``V(k) += conj(V(-k))``."""
        g = self.grid
        data = torch.view_as_complex(self.data.reshape(g, g, g, 2).contiguous())
        weight = self.weight.reshape(g, g, g)
        return data + _mirror(data).conj(), weight + _mirror(weight)


def _mirror(x: torch.Tensor) -> torch.Tensor:
    """``x(-k)`` on a full centred grid (index i -> G - i; the unpaired Nyquist plane wraps, and lies
    outside the band anyway)."""
    return torch.roll(torch.flip(x, dims=(-3, -2, -1)), shifts=(1, 1, 1), dims=(-3, -2, -1))


def wiener_volume(
    data: torch.Tensor, weight: torch.Tensor, box: int, regularizer: torch.Tensor | float
) -> torch.Tensor:
    """Real-space volume ``[D, D, D]`` from accumulated sums: ``V = data / (weight + regularizer)``, inverse
    transform, gridding correction and crop to the box. ``regularizer`` is a scalar or a ``[G,G,G]`` grid
    (e.g. 1/SNR per shell); frequencies outside the band (radius >= G/2) are zeroed. A grid smaller than the
    box (sums of Fourier-cropped images, inserted without oversampling) is zero-padded to the box first."""
    g = data.shape[-1]
    ft = data / (weight + regularizer)
    k = torch.arange(g, device=data.device, dtype=torch.float32) - g // 2
    r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    ft = ft * (r2 < (g / 2) ** 2)
    if g < box:
        full = torch.zeros((box,) * 3, dtype=ft.dtype, device=ft.device)
        lo = box // 2 - g // 2
        full[lo : lo + g, lo : lo + g, lo : lo + g] = ft
        ft, g = full, box
    vol = ifft3_centered(ft) / gridding_correction(g, data.device)
    return crop_to(vol, box, 3).contiguous()

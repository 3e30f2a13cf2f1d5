"""Subtomogram spectra for the 3D methods, in the band and in the reference frame.

Made once per chunk of particles and cached when they fit (:class:`PreparedSpectra`): from 2D tilt stacks by
inserting each particle's images straight into the reference frame (:func:`insert_reference_frame`), from RELION
3.1 / 4 subtomograms by reading data and CTF^2 weights and resampling them into the reference frame
(:func:`resample_to_reference`); :class:`ClassReferences` rotates class maps into each particle's frame for the
E-step. Conventions as in :mod:`tomohet.methods.em3d` (FFTW half layout, in-band coefficients ``[P]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..physics.bands import VolumeBand, rfft3_half
from ..physics.forward import batch_transfer_functions
from ..physics.fourier import crop_to, fft3_centered, ifft3_centered, pad_to, rfft2_centered, shift_phase_2d
from ..physics.insertion import band_points, slice_points, trilinear_corners
from ..physics.projector import VolumeProjector, gridding_correction
from ..physics.subtomogram import to_fftw_half

if TYPE_CHECKING:
    from .em3d import EM3DOptions


def insert_reference_frame(batch, pixel_size: float, premultiplied: bool, oversampling: int):
    """Reference-frame subtomograms of an :class:`~tomohet.data.model.ImageBatch`: ``(d, W)`` in FFTW half layout
    ``[B, D, D, D//2+1]`` (complex, real). Each visible image, zero-padded to ``M = oversampling x D``, is inserted
    with its own rotation (trilinear, in-band pixels only, one ``index_add_`` per channel into B grids of ``M^3``
    in FFT order); the data are brought back to the D box by inverse transform (``2 Re ifft`` = the Hermitian
    completion), gridding correction and a real-space crop, the weights by taking every ``oversampling``-th voxel
    (plus their Friedel mate), as in :func:`~tomohet.physics.subtomogram.particle_subtomograms` (same result to
    float precision, without the multiplicity count and several times faster)."""
    b, t, d = batch.images.shape[:3]
    m = d * oversampling
    vis = batch.visible.reshape(-1)
    ctf, expo = batch_transfer_functions(batch, m, pixel_size)  # [B*T, M, M//2+1]
    ft = rfft2_centered(pad_to(batch.images.reshape(b * t, d, d).float(), m, 2))
    ft = ft * shift_phase_2d(m, -batch.shifts.reshape(-1, 2))
    h = (ctf * expo)[vis]
    spectra = ft[vis] * (expo[vis] if premultiplied else h)
    rot = batch.rotations.reshape(-1, 3, 3)[vis]
    part = torch.arange(b)[:, None].expand(b, t).reshape(-1)[vis]
    n = rot.shape[0]
    idx, _, half = band_points(m, m, spectra.device)
    # |k| < M/2: neighbours stay inside (-M/2, M/2], wrapped into FFT order; one grid of M^3 per particle
    flat, w = trilinear_corners(slice_points(rot, m, m), m, wrap=True, index_dtype=torch.int32)
    base = (part.to(torch.int32)[:, None] * m**3).expand(n, len(idx)).reshape(-1)
    flat = (flat + base).reshape(-1)
    vals = (torch.view_as_real(spectra.reshape(n, -1)[:, idx]) * half[:, None]).reshape(-1, 2)
    wts = ((h * h).reshape(n, -1)[:, idx] * half).reshape(-1)
    data = torch.zeros(2, b * m**3)
    weight = torch.zeros(b * m**3)
    for ch in range(2):
        data[ch].index_add_(0, flat, (w * vals[:, ch]).reshape(-1))
    weight.index_add_(0, flat, (w * wts).reshape(-1))
    data_c = torch.complex(data[0], data[1]).reshape(b, m, m, m)
    vol = 2 * torch.fft.ifftn(data_c, dim=(-3, -2, -1)).real  # origin at index 0
    crop = (torch.arange(d) - d // 2) % m  # centred crop of the box, origin at D//2
    vol = vol[:, crop[:, None, None], crop[None, :, None], crop[None, None, :]]
    vol = vol / crop_to(gridding_correction(m), d, 3)
    weight = weight.reshape(b, m, m, m)
    kd = torch.arange(d) - d // 2  # D-grid frequencies, full centred order
    sub, neg = (kd * oversampling) % m, (-kd * oversampling) % m
    wd = weight[:, sub[:, None, None], sub[None, :, None], sub[None, None, :]]
    wd = wd + weight[:, neg[:, None, None], neg[None, :, None], neg[None, None, :]]
    return rfft3_half(vol), to_fftw_half(wd)


def shift_phase_3d(band: VolumeBand, shifts: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` phase factors that move the content of D-box volumes by ``+shifts [B, 3]`` (x, y, z) pixels."""
    arg = (band.freq[None].double() * shifts[:, None, :].double()).sum(-1)
    return torch.polar(torch.ones_like(arg), -2 * math.pi * arg / band.d)


def resample_to_reference(
    data: torch.Tensor, weight: torch.Tensor, rotations: torch.Tensor, band: VolumeBand
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tomogram-frame subtomograms -> reference-frame in-band spectra ``(d [B, P] complex64, W [B, P])``.

    ``data [B, D, D, D]`` real (premultiplied, centred), ``weight [B, D, D, D]`` full centred, ``rotations
    [B, 3, 3]`` with ``subtomo_i(x) = V(R_i^T x)``: samples ``d(R_i q)`` and ``W(R_i q)`` with the *same*
    trilinear operator on the D grid (``grid_sample``, ``align_corners=True``), so that ``d = W V`` still holds
    after resampling for a smooth ``V`` (sampling the data more finely than the weights, e.g. from a padded
    spectrum, breaks that consistency and measurably hurts the initial PCA)."""
    d = data.shape[-1]
    rq = torch.einsum("bij,pj->bpi", rotations.float(), band.freq.float())  # R_i q, (x, y, z)
    src = torch.cat(
        [torch.view_as_real(fft3_centered(data.float())).permute(0, 4, 1, 2, 3), weight[:, None].float()], 1
    )
    grid = ((rq + d // 2) * (2.0 / (d - 1)) - 1.0)[:, None, None]  # [B, 1, 1, P, 3]
    s = torch.nn.functional.grid_sample(src, grid, mode="bilinear", align_corners=True)[:, :, 0, 0]  # [B, 3, P]
    return torch.complex(s[:, 0], s[:, 1]), s[:, 2].clamp_min(0)


@dataclass
class SpectraChunk:
    """Prepared spectra of B particles: ``d, w [B, P]`` in the particle's own frame (exact, for the E-step),
    ``rot [B, 3, 3]`` its pose (None: already the reference frame) and ``d_ref, w_ref`` the same data resampled
    into the reference frame (for the M-step sums)."""

    particles: np.ndarray
    d: torch.Tensor  # complex64
    w: torch.Tensor  # float32
    rot: torch.Tensor | None
    d_ref: torch.Tensor
    w_ref: torch.Tensor

    @property
    def nbytes(self) -> int:
        n = self.d.numel() * 12
        return n if self.rot is None else 2 * n


class PreparedSpectra:
    """Prepared spectra per chunk of particles (:class:`SpectraChunk`), made once and cached when they fit in
    ``cache_gb``, otherwise remade on every pass (streamed from the files / images). Build it with
    :func:`prepare_em3d` to share the work between runs that differ only in EM options (same band, batch size and
    oversampling)."""

    def __init__(self, dataset, band: VolumeBand, opt: EM3DOptions):
        self.ds = dataset
        self.band = band
        self.opt = opt
        self.subtomograms = dataset.kind == "3d"
        per = band.size * 12 * (2 if self.subtomograms else 1)
        fits = dataset.n_particles * per < opt.cache_gb * 1e9
        self.cache: dict[int, SpectraChunk] | None = {} if fits else None

    def _make(self, chunk: np.ndarray) -> SpectraChunk:
        ds, band = self.ds, self.band
        bt = ds.batch(chunk)
        if not self.subtomograms:
            dh, wh = insert_reference_frame(bt, ds.pixel_size, ds.ctf_premultiplied, self.opt.oversampling)
            d, w = band.gather(dh).to(torch.complex64), band.gather(wh).float().clamp_min(0)
            return SpectraChunk(chunk, d, w, None, d, w)
        if ds.ctf_premultiplied:  # RELION 4: premultiplied data, CTF^2 weights
            data, weight = bt.data, bt.weight
        else:  # RELION 3.1: X = C V + white noise -> d = C X, W = C^2
            ft = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(bt.data, dim=(-3, -2, -1)),
                                                   dim=(-3, -2, -1)), dim=(-3, -2, -1))  # fmt: skip
            data, weight = ifft3_centered(ft * bt.ctf), bt.ctf**2
        d = band.gather(rfft3_half(data))
        w = band.gather(to_fftw_half(weight)).float().clamp_min(0)
        moved = bool((bt.shifts != 0).any())
        if moved:  # the particle sits at -shift: move it to the centre (weights are unaffected)
            d = d * shift_phase_3d(band, bt.shifts).to(d.dtype)
        rot = bt.rotations.double()
        if torch.allclose(rot, torch.eye(3, dtype=rot.dtype).expand_as(rot), atol=1e-7):
            return SpectraChunk(chunk, d.to(torch.complex64), w, None, d.to(torch.complex64), w)
        d_ref, w_ref = resample_to_reference(data, weight, rot, band)
        if moved:
            d_ref = d_ref * shift_phase_3d(band, bt.shifts).to(d_ref.dtype)
        return SpectraChunk(chunk, d.to(torch.complex64), w, rot, d_ref.to(torch.complex64), w_ref.float())

    def __iter__(self):
        for chunk in self.ds.chunks(self.opt.batch_size):
            key = int(chunk[0])
            item = self.cache.get(key) if self.cache is not None else None
            if item is None:
                item = self._make(chunk)
                if self.cache is not None:
                    self.cache[key] = item
            yield item


class BandView:
    """Prepared spectra of a wider band (e.g. the full band, cached once for the consensus resolution) seen on a
    narrower ``band``: each chunk's in-band columns selected, nothing prepared twice."""

    def __init__(self, source: PreparedSpectra, band: VolumeBand):
        self.pos = source.band.lookup[band.idx]
        if bool((self.pos < 0).any()):
            raise ValueError("the band view must lie inside the prepared band")
        self.ds, self.band, self.opt, self.source = source.ds, band, source.opt, source

    def __iter__(self):
        p = self.pos
        for c in self.source:
            same = c.d_ref is c.d
            d_ref, w_ref = (c.d[:, p], c.w[:, p]) if same else (c.d_ref[:, p], c.w_ref[:, p])
            d, w = (d_ref, w_ref) if same else (c.d[:, p], c.w[:, p])
            yield SpectraChunk(c.particles, d, w, c.rot, d_ref, w_ref)


class ClassReferences:
    """The class maps as in-band spectra ``[K, P]`` and, for particles in their own frame, the same maps sampled at
    ``R_i^T k`` by the shared projector's trilinear interpolation on a ``pad`` x zero-padded, gridding-precorrected
    spectrum (:meth:`~tomohet.physics.projector.VolumeProjector.sample`)."""

    def __init__(self, band: VolumeBand, vols: torch.Tensor, pad: int = 2):
        self.band = band
        self.vols = vols  # [K, P] complex128
        self.pad = pad
        self._projector: VolumeProjector | None = None

    def sample(self, rot: torch.Tensor | None) -> torch.Tensor:
        """Class spectra seen by each particle: ``[B, K, P]`` complex128 (``[1, K, P]`` when ``rot`` is None)."""
        return self.sample_single(rot).to(torch.complex128) if rot is not None else self.vols[None]

    def sample_single(self, rot: torch.Tensor) -> torch.Tensor:
        """:meth:`sample` in single precision (``[B, K, P]`` complex64), for the many rotations of a search."""
        if self._projector is None:
            self._projector = VolumeProjector(self.band.to_real(self.vols), oversampling=self.pad)
        k, b = self.vols.shape[0], rot.shape[0]
        q = torch.einsum("bji,pj->bpi", rot.float(), self.band.freq.float())  # R_i^T k, (x, y, z)
        s = self._projector.sample(q.reshape(-1, 3)).view(b, -1, k, 2)
        return torch.view_as_complex(s.permute(0, 2, 1, 3).contiguous())


def wedge_difference_volumes(
    source: PreparedSpectra,
    consensus_vec: torch.Tensor,
    size: int,
    finish: Callable[[torch.Tensor], torch.Tensor],
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Wedge-masked differences of every particle against the consensus (in-band vector ``[P]``), in the reference
    frame, on a small box of ``size``: ``(d_i - W_i V0) / (W_i + lambda_i)`` (``lambda_i`` the particle's mean
    weight in the box; frequencies its wedge hides carry no deviation), as real volumes ``[B, s, s, s]`` (origin
    at s//2) passed through ``finish`` (masking, band-limiting, flattening). Rows in particle order."""
    band, d = source.band, source.band.d
    f = torch.fft.fftfreq(size, 1.0 / size).long()
    kx = torch.arange(size // 2 + 1)
    iz, iy, ix = torch.meshgrid(f % d, f % d, kx, indexing="ij")
    pos = band.lookup[((iz * d + iy) * (d // 2 + 1) + ix).reshape(-1)]  # -1: outside the band
    ok = pos >= 0
    sel = pos[ok]
    cons = consensus_vec[sel]
    out = []
    for c in source:
        dd, w = c.d_ref[:, sel].to(torch.complex128), c.w_ref[:, sel].double()
        lam = w.mean(1, keepdim=True).clamp_min(1e-12)
        dev = (dd - w * cons) / (w + lam)
        cube = torch.zeros(dd.shape[0], size**2 * (size // 2 + 1), dtype=torch.complex128)
        cube[:, ok] = dev
        vol = torch.fft.irfftn(cube.reshape(-1, size, size, size // 2 + 1), s=(size,) * 3, dim=(-3, -2, -1))
        out.append(finish(torch.fft.fftshift(vol, dim=(-3, -2, -1))))
        if progress:
            progress(len(c.particles))
    return torch.cat(out)

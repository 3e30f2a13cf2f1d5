"""3D subtomograms from 2D tilt-series stacks: the adjoint of the one forward model, per particle.

A particle's subtomogram is the weighted Fourier insertion of its own tilt images (``H_ij = CTF_ij x E_ij``):

    data_i(k) = sum_j H_ij(k) X_ij(k)   (CTF-premultiplied; premultiplied images are inserted as E X)
    ctf2_i(k) = sum_j H_ij(k)^2          (the per-voxel weight; zero in the missing wedge)
    mult_i(k) = sum_j 1                  (number of tilt images whose slice reaches the voxel)

inserted with the rotation of each image *in the subtomogram's frame*: ``R_ij = A_ij @ pose_i^T`` where
``A_ij`` is the per-image rotation of the dataset (reference -> image) and ``pose_i`` the rotation of the
reference inside the subtomogram (``subtomo_i(x) = V(pose_i^T x)``). ``pose = identity`` gives subtomograms
in the reference frame; the particle's own pose gives subtomograms in the tomogram frame (as RELION and STOPGAP
write them), where only the tilt geometry enters the insertion and the pose is kept as Euler angles.

Layouts: real volumes ``[B, D, D, D]`` (z, y, x; origin at D//2); weight volumes on the *full centred* D grid
``[B, D, D, D]`` (k = 0 at index D//2) unless stated; files use RELION's FFTW half layout ``[D, D, D//2+1]``
(see :func:`to_fftw_half`). Images are zero-padded by an integer ``oversampling`` and inserted into a grid of
``G = oversampling * D`` (exact sampling, as in :mod:`tomohet.physics.reconstruct`); the data are brought back to
the box by inverse transform, gridding correction and a real-space crop, the weights by taking every
``oversampling``-th voxel (the D grid's frequencies), so ``FT_D(data) ~= ctf2 * FT_D(V)`` on the D grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .forward import batch_transfer_functions
from .fourier import crop_to, fft3_centered, ifft3_centered, pad_to, rfft2_centered, shift_phase_2d
from .insertion import scatter_complex, trilinear_corners
from .projector import gridding_correction, slice_coordinates


@dataclass
class SubtomogramStack:
    """B subtomograms with their weights (all float32)."""

    data: torch.Tensor  # [B, D, D, D] real space, CTF-premultiplied (sum_j H X inserted)
    ctf2: torch.Tensor  # [B, D, D, D] full centred: sum_j H^2 per voxel
    multiplicity: torch.Tensor  # [B, D, D, D] full centred: number of tilt images per voxel


def tilt_rotations(image_rotations: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
    """Per-image rotations in the subtomogram frame, ``A_ij @ pose_i^T``: ``[B, T, 3, 3]`` from
    ``image_rotations [B, T, 3, 3]`` and ``poses [B, 3, 3]`` (orthogonal, so the inverse is the transpose)."""
    return image_rotations.double() @ poses.double().transpose(-1, -2)[:, None]


def _mirror(x: torch.Tensor) -> torch.Tensor:
    """``x(-k)`` on full centred grids (last three axes)."""
    return torch.roll(torch.flip(x, dims=(-3, -2, -1)), shifts=(1, 1, 1), dims=(-3, -2, -1))


def insert_batched(
    spectra: torch.Tensor,
    weights: torch.Tensor,
    rotations: torch.Tensor,
    visible: torch.Tensor,
    grid: int,
    stride: int = 1,
    multiplicity: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Trilinear Fourier insertion of B particles x T images into B separate ``[G, G, G]`` grids at once.

    ``spectra [B, T, G, G//2+1]`` complex half centred (already weighted), ``weights`` the same shape real,
    ``rotations [B, T, 3, 3]``, ``visible [B, T]`` bool. One ``index_add_`` into a ``[B*G^3]`` buffer (the flat
    index is offset by ``particle * G^3``); same kernel, Friedel halving and Hermitian completion as
    :class:`~tomohet.physics.projector.FourierAccumulator`. Returns full centred ``(data complex, weight,
    multiplicity)``, each ``[B, G, G, G]`` (multiplicity None when not asked for: its count is the costly part)."""
    b, t, m = spectra.shape[0], spectra.shape[1], spectra.shape[-2]
    g = grid
    dev = spectra.device
    vis = visible.reshape(-1)
    part = torch.arange(b, device=dev)[:, None].expand(b, t).reshape(-1)[vis]
    coords, inband = slice_coordinates(rotations.reshape(-1, 3, 3)[vis], m, g / m)  # [n, M, Mh, 3]
    n = coords.shape[0]
    half = torch.ones(m, m // 2 + 1, device=dev)
    half[:, 0] = 0.5  # the kx = 0 column carries both Friedel halves
    keep = (inband * half).expand(n, -1, -1).reshape(-1)
    sel = keep > 0
    keep = keep[sel]
    pix = m * (m // 2 + 1)
    base = (part[:, None].expand(n, pix).reshape(-1)[sel]) * g**3
    c = coords.reshape(-1, 3)[sel] + g // 2
    vals = torch.view_as_real(spectra.reshape(-1, m, m // 2 + 1)[vis].reshape(-1)[sel]) * keep[:, None]
    wts = weights.reshape(-1, m, m // 2 + 1)[vis].reshape(-1)[sel].to(torch.float32) * keep
    data = torch.zeros(b * g**3, 2, dtype=torch.float32, device=dev)
    weight = torch.zeros(b * g**3, dtype=torch.float32, device=dev)
    flat, w = trilinear_corners(c, g)  # [8, N] corner-major (dz, dy, dx)
    flat = flat + base
    scatter_complex(data, flat, w, vals)
    weight.index_add_(0, flat.reshape(-1), (w * wts).reshape(-1))
    data_c = torch.view_as_complex(data.reshape(b, g, g, g, 2).contiguous())
    weight = weight.reshape(b, g, g, g)
    if not multiplicity:
        return data_c + _mirror(data_c).conj(), weight + _mirror(weight), None
    # (image, voxel) keys of every voxel an image reaches on the counted lattice, for the multiplicity count
    image = torch.arange(n, device=dev)[:, None].expand(n, pix).reshape(-1)[sel]
    lat = (torch.floor(c).long() - g // 2) % stride  # on the counted lattice when (lat + offset) % stride == 0
    touched = []
    for corner in range(8):
        offset = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)  # (dz, dy, dx)
        on = w[corner] > 0
        for axis, o in zip((2, 1, 0), offset, strict=True):
            on &= ((lat[:, axis] + o) % stride) == 0
        touched.append(image[on] * (b * g**3) + flat[corner][on])
    # multiplicity: number of distinct images reaching each voxel of the Hermitian-completed grid
    keys = torch.cat(touched)
    img, vox = keys // (b * g**3), keys % (b * g**3)
    p, rest = vox // g**3, vox % g**3
    iz, iy, ix = rest // (g * g), (rest // g) % g, rest % g
    mirrored = p * g**3 + (((g - iz) % g) * g + (g - iy) % g) * g + (g - ix) % g
    keys = torch.unique(torch.cat([keys, img * (b * g**3) + mirrored]))
    mult = torch.bincount(keys % (b * g**3), minlength=b * g**3).to(torch.float32).reshape(b, g, g, g)
    return data_c + _mirror(data_c).conj(), weight + _mirror(weight), mult


def particle_subtomograms(
    images: torch.Tensor,
    rotations: torch.Tensor,
    ctf: torch.Tensor,
    exposure: torch.Tensor,
    visible: torch.Tensor | None = None,
    shifts: torch.Tensor | None = None,
    premultiplied: bool = False,
    oversampling: int = 2,
) -> SubtomogramStack:
    """Subtomograms of B particles from their tilt images.

    ``images [B, T, D, D]`` real (origin at D//2); ``rotations [B, T, 3, 3]`` in the subtomogram's frame (see
    :func:`tilt_rotations`); ``ctf`` and ``exposure`` ``[B, T, M, M//2+1]`` on the padded half centred grid
    ``M = oversampling * D`` (see :func:`~tomohet.physics.forward.transfer_functions`); ``visible [B, T]``
    (absent images get zero weight); ``shifts [B, T, 2]`` pixels (x, y) where the particle centre sits in each
    image (undone before insertion); ``premultiplied``: the images already carry one CTF factor."""
    b, t, d = images.shape[0], images.shape[1], images.shape[-1]
    if int(oversampling) != oversampling or oversampling < 1:
        raise ValueError(f"oversampling must be a positive integer, got {oversampling}")
    os_ = int(oversampling)
    m = d * os_
    if ctf.shape[-2:] != (m, m // 2 + 1) or exposure.shape[-2:] != (m, m // 2 + 1):
        raise ValueError(f"ctf/exposure must be on the padded grid [.., {m}, {m // 2 + 1}], got {tuple(ctf.shape)}")
    if visible is None:
        visible = torch.ones(b, t, dtype=torch.bool, device=images.device)
    ft = rfft2_centered(pad_to(images.reshape(b * t, d, d).float(), m, 2))
    if shifts is not None:
        ft = ft * shift_phase_2d(m, -shifts.reshape(-1, 2))
    ctf = ctf.reshape(b * t, m, m // 2 + 1)
    expo = exposure.reshape(b * t, m, m // 2 + 1)
    h = ctf * expo
    spectra = (ft * (expo if premultiplied else h)).reshape(b, t, m, m // 2 + 1)
    data_g, w_g, mult_g = insert_batched(spectra, (h * h).reshape(b, t, m, m // 2 + 1), rotations, visible, m, os_)
    vol = ifft3_centered(data_g) / gridding_correction(m, images.device)
    data = crop_to(vol, d, 3).contiguous()
    sub = torch.arange(d, device=images.device) * os_ + (m // 2 - os_ * (d // 2))  # D-grid frequencies in G
    pick = (slice(None), sub[:, None, None], sub[None, :, None], sub[None, None, :])
    return SubtomogramStack(data=data.float(), ctf2=w_g[pick].contiguous(), multiplicity=mult_g[pick].contiguous())


def batch_subtomograms(
    batch,
    pixel_size: float,
    premultiplied: bool,
    poses: torch.Tensor | None = None,
    oversampling: int = 2,
    invert_contrast: bool = False,
) -> SubtomogramStack:
    """Subtomograms of an :class:`~tomohet.data.model.ImageBatch` with the dataset's own weights (CTF x exposure
    from :func:`~tomohet.physics.forward.batch_transfer_functions`). ``poses [B, 3, 3]``: the reference's rotation
    inside each subtomogram (None = reference frame, i.e. the images' own rotations)."""
    b, t, d = batch.images.shape[:3]
    m = d * int(oversampling)
    ctf, expo = batch_transfer_functions(batch, m, pixel_size)
    rot = batch.rotations if poses is None else tilt_rotations(batch.rotations, poses)
    imgs = -batch.images if invert_contrast else batch.images
    return particle_subtomograms(
        imgs, rot, ctf.reshape(b, t, m, -1), expo.reshape(b, t, m, -1), batch.visible, batch.shifts,
        premultiplied, oversampling,
    )  # fmt: skip


def relion31_form(
    stack: SubtomogramStack, n_images: torch.Tensor, eps: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """RELION 3.1 subtomograms: ``(data [B,D,D,D] real, ctf [B,D,D,D] full centred)`` with ``data ~= ctf * V``.

    RELION 3.1 models a subtomogram as ``X = CTF3D * V + white noise``. From the premultiplied sums we take
    ``X = data / sqrt(n (W + e))`` and ``CTF3D = W / sqrt(n (W + e))`` (``W`` = ctf2, ``n [B]`` the particle's
    number of images, ``e = eps * max W`` per particle): exactly consistent, the noise of ``X`` is white (variance
    ``sigma^2 / n``), ``CTF3D <= max|H|`` and zero in the missing wedge."""
    w = stack.ctf2
    e = eps * w.flatten(1).amax(1).clamp_min(1e-12)[:, None, None, None]
    n = n_images.to(w.dtype).clamp_min(1)[:, None, None, None]
    norm = torch.sqrt(n * (w + e))
    d = stack.data.shape[-1]
    ft = fft3_centered(stack.data) / norm
    return crop_to(ifft3_centered(ft), d, 3).float().contiguous(), (w / norm).float()


def to_fftw_half(vol: torch.Tensor) -> torch.Tensor:
    """Full centred ``[..., D, D, D]`` -> RELION/FFTW half layout ``[..., D, D, D//2+1]``: z and y in FFT order
    (k = 0 at index 0, negative frequencies at the end), x = 0..D//2."""
    d = vol.shape[-1]
    xs = (torch.arange(d // 2 + 1) + d // 2) % d
    half = vol[..., xs]
    return torch.fft.ifftshift(half, dim=(-3, -2)).contiguous()


def from_fftw_half(half: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_fftw_half` for a Friedel-symmetric (real, even) weight: ``[..., D, D, D//2+1]`` ->
    full centred ``[..., D, D, D]`` with ``W(-k) = W(k)`` filling kx < 0."""
    d = half.shape[-2]
    cen = torch.fft.fftshift(half, dim=(-3, -2))  # z, y centred; x = 0..D//2
    k = torch.arange(d) - d // 2
    kx = k.abs()  # W(kz, ky, -kx) = W(-kz, -ky, kx)
    neg = k < 0
    out = cen[..., kx]
    flipped = torch.roll(torch.flip(cen, dims=(-3, -2)), shifts=(1, 1), dims=(-3, -2))[..., kx]
    out[..., neg] = flipped[..., neg]
    return out.contiguous()


def average_subtomograms(
    data: torch.Tensor, ctf2: torch.Tensor, poses: torch.Tensor, eps: float = 1e-2, pad: int = 2
) -> torch.Tensor:
    """Weighted subtomogram average in the reference frame: ``V = sum_i data_i(pose_i k) / (sum_i ctf2_i(pose_i k)
    + eps * mean)``, real ``[D, D, D]``. ``data [N,D,D,D]`` premultiplied real-space subtomograms, ``ctf2`` their
    full centred weights, ``poses [N,3,3]`` with ``subtomo_i(x) = V(pose_i^T x)``. Spectra are sampled trilinearly
    on a ``pad``-times padded, gridding-precorrected grid."""
    n, d = data.shape[0], data.shape[-1]
    g = d * pad
    k = torch.arange(g, dtype=torch.float32) - g // 2
    kz, ky, kx = torch.meshgrid(k, k, k, indexing="ij")
    kvec = torch.stack([kx, ky, kz], -1).reshape(-1, 3)  # (x, y, z)
    num = torch.zeros(g, g, g, dtype=torch.complex64)
    den = torch.zeros(g, g, g)
    for i in range(n):  # one particle at a time keeps memory at O(G^3); an analysis helper, not a hot path
        q = kvec @ poses[i].float().T  # pose @ k
        ft = fft3_centered(pad_to(data[i].float(), g, 3) / gridding_correction(g))
        src = torch.view_as_real(ft).permute(3, 0, 1, 2)[None]
        grid = ((q + g // 2) * (2.0 / (g - 1)) - 1.0).reshape(1, g, g, g, 3)
        s = torch.nn.functional.grid_sample(src, grid, mode="bilinear", align_corners=True)[0]
        num += torch.complex(s[0], s[1])
        gw = ((q / pad + d // 2) * (2.0 / (d - 1)) - 1.0).reshape(1, g, g, g, 3)
        den += torch.nn.functional.grid_sample(ctf2[i][None, None].float(), gw, mode="bilinear", align_corners=True)[
            0, 0
        ]
    ft = num / (den + eps * den.mean())
    r2 = kx**2 + ky**2 + kz**2
    ft = ft * (r2 < (g / 2) ** 2)
    return crop_to(ifft3_centered(ft), d, 3).contiguous()

"""The per-image transfer function of the one forward model, shared by every consumer.

``image_ij = IFT[ H_ij(k) * shift_ij(k) * Slice(FT[V], A_ij)(k) ] + noise`` with
``H_ij = CTF_ij x E_ij`` (CTF with the image's own defocus and ``rlnCtfScalefactor``; E_ij the exposure
filter for the image's cumulative dose). The simulator, the reconstructions and every method call these.
"""

from __future__ import annotations

import torch

from .ctf import ctf_2d, exposure_filter_2d


def transfer_functions(
    size: int,
    pixel_size: float,
    defocus_u: torch.Tensor,
    defocus_v: torch.Tensor,
    defocus_angle: torch.Tensor,
    phase_shift: torch.Tensor,
    dose: torch.Tensor,
    ctf_scale: torch.Tensor,
    voltage: torch.Tensor,
    spherical_aberration: torch.Tensor,
    amplitude_contrast: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(CTF, E)`` on the half centred grid of size ``size`` for ``B`` images: each ``[B, M, M//2+1]``.

    Per-image inputs are ``[B]`` (optics may be ``[B]`` too). ``pixel_size`` is that of the grid (a padded
    grid keeps the image pixel size)."""
    ctf = ctf_2d(size, pixel_size, defocus_u, defocus_v, defocus_angle, voltage, spherical_aberration,
                 amplitude_contrast, phase_shift, ctf_scale)  # fmt: skip
    exposure = exposure_filter_2d(size, pixel_size, dose, voltage)
    return ctf, exposure


def batch_transfer_functions(batch, size: int, pixel_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`transfer_functions` for an :class:`~tomohet.data.model.ImageBatch` flattened to ``B*T`` images
    (optics broadcast over tilts)."""
    b, t = batch.dose.shape

    def per_tilt(x: torch.Tensor) -> torch.Tensor:
        return x[:, None].expand(b, t).reshape(-1)

    return transfer_functions(
        size, pixel_size,
        batch.defocus_u.reshape(-1), batch.defocus_v.reshape(-1), batch.defocus_angle.reshape(-1),
        batch.phase_shift.reshape(-1), batch.dose.reshape(-1), batch.ctf_scale.reshape(-1),
        per_tilt(batch.voltage), per_tilt(batch.spherical_aberration), per_tilt(batch.amplitude_contrast),
    )  # fmt: skip

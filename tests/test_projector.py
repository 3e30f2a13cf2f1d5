"""The slice extractor against an independent trilinear interpolation (grid_sample) of the same grid."""

import torch

from tomohet.physics.fourier import fft3_centered, pad_to
from tomohet.physics.projector import VolumeProjector, gridding_correction, slice_coordinates


def _grid_sample_slices(volumes: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Reference: channels-first ``grid_sample`` (zero padding) of the padded, precorrected spectra."""
    k, d = volumes.shape[0], volumes.shape[-1]
    g = 2 * d
    ft = fft3_centered(pad_to(volumes, g, 3) / gridding_correction(g))
    chans = torch.view_as_real(ft).permute(0, 4, 1, 2, 3).reshape(1, 2 * k, g, g, g)
    coords, inband = slice_coordinates(rotations, d, g / d)
    grid = (coords + g // 2) * (2.0 / (g - 1)) - 1.0
    out = torch.nn.functional.grid_sample(chans, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.reshape(k, 2, rotations.shape[0], d, d // 2 + 1).permute(0, 2, 3, 4, 1).contiguous()
    return torch.view_as_complex(out) * inband


def test_extraction_matches_grid_sample_including_band_edge():
    gen = torch.Generator().manual_seed(3)
    for d in (8, 17, 24):
        vols = torch.randn(3, d, d, d, generator=gen)
        q = torch.linalg.qr(torch.randn(200, 3, 3, generator=gen))[0]
        rots = q * torch.det(q)[:, None, None].sign()
        ref = _grid_sample_slices(vols, rots)
        got = VolumeProjector(vols).project_ft(rots, chunk=1000)  # several chunks
        assert got.shape == (3, 200, d, d // 2 + 1)
        assert (got - ref).abs().max() < 1e-5 * ref.abs().max()
        single = VolumeProjector(vols[1]).project_ft(rots[:5])
        assert (single - ref[1, :5]).abs().max() < 1e-5 * ref.abs().max()


def test_cropped_extraction_is_the_band_of_the_full_one():
    """``out_size`` M gives the central M x (M//2+1) part of the full spectra inside radius M/2, from a table
    cropped to match (Fourier cropping for band-limited EM), and refuses odd or too large sizes."""
    gen = torch.Generator().manual_seed(4)
    d = 32
    vols = torch.randn(2, d, d, d, generator=gen)
    q = torch.linalg.qr(torch.randn(50, 3, 3, generator=gen))[0]
    rots = q * torch.det(q)[:, None, None].sign()
    full = VolumeProjector(vols).project_ft(rots)
    for m in (10, 16, 24):
        proj = VolumeProjector(vols, out_size=m)
        got = proj.project_ft(rots)
        assert got.shape == (2, 50, m, m // 2 + 1)
        assert proj._table.shape[0] < VolumeProjector(vols)._table.shape[0]
        lo = d // 2 - m // 2
        ky = torch.arange(m)[:, None] - m // 2
        kx = torch.arange(m // 2 + 1)[None]
        band = (kx**2 + ky**2) < (m / 2) ** 2
        ref = full[:, :, lo : lo + m, : m // 2 + 1] * band
        assert (got - ref).abs().max() < 1e-5 * full.abs().max()
    for bad in (9, 34):
        try:
            VolumeProjector(vols, out_size=bad)
        except ValueError as e:
            assert "out_size" in str(e)
        else:
            raise AssertionError(f"out_size={bad} accepted")

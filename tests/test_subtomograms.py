"""3D subtomograms made from 2D tilt stacks share their geometry and weights; RELION 3.1/4 files round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tomohet.data.io import detect_format
from tomohet.data.relion5 import read_relion5
from tomohet.data.star import read_star, write_star
from tomohet.data.subtomo import particle_poses, read_subtomograms, write_relion31_subtomograms
from tomohet.errors import InputError
from tomohet.physics.forward import transfer_functions
from tomohet.physics.fourier import fft3_centered, ifft3_centered, irfft2_centered
from tomohet.physics.projector import VolumeProjector
from tomohet.physics.rotations import random_rotations, rotation_about_y
from tomohet.physics.subtomogram import (
    average_subtomograms,
    from_fftw_half,
    particle_subtomograms,
    tilt_rotations,
    to_fftw_half,
)

D, APIX, N = 32, 8.0, 8


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1])


@pytest.fixture(scope="module")
def sim():
    """Noise-free tilt stacks (+/-60 deg every 3 deg about y) of a blob volume in random orientations."""
    g = torch.Generator().manual_seed(1)
    k = torch.arange(D) - D // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    vol = torch.zeros(D, D, D)
    for _ in range(6):
        c = (torch.rand(3, generator=g) - 0.5) * 14
        s = 1.5 + 2 * torch.rand(1, generator=g)
        vol += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s**2))
    tilts = torch.arange(-60, 61, 3.0, dtype=torch.float64)
    t = len(tilts)
    poses = random_rotations(N, g)
    rot = rotation_about_y(tilts)[None] @ poses[:, None]  # [N, T, 3, 3] reference -> image
    dose = (torch.arange(t, dtype=torch.float32) * 3)[None].expand(N, t).reshape(-1)

    def tf(m: int):
        n = N * t
        c, e = transfer_functions(
            m, APIX, torch.full((n,), 15000.0), torch.full((n,), 14000.0), torch.full((n,), 30.0), torch.zeros(n),
            dose, torch.ones(n), torch.full((n,), 300.0), torch.full((n,), 2.7), torch.full((n,), 0.07),
        )  # fmt: skip
        return c.reshape(N, t, m, -1), e.reshape(N, t, m, -1)

    c, e = tf(D)
    ft = VolumeProjector(vol).project_ft(rot.reshape(-1, 3, 3)).reshape(N, t, D, -1)
    images = irfft2_centered(ft * c * e, D)
    visible = torch.ones(N, t, dtype=torch.bool)
    visible[1, :5] = False  # particle 1 misses 5 tilts
    c2, e2 = tf(2 * D)
    return {"vol": vol, "images": images, "rot": rot, "poses": poses, "ctf": c2, "expo": e2, "visible": visible}


@pytest.fixture(scope="module")
def tomo_frame(sim):
    rot = tilt_rotations(sim["rot"], sim["poses"])
    return particle_subtomograms(sim["images"], rot, sim["ctf"], sim["expo"], sim["visible"], oversampling=2)


def test_reference_frame_weighted_average_recovers_volume(sim):
    st = particle_subtomograms(sim["images"], sim["rot"], sim["ctf"], sim["expo"], sim["visible"])
    assert st.data.shape == (N, D, D, D) and st.ctf2.shape == (N, D, D, D)
    k = torch.arange(D) - D // 2
    r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    num, den = fft3_centered(st.data).sum(0), st.ctf2.sum(0)
    avg = ifft3_centered(num / (den + 1e-2 * den.mean()) * (r2 < (D / 2) ** 2))
    assert corr(avg, sim["vol"]) > 0.95  # measured 0.967 (8 particles)


def test_tomogram_frame_subtomograms_average_back_with_their_poses(sim, tomo_frame):
    right = corr(average_subtomograms(tomo_frame.data, tomo_frame.ctf2, sim["poses"]), sim["vol"])
    assert right > 0.95  # measured 0.99
    # the wrong pose convention (transposed) must not reproduce it
    wrong = corr(average_subtomograms(tomo_frame.data, tomo_frame.ctf2, sim["poses"].transpose(-1, -2)), sim["vol"])
    assert wrong < right - 0.15, (right, wrong)


def test_missing_wedge_is_zero_weight(tomo_frame):
    w = tomo_frame.ctf2[0]  # tilts about y up to 60 deg: the kz axis (90 deg) is never sampled
    c = D // 2
    assert float(w[c + 2 :, c, c].abs().max()) == 0.0 and float(w[: c - 1, c, c].abs().max()) == 0.0
    assert float(tomo_frame.multiplicity[0, c + 2 :, c, c].max()) == 0.0
    assert (w[c, c, c + 1 : c + 6] > 0).all() and (w[c, c + 1 : c + 6, c] > 0).all()  # kx and ky axes seen
    # a direction 30 deg from z (inside the wedge) is empty, 30 deg from x (inside the tilt range) is not
    assert float(w[c + 8, c, c + 4]) == 0.0 and float(w[c + 4, c, c + 8]) > 0
    assert bool(((w > 0) <= (tomo_frame.multiplicity[0] > 0)).all())


def test_multiplicity_counts_visible_tilts_at_dc(sim, tomo_frame):
    c = D // 2
    dc = tomo_frame.multiplicity[:, c, c, c]
    assert dc[0] == 41 and dc[1] == 36 and (dc == sim["visible"].sum(1)).all()
    assert float(tomo_frame.multiplicity.max()) <= 41


def test_fftw_half_layout_round_trip(tomo_frame):
    w = tomo_frame.ctf2[:2]
    half = to_fftw_half(w)
    assert half.shape == (2, D, D, D // 2 + 1)
    assert half[0, 0, 0, 0] == w[0, D // 2, D // 2, D // 2]  # DC first, as FFTW stores it
    assert half[0, 1, 0, 2] == w[0, D // 2 + 1, D // 2, D // 2 + 2]  # (kz=1, ky=0, kx=2)
    assert half[0, D - 1, 0, 0] == w[0, D // 2 - 1, D // 2, D // 2]  # kz = -1 wraps to the end
    assert torch.equal(from_fftw_half(half), w)


@pytest.fixture(scope="module")
def warp(warptools_optset):
    return read_relion5(warptools_optset)


@pytest.mark.parametrize("relion4", [False, True])
def test_write_read_round_trip_on_warptools(warp, tmp_path, relion4):
    sel = np.array([0, 1, 10, 11])
    star = write_relion31_subtomograms(warp, tmp_path, particles=sel, relion4=relion4, batch_size=4, oversampling=1)
    assert detect_format(star) == "relion_subtomo"
    sub = read_subtomograms(star)
    assert sub.n_particles == 4 and sub.box == 32 and sub.pixel_size == 12.0
    assert sub.ctf_premultiplied == relion4 and sub.source_format == ("relion4" if relion4 else "relion31")
    assert sub.names == [warp.names[i] for i in sel]  # rlnTomoParticleName in both forms
    blocks = read_star(star)
    assert int(blocks["optics"]["rlnImageDimensionality"][0]) == 3
    assert int(blocks["optics"]["rlnCtfDataAreCtfPremultiplied"][0]) == int(relion4)
    # angles: the written Euler angles give back the poses, to the star's 6 decimals
    assert torch.allclose(sub.rotations, particle_poses(warp)[torch.from_numpy(sel)], atol=1e-5)
    # volumes: identical to the subtomograms made in memory
    from tomohet.physics.subtomogram import batch_subtomograms, relion31_form

    b = warp.batch(sel[:3])
    poses = particle_poses(warp)[torch.from_numpy(sel[:3])]
    st = batch_subtomograms(b, 12.0, warp.ctf_premultiplied, poses, oversampling=1)
    got = sub.batch([0, 1, 2])
    if relion4:
        assert torch.allclose(got.data, st.data, atol=1e-6 * float(st.data.abs().max()))
        assert torch.allclose(got.weight, st.ctf2) and torch.equal(got.multiplicity, st.multiplicity)
    else:
        data, ctf = relion31_form(st, b.visible.sum(1))
        assert torch.allclose(got.data, data, atol=1e-6 * float(data.abs().max()))
        assert torch.allclose(got.ctf, ctf, atol=1e-7) and got.multiplicity is None
        assert float(ctf.max()) <= 1.0 and float(ctf.min()) >= 0.0
    with open(sub.ctf_paths[0], "rb"):
        import mrcfile

        assert mrcfile.open(sub.ctf_paths[0]).data.shape == (32, 32, 17)  # nz, ny, nx: FFTW half


def test_written_subtomograms_reproduce_the_warptools_map(warp, tmp_path):
    """RELION 3.1's model on the written files (data ~= CTF3D * V(R^T x)) gives the WarpTools map, same hand."""
    from tomohet.data.mrc import read_volume
    from tomohet.physics.filters import lowpass, masked_correlation, soft_sphere

    from .conftest import WARPTOOLS_REF

    ref, _ = read_volume(WARPTOOLS_REF)
    sub = read_subtomograms(write_relion31_subtomograms(warp, tmp_path, batch_size=20, oversampling=1))
    b = sub.batch(np.arange(sub.n_particles))
    avg = average_subtomograms(b.data, b.ctf * b.ctf, b.rotations, pad=1)  # RELION 3.1: data carries one CTF3D factor

    def score(v):
        return masked_correlation(lowpass(v, 60, 12), lowpass(ref, 60, 12), soft_sphere(32, 12, edge=0))

    right, mirrored = score(avg), score(torch.flip(avg, dims=(0,)))
    assert right > 0.8 and right > mirrored + 0.15, (right, mirrored)  # measured 0.85 vs 0.60


def test_bad_inputs_name_file_and_field(warp, tmp_path):
    star = write_relion31_subtomograms(warp, tmp_path, particles=np.array([0, 1]))
    blocks = read_star(star)
    parts = blocks["particles"]

    def variant(name, **changes):
        b = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in blocks.items()}
        for key, fn in changes.items():
            b[key] = fn(b[key])
        p = tmp_path / name
        write_star(b, p)
        return p

    p = variant("noctf.star", particles=lambda d: d.drop(columns=["rlnCtfImage"]))
    with pytest.raises(InputError, match=r"\[rlnCtfImage\]"):
        read_subtomograms(p)
    p = variant("nobox.star", optics=lambda d: d.drop(columns=["rlnImageSize"]))
    with pytest.raises(InputError, match=r"\[rlnImageSize\]"):
        read_subtomograms(p)
    p = variant("box.star", optics=lambda d: d.assign(rlnImageSize=48))
    with pytest.raises(InputError, match=r"_subtomo\.mrc \[rlnImageName\]: volume is 32x32x32, expected 48x48x48"):
        read_subtomograms(p).batch([0])
    p = variant("nanangle.star", particles=lambda d: d.assign(rlnAngleTilt=[1.0, np.nan]))
    with pytest.raises(InputError, match=r"\[rlnAngleTilt\]: row 2 "):
        read_subtomograms(p)
    p = variant("missing.star", particles=lambda d: d.assign(rlnImageName=["nope.mrc", parts.rlnImageName[1]]))
    with pytest.raises(InputError, match=r"nope\.mrc \[rlnImageName\]: file not found"):
        read_subtomograms(p).batch([0, 1])
    # NaN inside a volume
    import mrcfile

    sub = read_subtomograms(star)
    with mrcfile.open(sub.volume_paths[1], mode="r+") as m:
        m.data[3, 3, 3] = np.nan
    with pytest.raises(InputError, match=r"NaN"):
        sub.batch([1])
    assert sub.batch([0]).data.shape == (1, 32, 32, 32)  # the good one still reads

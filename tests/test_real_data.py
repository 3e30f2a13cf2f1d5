"""The convention proof: tomohet's reader and back-projection reproduce WarpTools' own reconstruction of
real data, and every wrong reading of the geometry reproduces it clearly worse."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tomohet.data.mrc import read_volume
from tomohet.data.relion5 import read_relion5
from tomohet.physics.filters import fsc, lowpass, masked_correlation, soft_sphere
from tomohet.physics.reconstruct import reconstruct
from tomohet.physics.rotations import euler_to_matrix, mirror_z, random_rotations

from .conftest import WARPTOOLS_REF


@pytest.fixture(scope="module")
def warp(warptools_optset):
    return read_relion5(warptools_optset)


@pytest.fixture(scope="module")
def reference():
    vol, apix = read_volume(WARPTOOLS_REF)
    assert apix == pytest.approx(12.0, abs=0.01)
    return vol


def score(vol: torch.Tensor, ref: torch.Tensor) -> float:
    """The issue's metric: common low-pass to 60 A, correlation inside a sphere of radius 12 px."""
    mask = soft_sphere(32, 12, edge=0)
    return masked_correlation(lowpass(vol, 60, 12), lowpass(ref, 60, 12), mask)


def band_fsc(vol: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean FSC (inside the sphere) over shells 2..6 (190-64 A), where the geometry is decided."""
    mask = soft_sphere(32, 12, edge=2)
    return float(fsc(vol * mask, ref * mask)[2:7].mean())


def poses_and_tilts(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """The particle poses A ``[N, 1, 3, 3]`` (with the reference mirror) and the per-tilt projection rotations
    P ``[N, T, 3, 3]`` recovered from the dataset's rotations R = P A."""
    parts = ds.tables["particles_blocks"]["particles"]
    a = euler_to_matrix(parts.rlnAngleRot.to_numpy(), parts.rlnAngleTilt.to_numpy(), parts.rlnAnglePsi.to_numpy())
    a = (a @ mirror_z())[:, None]
    return a, ds.rotations @ a.transpose(-1, -2)


def wrong_readings(ds) -> dict[str, torch.Tensor]:
    a, p = poses_and_tilts(ds)
    swap = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    return {
        "mirrored handedness": ds.rotations @ mirror_z(),
        "transposed projection matrices": p.transpose(-1, -2) @ a,
        "swapped x/y axes": swap @ ds.rotations,
    }


def test_reader_counts_and_geometry(warp):
    assert warp.n_particles == 40 and warp.n_tilts == 37 and warp.box == 32
    assert warp.pixel_size == 12.0 and warp.ctf_premultiplied
    # Unt_083 particles hide tilts 1, 6 and 36 (rlnTomoVisibleFrames), Unt_050 none
    assert warp.visible[0].sum() == 34 and not warp.visible[0, 0] and not warp.visible[0, 5]
    assert warp.visible[10].all()
    assert warp.dose[0, 18] == pytest.approx(0.0) and warp.dose[0, 0] == pytest.approx(92.019, abs=1e-3)
    # rotations are orthonormal up to the reference mirror (det -1)
    r = warp.rotations.reshape(-1, 3, 3)
    assert torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(r), atol=1e-5)
    assert torch.allclose(torch.det(r), -torch.ones(len(r), dtype=torch.float64), atol=1e-5)
    b = warp.batch([0, 11])
    assert b.images.shape == (2, 37, 32, 32) and b.images[0, 0].abs().sum() == 0 and b.images[1, 0].std() > 0


def test_reconstruction_reproduces_warptools_reference(warp, reference):
    rec = reconstruct(warp)
    right = score(rec.full, reference)
    assert right >= 0.55
    assert right >= 0.90  # measured 0.944; tomoDRGN's backproject_voxel reaches 0.60 on the same data
    right_band = band_fsc(rec.full, reference)
    assert right_band >= 0.8
    scores = {"inverted contrast": score(reconstruct(warp, invert_contrast=True).full, reference)}
    bands = {}
    for name, rots in wrong_readings(warp).items():
        vol = reconstruct(dataclasses.replace(warp, rotations=rots)).full
        scores[name] = score(vol, reference)
        bands[name] = band_fsc(vol, reference)
    # every wrong reading reproduces the reference visibly worse
    for name, s in scores.items():
        assert s <= right - 0.09, (name, s, right)
    assert scores["mirrored handedness"] <= right - 0.2
    assert scores["inverted contrast"] <= right - 0.2
    for name, b in bands.items():
        assert b <= right_band - 0.25, (name, b, right_band)


def test_weighted_reconstruction_beats_unweighted(warp, reference):
    """The CTF- and dose-weighted Wiener map is better than a plain back-projection of the same images."""
    plain = dataclasses.replace(
        warp,
        ctf_premultiplied=False,
        dose=torch.zeros_like(warp.dose),
        defocus_u=torch.zeros_like(warp.defocus_u),
        defocus_v=torch.zeros_like(warp.defocus_v),
        amplitude_contrast=torch.ones_like(warp.amplitude_contrast) * 0.999,
    )
    weighted = score(reconstruct(warp).full, reference)
    unweighted = score(reconstruct(plain).full, reference)
    assert weighted > unweighted + 0.02
    assert np.isfinite(unweighted)


def test_the_60A_metric_has_a_floor_near_0_8_whatever_the_reading(warp, reference):
    """Why two wrong readings cannot score 0.2 below the right one with the issue's metric on these data: at
    60 A inside a 12 px sphere the particle's envelope dominates. The reference's own spherical average scores
    0.84 against it, and a reconstruction with every particle pose replaced by a random one scores 0.76-0.81,
    so no reading that keeps the images and the tilt geometry can score below ~0.75 (right - 0.2 = 0.74).
    The band FSC (190-64 A) has no such floor: random poses score far below the right reading there."""
    r = torch.linalg.vector_norm(torch.stack(torch.meshgrid(*[torch.arange(32.0) - 16] * 3, indexing="ij")), dim=0)
    shell = r.round().long().reshape(-1)
    sums = torch.zeros(int(shell.max()) + 1, dtype=torch.float64).index_add_(0, shell, reference.double().reshape(-1))
    spherical = (sums / torch.bincount(shell).double())[shell].reshape(32, 32, 32).float()
    assert score(spherical, reference) >= 0.8
    _, p = poses_and_tilts(warp)
    gen = torch.Generator().manual_seed(0)
    poses = random_rotations(warp.n_particles, generator=gen).double()[:, None] @ mirror_z()
    scrambled = reconstruct(dataclasses.replace(warp, rotations=p @ poses)).full
    assert score(scrambled, reference) >= 0.944 - 0.2
    assert band_fsc(scrambled, reference) <= band_fsc(reconstruct(warp).full, reference) - 0.3


def test_classify_real_ribosome_tilts_with_a_one_particle_class(ribosome_star):
    """EM on the 6 real ribosome particles with K = 2: the PCA start gives a one-particle class, whose map
    (no second half to compare) once came out NaN and turned every posterior NaN. Now everything is finite,
    and the E-step band is cropped below Nyquist (the 6-particle consensus only reaches ~175 A)."""
    from tomohet.data.warp_v1 import read_warp_v1
    from tomohet.methods.em2d import EMOptions, classify_em2d

    ds = read_warp_v1(ribosome_star)
    single = reconstruct(ds, np.array([2]))
    assert torch.isfinite(single.full).all() and single.full.abs().max() > 0
    res = classify_em2d(ds, EMOptions(n_classes=2, n_iter=3))
    assert np.isfinite(res.posteriors).all() and np.allclose(res.posteriors.sum(1), 1)
    assert all(np.isfinite(e["log_likelihood"]) for e in res.log)
    assert torch.isfinite(res.volumes).all()
    assert res.extra["working_box"] < ds.box

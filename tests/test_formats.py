"""2D-stack file formats on real data: the Warp v1 / cryoDRGN-ET image-series star (ribosome test data) and
RELION 5 / WarpTools projects, read, reconstructed and written back (round trips through files)."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tomohet.cli.main import app
from tomohet.data.io import detect_format, read_particles
from tomohet.data.relion5 import read_relion5, write_relion5
from tomohet.data.star import read_star
from tomohet.data.warp_v1 import read_warp_v1, write_warp_v1
from tomohet.errors import InputError
from tomohet.physics.reconstruct import reconstruct
from tomohet.physics.rotations import euler_to_matrix, mirror_z

PER_IMAGE = ["shifts", "defocus_u", "defocus_v", "defocus_angle", "phase_shift", "dose", "ctf_scale", "tilt_angle"]
PER_PARTICLE = ["voltage", "spherical_aberration", "amplitude_contrast"]


@pytest.fixture(scope="module")
def ribo(ribosome_star):
    return read_particles(ribosome_star)


@pytest.fixture(scope="module")
def warp(warptools_optset):
    return read_relion5(warptools_optset)


def assert_same_dataset(a, b, rotations: bool = True) -> None:
    """Same particles, images (pixel values), visible images per particle and per-image parameters (to 1e-4).

    Images are compared in order of their visible tilts (a file with one row per visible image keeps the tilt
    order but not the positions of hidden tilts)."""
    assert a.names == b.names and a.tomogram == b.tomogram
    assert (a.box, a.n_tilts, a.ctf_premultiplied) == (b.box, b.n_tilts, b.ctf_premultiplied)
    assert a.pixel_size == pytest.approx(b.pixel_size, rel=1e-6)
    assert torch.equal(a.visible.sum(1), b.visible.sum(1))
    assert np.array_equal(a.half_set, b.half_set)
    va, vb = a.visible, b.visible
    for f in PER_IMAGE:
        assert torch.allclose(getattr(a, f)[va].double(), getattr(b, f)[vb].double(), atol=1e-4), f
    for f in PER_PARTICLE:
        assert torch.allclose(getattr(a, f), getattr(b, f), atol=1e-6), f
    if rotations:
        assert torch.allclose(a.rotations[va], b.rotations[vb], atol=1e-4)
    idx = np.arange(a.n_particles)
    assert torch.equal(a.batch(idx).images[va], b.batch(idx).images[vb])


def test_ribosome_image_series_reads(ribo, ribosome_star):
    assert detect_format(ribosome_star) == "warp_v1"
    assert ribo.source_format == "warp_v1"
    assert ribo.n_images == 219 and ribo.n_particles == 6 and ribo.n_tilts == 39 and ribo.box == 64
    assert sorted(set(ribo.visible.sum(1).tolist())) == [24, 39]
    assert ribo.visible.sum(1).tolist() == [39, 39, 39, 39, 39, 24]
    assert ribo.names[0] == "ay19102021_L3_position6_ribo_it09_bin8_0000000"
    assert set(ribo.tomogram) == {"ay19102021_L3_position6"}  # from the per-tilt micrograph names
    assert ribo.pixel_size == pytest.approx(1.96)  # rlnDetectorPixelSize 1.96 um * 1e4 / rlnMagnification 10000
    assert ribo.half_set.tolist() == [2, 2, 2, 2, 1, 2]
    assert not ribo.ctf_premultiplied
    assert ribo.voltage[0] == 300 and ribo.spherical_aberration[0] == pytest.approx(2.7)
    assert ribo.amplitude_contrast[0] == pytest.approx(0.07)
    # dose = -rlnCtfBfactor / 4: the first three images have B = -13, -26, -39
    assert ribo.dose[0, :3].tolist() == pytest.approx([3.25, 6.5, 9.75])
    table = ribo.tables["images_table"]
    rows = ribo.tables["row_index"]
    vis = ribo.visible.numpy()
    assert np.allclose(ribo.dose.numpy()[vis], -table["rlnCtfBfactor"].to_numpy()[rows[vis]] / 4)
    # unsigned tilt from the CTF scale factor cos(tilt): 1.0 -> 0 deg, 0.9986 -> 3.03 deg
    assert ribo.tilt_angle[0, 0] == pytest.approx(0.0, abs=1e-3)
    assert ribo.tilt_angle[0, 1] == pytest.approx(np.degrees(np.arccos(0.9986)), abs=1e-3)
    assert ribo.defocus_u[0, 0] == pytest.approx(20061.7) and ribo.defocus_angle[0, 1] == pytest.approx(3.8)
    # per-image rotation straight from the row's Euler angles (no reference mirror)
    assert torch.allclose(ribo.rotations[0, 0], euler_to_matrix(*np.array([113.14910, 88.02000, -95.35435])), atol=1e-6)
    assert torch.allclose(torch.det(ribo.rotations[vis]), torch.ones(219, dtype=torch.float64), atol=1e-6)
    # images: the last particle starts at row 196 (1-based frame 196 of the one stack, which holds 220)
    assert ribo.images.frame[5, 0] == 195 and ribo.images.file_index[5, 24] == -1
    b = ribo.batch([5])
    with mrcfile.mmap(ribo.images.paths[0], permissive=True) as m:
        assert m.data.shape == (220, 64, 64)
        assert np.array_equal(b.images[0, :24].numpy(), m.data[195:219])
    assert b.images[0, 24:].abs().sum() == 0


def test_ribosome_reconstructs(ribo):
    rec = reconstruct(ribo, oversampling=1)
    for vol in (rec.half1, rec.half2, rec.full, rec.filtered):
        assert vol.shape == (64, 64, 64) and torch.isfinite(vol).all() and vol.std() > 0
    assert torch.isfinite(rec.fsc).all() and len(rec.fsc) == 33
    assert rec.fsc[0] == pytest.approx(1.0, abs=1e-3) and rec.fsc.abs()[1:].max() < 0.6
    assert rec.resolution >= 2 * ribo.pixel_size
    # the one half-set-1 particle (index 4) makes half1 on its own
    assert (ribo.half_set == 1).sum() == 1 and not torch.allclose(rec.half1, rec.half2)


def test_ribosome_reconstruct_cli(ribosome_star, tmp_path):
    out = tmp_path / "rec"
    result = CliRunner().invoke(app, ["reconstruct", str(ribosome_star), "--out", str(out), "--oversampling", "1"])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "result.json").read_text())
    assert res["n_particles"] == 6 and res["n_images"] == 219 and res["box"] == 64
    assert res["pixel_size"] == pytest.approx(1.96)
    for name in ("half1", "half2", "map", "map_filtered"):
        with mrcfile.open(out / f"{name}.mrc") as m:
            assert m.data.shape == (64, 64, 64) and np.isfinite(m.data).all()
            assert float(m.voxel_size.x) == pytest.approx(1.96, abs=1e-3)


def test_warp_v1_round_trip(ribo, ribosome_star, tmp_path):
    before = ribosome_star.read_bytes()
    path = write_warp_v1(ribo, tmp_path / "sub" / "ribo.star")
    assert detect_format(path) == "warp_v1"
    back = read_particles(path)
    assert_same_dataset(ribo, back)
    # same rows, same order, same columns; image names point into the original stack (relative path)
    src, out = ribo.tables["images_table"], back.tables["images_table"]
    assert list(out.columns) == list(src.columns) and len(out) == 219
    frame, rel = out["rlnImageName"].iloc[0].split("@")
    assert frame == "000001" and not Path(rel).is_absolute()
    assert (path.parent / rel).resolve() == ribo.images.paths[0].resolve()
    for c in src.columns:
        if src[c].dtype.kind in "fi":
            assert np.allclose(src[c].to_numpy(float), out[c].to_numpy(float), atol=1e-4), c
        elif c != "rlnImageName":
            assert src[c].astype(str).tolist() == out[c].astype(str).tolist(), c
    # and again: the written file is a fixed point
    again = read_warp_v1(write_warp_v1(back, tmp_path / "again.star"))
    assert_same_dataset(back, again)
    assert ribosome_star.read_bytes() == before


def test_warp_v1_refuses_to_overwrite_inputs(ribo, ribosome_star):
    before = ribosome_star.stat().st_mtime_ns
    with pytest.raises(InputError, match="overwrite"):
        write_warp_v1(ribo, ribosome_star)
    with pytest.raises(InputError, match="overwrite"):
        write_warp_v1(ribo, ribo.images.paths[0])
    assert ribosome_star.stat().st_mtime_ns == before


def test_relion5_round_trip(warp, tmp_path):
    oset = write_relion5(warp, tmp_path / "r5", "copy")
    back = read_particles(oset)
    assert back.source_format == "relion5" and back.n_particles == 40
    assert_same_dataset(warp, back)
    assert torch.equal(back.visible, warp.visible) and back.n_images == warp.n_images == 1430


def test_relion5_to_warp_v1(warp, tmp_path):
    path = write_warp_v1(warp, tmp_path / "w1" / "warptools_as_warp_v1.star")
    assert detect_format(path) == "warp_v1"
    blocks = read_star(path)
    assert set(blocks) == {"optics", "particles"}  # CTF-premultiplied images need the optics flag
    assert len(blocks["particles"]) == int(warp.visible.sum())
    back = read_particles(path)
    assert back.source_format == "warp_v1"
    # everything but the rotations is identical; those differ by the documented reference mirror
    assert_same_dataset(warp, back, rotations=False)
    va, vb = warp.visible, back.visible
    assert torch.allclose(back.rotations[vb], warp.rotations[va] @ mirror_z(), atol=1e-4)
    assert torch.allclose(torch.det(back.rotations[vb]), torch.ones(int(vb.sum()), dtype=torch.float64))
    # hidden tilts (rlnTomoVisibleFrames) get no row: particle 0 shows 34 of 37, listed first
    assert back.visible[0].sum() == 34 and back.visible[0, :34].all()
    # the signed tilt angles survive through rlnTomoNominalStageTiltAngle
    assert back.tilt_angle[vb].min() < -50 and back.tilt_angle[vb].max() > 50

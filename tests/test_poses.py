"""Pose errors in simulations, pose corrections written back to RELION 5, and the local pose search of the EM."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tomohet.benchmark.metrics import pose_error_report
from tomohet.benchmark.oracle import oracle
from tomohet.cli.main import app
from tomohet.data.annotate import write_annotated
from tomohet.data.mrc import read_volume
from tomohet.data.poses import apply_pose_corrections, relion5_shifted_tomograms, with_refined_poses
from tomohet.data.relion5 import read_relion5
from tomohet.data.truth import has_pose_errors, load_truth, true_geometry, true_pose_corrections, with_true_poses
from tomohet.data.warp_v1 import read_warp_v1, write_warp_v1
from tomohet.methods.em2d import EMOptions, classify_em2d
from tomohet.methods.local_pose import pose_grid
from tomohet.methods.tilt_shifts import estimate_tilt_shifts
from tomohet.physics.rotations import rotation_angle, rotation_vector_to_matrix
from tomohet.simulate.datasets import simulate_preset


def _maps(folder):
    meta = json.loads((folder / "dataset.json").read_text())
    return torch.stack([read_volume(folder / f)[0] for f in meta["maps"]]), meta


@pytest.fixture(scope="module")
def posed(tmp_path_factory):
    """Smoke preset with 6 deg / 1 px pose errors in the stars (the images made with the true poses)."""
    out = tmp_path_factory.mktemp("posed")
    layout, _ = simulate_preset("smoke", out, seed=2, n_particles=100,
                                acquisition={"pose_error_deg": 6.0, "shift_error_px": 1.0})  # fmt: skip
    ds = read_relion5(layout.optimisation_set)
    return out, layout, ds, load_truth(out / "ground_truth.csv", ds.names)


def test_simulated_pose_errors_are_recorded_and_the_oracle_uses_the_true_poses(posed, tmp_path):
    out, layout, ds, truth = posed
    assert has_pose_errors(truth, ds)
    errors = pose_error_report(*true_pose_corrections(ds, truth))
    assert 2.5 < errors["median_angle_error_deg"] < 6.0  # N(0, 6) degrees about a random axis: median 4.0
    assert 1.0 < errors["median_centre_error_px"] < 2.5  # N(0, 1) px per axis: median 1.54
    maps, meta = _maps(out)
    ll_true = oracle(with_true_poses(ds, truth), maps, meta["noise_sigma"]).log_likelihood
    ll_written = oracle(ds, maps, meta["noise_sigma"]).log_likelihood
    states = truth["state"].to_numpy()
    own = np.arange(len(states))
    # the images were made with the true poses: every particle fits its own map better with them
    assert (ll_true[own, states] > ll_written[own, states]).mean() > 0.95
    clean, _ = simulate_preset("smoke", tmp_path, seed=2, n_particles=10)
    cds = read_relion5(clean.optimisation_set)
    assert not has_pose_errors(load_truth(tmp_path / "ground_truth.csv", cds.names), cds)


def test_corrected_poses_round_trip_through_relion5_stars(posed, tmp_path):
    _, _, ds, _ = posed
    gen = torch.Generator().manual_seed(0)
    rot = rotation_vector_to_matrix(torch.randn(ds.n_particles, 3, generator=gen, dtype=torch.float64) * 0.1)
    off = torch.randn(ds.n_particles, 3, generator=gen, dtype=torch.float64) * 1.5
    expected = apply_pose_corrections(ds, rot, off)
    oset = write_annotated(with_refined_poses(ds, rot, off), tmp_path, {})
    back = read_relion5(oset)
    assert torch.allclose(back.rotations, expected.rotations, atol=1e-5)
    assert torch.allclose(back.shifts, expected.shifts, atol=1e-3)
    parts = back.tables["particles_blocks"]["particles"]
    orig = ds.tables["particles_blocks"]["particles"]
    assert np.allclose(parts["rlnAngleRotPrior"], orig["rlnAngleRot"])  # the poses read kept as priors
    assert np.allclose(parts["rlnOriginZPriorAngst"], orig["rlnOriginZAngst"])
    assert list(parts["rlnTomoParticleName"]) == list(orig["rlnTomoParticleName"])


def test_pose_grid_is_a_centred_ball_refined_coarse_to_fine():
    g0, g2 = pose_grid(6.0, 2.0, 0), pose_grid(6.0, 2.0, 5)
    assert len(g0.rotations) == 33 and len(g0.offsets) == 19
    assert torch.allclose(g0.rotations[0], torch.eye(3, dtype=torch.float64)) and (g0.offsets[0] == 0).all()
    assert np.degrees(float(rotation_angle(g0.rotations).max())) == pytest.approx(6.0)
    assert g2.step_deg == pytest.approx(0.75) and g2.step_px == pytest.approx(0.5)
    none = pose_grid(0.0, 0.0, 0)
    assert len(none.rotations) == 1 and len(none.offsets) == 1


def _assert_errors_undone(error: torch.Tensor, shift: torch.Tensor, res, final) -> None:
    """The recovered corrections D undo the errors E (E D = I) within the last grid step (``final``), up to the
    common rotation and shift that the maps, re-estimated from the particles, are free to take (the frame of a
    reconstruction is arbitrary); the errors were 5 degrees and ~1.6 px."""
    undone = error @ res.extra["pose_rotation"]
    u, _, vt = torch.linalg.svd(undone.mean(0))
    residual = np.degrees(rotation_angle((u @ vt).T @ undone).numpy())
    assert np.median(residual) < 1.5 * final.step_deg and residual.max() < 3 * final.step_deg
    centre = torch.einsum("nij,nj->ni", undone, res.extra["pose_offset_px"]) + torch.einsum("nij,nj->ni", error, shift)
    assert np.median((centre - centre.mean(0)).norm(dim=-1).numpy()) < final.step_px


def test_local_search_brings_a_known_pose_error_back_within_the_grid_step(tmp_path):
    layout, truth = simulate_preset("smoke", tmp_path, seed=3, n_particles=24, snr=2.0)
    ds = read_relion5(layout.optimisation_set)
    maps, _ = _maps(tmp_path)
    gen = torch.Generator().manual_seed(1)
    axis = torch.nn.functional.normalize(torch.randn(ds.n_particles, 3, generator=gen, dtype=torch.float64), dim=1)
    error = rotation_vector_to_matrix(axis * np.radians(5.0))  # every written pose is 5 degrees off
    shift = torch.randn(ds.n_particles, 3, generator=gen, dtype=torch.float64)
    wrong = apply_pose_corrections(ds, error, shift)
    opts = EMOptions(n_classes=2, n_iter=5, init="maps", local_angles_deg=8.0, local_shifts_px=2.0, tol_changes=0,
                     resolution_limit_A=24.0, init_lowpass_A=24.0)  # fmt: skip
    res = classify_em2d(wrong, opts, initial_maps=maps)
    _assert_errors_undone(error, shift, res, pose_grid(8.0, 2.0, 4))
    assert (res.labels == truth["state"].to_numpy()).all()
    # without the search the same maps cannot explain the images as well
    plain = classify_em2d(wrong, EMOptions(n_classes=2, n_iter=5, init="maps", tol_changes=0, resolution_limit_A=24.0,
                                           init_lowpass_A=24.0), initial_maps=maps)  # fmt: skip
    assert res.log[-1]["log_likelihood"] > plain.log[-1]["log_likelihood"]


def test_local_search_off_is_the_plain_em(posed):
    _, _, ds, _ = posed
    plain = classify_em2d(ds, EMOptions(n_classes=2, n_iter=2, tol_changes=0))
    # offsets of 1e-9 px: every grid pose sees the same images, so the search's marginal is the EM's likelihood
    res = classify_em2d(ds, EMOptions(n_classes=2, n_iter=2, tol_changes=0, local_shifts_px=1e-9))
    # the two paths sum in different orders (float32, 2 threads): an ambiguous particle's posterior may move by
    # ~0.01 (0.042 against 0.047 on one machine); a wrong search would move many by far more
    assert np.array_equal(res.labels, plain.labels)
    assert np.abs(res.posteriors - plain.posteriors).max() < 0.02, np.abs(res.posteriors - plain.posteriors).max()
    assert res.log[-1]["log_likelihood"] == pytest.approx(plain.log[-1]["log_likelihood"], rel=1e-6)


def test_refine_command_improves_poses_and_map(posed, tmp_path):
    out, layout, _, _ = posed
    res = CliRunner().invoke(app, ["refine", str(layout.optimisation_set), "--out", str(tmp_path / "r"),
                                   "--iterations", "4", "--tilt-shifts"])  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    poses = result["metrics"]["poses"]
    assert poses["refined"]["median_angle_error_deg"] < 0.7 * poses["written"]["median_angle_error_deg"]
    assert poses["refined"]["median_centre_error_px"] < 0.5 * poses["written"]["median_centre_error_px"]
    maps = result["metrics"]["map_vs_truth"]
    assert maps["refined"]["resolution_0.143_A"] < maps["poses_read"]["resolution_0.143_A"]
    assert result["resolution_after_A"] < result["resolution_before_A"]
    back = read_relion5(tmp_path / "r" / "optimisation_set.star")
    assert "rlnAngleRotPrior" in back.tables["particles_blocks"]["particles"]
    for name in ("map.mrc", "half1.mrc", "map_before.mrc", "fsc.png", "poses.csv", "tilt_shifts.csv"):
        assert (tmp_path / "r" / name).exists()
    # the tilt series of this simulation are aligned exactly: the per-tilt search must not invent shifts
    assert result["tilt_shifts"]["rms_px"] < 0.3


def test_tilt_shifts_are_recovered_and_written_into_the_projection_matrices(tmp_path):
    layout, truth = simulate_preset("smoke", tmp_path, seed=5, n_particles=100,
                                    acquisition={"tilt_shift_error_px": 1.0})  # fmt: skip
    ds = read_relion5(layout.optimisation_set)
    maps, meta = _maps(tmp_path)
    true = true_geometry(ds, load_truth(tmp_path / "ground_truth.csv", ds.names), tmp_path / "ground_truth.csv")
    sigma2 = torch.full((ds.box // 2 + 1,), meta["noise_sigma"] ** 2 * ds.box**2)
    post = np.eye(2)[truth["state"].to_numpy()]
    est = estimate_tilt_shifts(ds, maps, post, sigma2, 24.0)
    expected = true.shifts - ds.shifts  # [N, T, 2] per particle image
    got = est.shifts_px[[est.tomograms.index(t) for t in ds.tomogram]]
    assert float(expected.norm(dim=-1).pow(2).mean().sqrt()) > 1.0  # N(0, 1) px per axis
    assert float((got - expected).norm(dim=-1).pow(2).mean().sqrt()) < 0.2
    blocks = relion5_shifted_tomograms(ds, est.tomograms, est.shifts_px)
    name = est.tomograms[0]
    old, new = ds.tables["tomograms_blocks"][name], blocks[name]
    scale = ds.pixel_size / float(blocks["global"]["rlnTomoTiltSeriesPixelSize"].iloc[0])
    for axis, col in enumerate(("rlnTomoProjX", "rlnTomoProjY")):
        moved = [float(b.strip("[]").split(",")[3]) - float(a.strip("[]").split(",")[3])
                 for a, b in zip(old[col], new[col], strict=True)]  # fmt: skip
        assert np.allclose(moved, est.shifts_px[0, :, axis].numpy() * scale, atol=1e-5)


def test_classify_with_local_searches_writes_refined_poses_and_finds_the_states(posed, tmp_path):
    _, layout, _, _ = posed
    args = ["-K", "2", "--iterations", "3", "--local-angles", "10", "--local-shifts", "2", "--out", str(tmp_path / "c")]
    res = CliRunner().invoke(app, ["classify", str(layout.optimisation_set), *args])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "c" / "result.json").read_text())
    m = result["metrics"]
    assert m["oracle_written_poses"]["ari"] < m["oracle"]["ari"]  # the written poses hide part of the states
    assert m["method"]["ari"] >= m["oracle"]["ari"] - 0.1
    assert m["poses"]["refined"]["median_angle_error_deg"] < m["poses"]["written"]["median_angle_error_deg"]
    assert result["poses"]["file"] == "poses.csv" and (tmp_path / "c" / "poses.csv").exists()
    back = read_relion5(tmp_path / "c" / "optimisation_set.star")
    assert "rlnAngleRotPrior" in back.tables["particles_blocks"]["particles"]


@pytest.mark.parametrize(
    "args, flag",
    [
        (["classify", "--method", "hillclimb", "--local-angles", "5"], "--local-angles"),
        (["classify", "--sigma-angles", "2"], "--sigma-angles"),
        (["classify", "--local-shifts", "-1"], "--local-shifts"),
        (["refine", "--local-angles", "0", "--local-shifts", "0"], "--local-angles"),
    ],
)
def test_local_search_option_errors(posed, tmp_path, args, flag):
    _, layout, _, _ = posed
    res = CliRunner().invoke(app, [args[0], str(layout.optimisation_set), "--out", str(tmp_path / "o"), *args[1:]])
    assert res.exit_code != 0
    assert flag in res.output


def test_corrected_poses_round_trip_through_warp_v1_stars(posed, tmp_path):
    _, _, ds, _ = posed
    w1 = read_warp_v1(write_warp_v1(ds, tmp_path / "in" / "w1.star"))
    gen = torch.Generator().manual_seed(2)
    rot = rotation_vector_to_matrix(torch.randn(w1.n_particles, 3, generator=gen, dtype=torch.float64) * 0.1)
    off = torch.randn(w1.n_particles, 3, generator=gen, dtype=torch.float64)
    expected = apply_pose_corrections(w1, rot, off)
    back = read_warp_v1(write_annotated(with_refined_poses(w1, rot, off), tmp_path / "out", {}))
    assert torch.allclose(back.rotations, expected.rotations, atol=1e-5)  # each image's refined rotation and shift
    assert torch.allclose(back.shifts, expected.shifts, atol=1e-3)


@pytest.fixture(scope="module")
def wrong_subtomograms(tmp_path_factory):
    """RELION 3.1 subtomograms of 24 smoke particles (SNR 2) whose written poses are each 5 degrees and ~1.6 px off,
    with the true maps, the errors (E, s) and the states."""
    from tomohet.data.subtomo import read_subtomograms, write_relion31_subtomograms

    out = tmp_path_factory.mktemp("wrong3d")
    layout, truth = simulate_preset("smoke", out, seed=3, n_particles=24, snr=2.0)
    ds = read_relion5(layout.optimisation_set)
    maps, _ = _maps(out)
    gen = torch.Generator().manual_seed(1)
    axis = torch.nn.functional.normalize(torch.randn(ds.n_particles, 3, generator=gen, dtype=torch.float64), dim=1)
    error = rotation_vector_to_matrix(axis * np.radians(5.0))
    shift = torch.randn(ds.n_particles, 3, generator=gen, dtype=torch.float64)
    write_relion31_subtomograms(apply_pose_corrections(ds, error, shift), out / "r31", oversampling=2, batch_size=8)
    star = out / "r31" / "subtomo_particles.star"
    return star, read_subtomograms(star), maps, error, shift, truth["state"].to_numpy()


def test_em3d_local_search_brings_a_known_pose_error_back_on_subtomograms(wrong_subtomograms):
    from tomohet.methods.em3d import EM3DOptions, classify_em3d

    _, sub, maps, error, shift, states = wrong_subtomograms
    common = dict(n_classes=2, n_iter=5, init="maps", tol_changes=0, resolution_limit_A=24.0, init_lowpass_A=24.0)
    res = classify_em3d(sub, EM3DOptions(**common, local_angles_deg=8.0, local_shifts_px=2.0), initial_maps=maps)
    _assert_errors_undone(error, shift, res, pose_grid(8.0, 2.0, 4))
    assert (res.labels == states).all()
    plain = classify_em3d(sub, EM3DOptions(**common), initial_maps=maps)
    assert res.log[-1]["log_likelihood"] > plain.log[-1]["log_likelihood"]
    # the search does not depend on how the particles are chunked
    other = classify_em3d(sub, EM3DOptions(**common, local_angles_deg=8.0, local_shifts_px=2.0, batch_size=5),
                          initial_maps=maps)  # fmt: skip
    assert torch.allclose(other.extra["pose_rotation"], res.extra["pose_rotation"], atol=1e-6)
    assert torch.allclose(other.extra["pose_offset_px"], res.extra["pose_offset_px"], atol=1e-6)


def test_em3d_with_local_searches_writes_refined_poses_into_the_subtomogram_star(wrong_subtomograms, tmp_path):
    from tomohet.data.subtomo import read_subtomograms

    star, sub, _, _, _, _ = wrong_subtomograms
    args = ["--method", "em3d", "-K", "1", "--iterations", "2", "--local-angles", "8", "--local-shifts", "2"]
    res = CliRunner().invoke(app, ["classify", str(star), *args, "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    poses = pd.read_csv(tmp_path / "c" / "poses.csv")
    assert poses["correction_deg"].median() > 1.5  # the errors were 5 degrees
    d = torch.from_numpy(poses[[f"d{i}{j}" for i in range(3) for j in range(3)]].to_numpy()).reshape(-1, 3, 3)
    u = torch.from_numpy(poses[["offset_x_A", "offset_y_A", "offset_z_A"]].to_numpy()) / sub.pixel_size
    back = read_subtomograms(tmp_path / "c" / "particles.star")
    assert back.names == sub.names
    rots = sub.rotations.double() @ d.double()
    assert torch.allclose(back.rotations.double(), rots, atol=1e-4)
    moved = sub.shifts.double() - torch.einsum("nij,nj->ni", rots, u.double())
    assert torch.allclose(back.shifts.double(), moved, atol=1e-3)
    table = next(v for v in back.tables["blocks"].values() if isinstance(v, pd.DataFrame) and "rlnImageName" in v)
    assert np.allclose(table["rlnAngleRotPrior"], next(v for v in sub.tables["blocks"].values() if isinstance(
        v, pd.DataFrame) and "rlnImageName" in v)["rlnAngleRot"])  # fmt: skip
    assert json.loads((tmp_path / "c" / "result.json").read_text())["poses"]["file"] == "poses.csv"


def test_landscape_refines_the_poses_first_when_asked(wrong_subtomograms, tmp_path):
    from tomohet.data.subtomo import read_subtomograms

    star, sub, _, error, _, _ = wrong_subtomograms
    args = ["--method", "wmd-pca", "--components", "2", "--clusters", "2", "--no-class-maps", "--local-angles", "8",
            "--local-shifts", "2", "--out", str(tmp_path / "l")]  # fmt: skip
    res = CliRunner().invoke(app, ["landscape", str(star), *args])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "l" / "result.json").read_text())
    assert result["poses"]["file"] == "poses.csv" and len(result["poses"]["refinement"]) == 4
    poses = pd.read_csv(tmp_path / "l" / "poses.csv")
    d = torch.from_numpy(poses[[f"d{i}{j}" for i in range(3) for j in range(3)]].to_numpy()).reshape(-1, 3, 3)
    undone = error @ d  # the written poses were 5 degrees off; the landscape's particles carry the refined ones
    u, _, vt = torch.linalg.svd(undone.mean(0))
    assert np.median(np.degrees(rotation_angle((u @ vt).T @ undone).numpy())) < 2.0
    back = read_subtomograms(tmp_path / "l" / "particles.star")
    assert torch.allclose(back.rotations.double(), sub.rotations.double() @ d, atol=1e-4)
    assert "rlnClassNumber" in next(v for v in back.tables["blocks"].values() if "rlnImageName" in v)


def test_refine_command_on_subtomograms(wrong_subtomograms, tmp_path):
    from tomohet.data.subtomo import read_subtomograms

    star, sub, _, error, _, _ = wrong_subtomograms
    res = CliRunner().invoke(app, ["refine", str(star), "--out", str(tmp_path / "r"), "--iterations", "4",
                                   "--local-angles", "8"])  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["resolution_after_A"] < result["resolution_before_A"]
    poses = pd.read_csv(tmp_path / "r" / "poses.csv")
    d = torch.from_numpy(poses[[f"d{i}{j}" for i in range(3) for j in range(3)]].to_numpy()).reshape(-1, 3, 3)
    undone = error @ d  # each written pose was 5 degrees off; the refined ones agree up to a common rotation
    u, _, vt = torch.linalg.svd(undone.mean(0))
    assert np.median(np.degrees(rotation_angle((u @ vt).T @ undone).numpy())) < 2.0
    back = read_subtomograms(tmp_path / "r" / "particles.star")
    assert torch.allclose(back.rotations.double(), sub.rotations.double() @ d, atol=1e-4)
    bad = CliRunner().invoke(app, ["refine", str(star), "--out", str(tmp_path / "t"), "--tilt-shifts"])
    assert bad.exit_code != 0 and "--tilt-shifts" in bad.output

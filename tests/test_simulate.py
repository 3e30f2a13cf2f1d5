"""Benchmark datasets: what is written is what was asked for, and the oracle behaves as the physics says."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tomohet.benchmark.metrics import adjusted_rand_index
from tomohet.benchmark.oracle import oracle
from tomohet.cli.main import app
from tomohet.data.mrc import read_volume
from tomohet.data.relion5 import read_relion5
from tomohet.data.truth import TRUE_POSE_COLUMNS, has_pose_errors, load_truth
from tomohet.physics.filters import fsc
from tomohet.physics.projector import VolumeProjector
from tomohet.physics.reconstruct import reconstruct
from tomohet.simulate.acquisition import clean_images
from tomohet.simulate.datasets import PRESETS, simulate_preset


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    layout, truth = simulate_preset("smoke", out, seed=3, n_particles=160)
    return out, layout, truth, read_relion5(layout.optimisation_set)


def truth_maps(out) -> torch.Tensor:
    meta = json.loads((out / "dataset.json").read_text())
    return torch.stack([read_volume(out / f)[0] for f in meta["maps"]])


def test_written_snr_matches_request(smoke):
    out, layout, truth, ds = smoke
    maps = truth_maps(out)
    states = truth["state"].to_numpy()
    sig, noise = [], []
    for k in range(len(maps)):
        idx = np.flatnonzero(states == k)[:40]
        batch = ds.batch(idx)
        clean, _ = clean_images(VolumeProjector(maps[k]), batch, batch.rotations, ds.pixel_size)
        vis = batch.visible
        sig.append(clean[vis].var(dim=(-2, -1)))
        noise.append((batch.images - clean)[vis].var(dim=(-2, -1)))
    snr = float(torch.cat(sig).mean() / torch.cat(noise).mean())
    assert snr == pytest.approx(PRESETS["smoke"].acquisition.snr, rel=0.10)
    assert layout.measured_snr == pytest.approx(0.05, rel=0.05)


def test_truth_table_and_nuisance_independence(smoke):
    out, layout, truth, ds = smoke
    assert list(truth.columns) == ["rlnTomoParticleName", "state", "state_name", "coordinate", "map_file",
                                   *TRUE_POSE_COLUMNS]  # fmt: skip
    # no pose errors asked for: the true poses are the written ones
    assert not has_pose_errors(load_truth(out / "ground_truth.csv", ds.names), ds)
    assert truth["rlnTomoParticleName"].tolist() == ds.names
    assert truth["state"].value_counts().tolist() == [80, 80]  # exact abundances
    # states are not tied to tomograms: both states present in each tomogram in similar numbers
    table = truth.groupby([np.array(ds.tomogram), "state"]).size().unstack()
    assert (table.min(axis=1) / table.max(axis=1) > 0.6).all()
    for f in truth["map_file"].unique():
        vol, apix = read_volume(out / f)
        assert vol.shape == (32, 32, 32) and apix == pytest.approx(12.0)


def test_classwise_reconstruction_matches_truth(smoke):
    out, layout, truth, ds = smoke
    maps = truth_maps(out)
    for k in range(2):
        rec = reconstruct(ds, np.flatnonzero(truth["state"].to_numpy() == k))
        curve = fsc(rec.full, maps[k])
        assert curve[1 : ds.box // 4 + 1].min() >= 0.8  # to half Nyquist, 80 particles per state


def test_oracle_perfect_at_default_snr_and_falls_with_snr(smoke, tmp_path):
    out, layout, truth, ds = smoke
    maps = truth_maps(out)
    res = oracle(ds, maps, layout.noise_sigma, np.array([0.5, 0.5]))
    assert adjusted_rand_index(truth["state"], res.labels) >= 0.95
    low_layout, low_truth = simulate_preset("smoke", tmp_path / "low", seed=3, n_particles=160, snr=0.002)
    low = oracle(read_relion5(low_layout.optimisation_set), maps, low_layout.noise_sigma, np.array([0.5, 0.5]))
    low_ari = adjusted_rand_index(low_truth["state"], low.labels)
    assert low_ari < 0.9  # the physical limit drops as the SNR drops
    # the posterior is calibrated-ish: its mean max probability tracks the accuracy
    acc = (low.labels == low_truth["state"].to_numpy()).mean()
    assert abs(low.posterior.max(1).mean() - acc) < 0.1


def _digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name not in ("tomohet.log", "result.json"):
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_identical_files_and_cli(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["simulate", "--list-presets"])
    assert r.exit_code == 0 and "discrete_hard" in r.output and "hinge" in r.output
    for d in ("a", "b"):
        r = runner.invoke(app, ["simulate", "--preset", "smoke", "--n-particles", "24", "--seed", "7",
                                "--out", str(tmp_path / d)])  # fmt: skip
        assert r.exit_code == 0, r.output
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    r = runner.invoke(app, ["simulate", "--preset", "smoke", "--n-particles", "24", "--seed", "8",
                            "--out", str(tmp_path / "c")])  # fmt: skip
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["seed"] == 7 and result["measured_snr"] == pytest.approx(0.05, rel=0.1)
    r = runner.invoke(app, ["simulate", "--preset", "nonexistent", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "unknown preset" in r.output


def test_continuous_preset_truth(tmp_path):
    layout, truth = simulate_preset("hinge", tmp_path, seed=1, n_particles=60)
    c = truth["coordinate"].to_numpy()
    assert np.isfinite(c).all() and c.min() >= 0 and c.max() <= 30 and c.std() > 5
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert len(meta["maps"]) == 11 and meta["map_coordinates"][-1] == pytest.approx(30.0)
    ds = read_relion5(layout.optimisation_set)
    maps = torch.stack([read_volume(tmp_path / f)[0] for f in meta["maps"]])
    res = oracle(ds, maps, layout.noise_sigma, coordinates=np.array(meta["map_coordinates"]))
    rho = np.corrcoef(res.coordinate, c)[0, 1]
    assert rho > 0.9


def test_layout_mirrors_warptools_columns(smoke, warptools_optset):
    """The simulated project has the same blocks and columns, in the same order, as WarpTools' own files."""
    import starfile

    out, layout, truth, ds = smoke
    real_dir = warptools_optset.parent
    real_p = starfile.read(next(real_dir.glob("*_4-tomos_10-ptcls_box-32_angpix-12.star")), always_dict=True)
    real_t = starfile.read(next(real_dir.glob("*_tomograms.star")), always_dict=True)
    sim_p = starfile.read(layout.particles_star, always_dict=True)
    sim_t = starfile.read(layout.tomograms_star, always_dict=True)
    assert list(sim_p) == list(real_p) == ["general", "optics", "particles"]
    for block in ("optics", "particles"):
        assert list(sim_p[block].columns) == list(real_p[block].columns)
    assert list(sim_t["global"].columns) == list(real_t["global"].columns)
    first_real = real_t[real_t["global"]["rlnTomoName"].iloc[0]]
    first_sim = sim_t[sim_t["global"]["rlnTomoName"].iloc[0]]
    assert list(first_sim.columns) == list(first_real.columns)
    assert sim_p["general"] == real_p["general"]


def test_simulate_unidirectional_scheme_from_the_command_line(tmp_path):
    """``--scheme unidirectional``: one sweep from -max to +max, so the pre-exposure grows with the tilt angle;
    a dose-symmetric series starts at 0 degrees and alternates sides."""
    runner = CliRunner()
    for scheme in ("unidirectional", "dose-symmetric"):
        out = tmp_path / scheme
        r = runner.invoke(app, ["simulate", "--preset", "smoke", "--n-particles", "4", "--scheme", scheme,
                                "--out", str(out)])  # fmt: skip
        assert r.exit_code == 0, r.output
        ds = read_relion5(next(out.glob("*_optimisation_set.star")))
        vis = ds.visible[0]
        tilt, dose = ds.tilt_angle[0][vis].numpy(), ds.dose[0][vis].numpy()
        order = np.argsort(dose)
        if scheme == "unidirectional":
            assert np.all(np.diff(tilt[order]) > 0)
        else:
            assert abs(tilt[order[0]]) < 1e-6 and np.sign(tilt[order[1]]) != np.sign(tilt[order[3]])
    r = runner.invoke(app, ["simulate", "--preset", "smoke", "--scheme", "spiral", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--scheme must be one of" in r.output

"""The shared engine: checkpoints resumed only by their own run (atomic, validated, finished runs unchanged), the
method registry, the one trilinear insertion kernel, and a killed run that resumes to the same result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import starfile
import torch

from tomohet.data.relion5 import read_relion5
from tomohet.errors import InputError
from tomohet.methods.checkpoint import load_checkpoint, run_fingerprint, save_checkpoint
from tomohet.methods.em2d import EMOptions, classify_em2d
from tomohet.methods.registry import build_options, get_method, methods
from tomohet.physics.insertion import trilinear_corners
from tomohet.simulate.datasets import simulate_preset


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine")
    layout, truth = simulate_preset("discrete_default", out, seed=4, n_particles=64)
    return out, layout, read_relion5(layout.optimisation_set)


def test_checkpoint_of_another_run_is_refused_naming_the_file(small, tmp_path):
    _, _, ds = small
    ck = tmp_path / "checkpoint.pt"
    classify_em2d(ds, EMOptions(n_classes=3, n_iter=1, init="random"), checkpoint=ck)
    with pytest.raises(InputError, match=r"checkpoint\.pt.*another run.*options differ"):
        classify_em2d(ds, EMOptions(n_classes=2, n_iter=1, init="random", seed=5), checkpoint=ck)
    fp = run_fingerprint("em2d", {"n_classes": 3}, ds)
    save_checkpoint(ck, {"x": 1}, fp)
    assert load_checkpoint(ck, fp) == {"x": 1}
    other = run_fingerprint("em2d", {"n_classes": 3}, read_relion5(small[1].optimisation_set))
    assert load_checkpoint(ck, other) == {"x": 1}  # same input read again: same fingerprint
    with pytest.raises(InputError, match="method differs"):
        load_checkpoint(ck, run_fingerprint("em3d", {"n_classes": 3}, ds))
    assert not list(tmp_path.glob("*.tmp"))  # atomic: no temporary file left behind


def test_truncated_or_foreign_checkpoint_is_a_one_line_error(small, tmp_path):
    _, _, ds = small
    fp = run_fingerprint("em2d", {}, ds)
    ck = tmp_path / "checkpoint.pt"
    save_checkpoint(ck, {"volumes": torch.zeros(8, 8, 8)}, fp)
    ck.write_bytes(ck.read_bytes()[:100])  # what a full disk leaves
    with pytest.raises(InputError, match=r"checkpoint\.pt \[checkpoint\]: unreadable checkpoint.*--overwrite"):
        load_checkpoint(ck, fp)
    torch.save({"volumes": 1}, ck)  # an old-format checkpoint without a fingerprint
    with pytest.raises(InputError, match="not a checkpoint of this tomohet version"):
        load_checkpoint(ck, fp)


def test_rerunning_a_finished_run_changes_nothing(small, tmp_path):
    _, _, ds = small
    ck = tmp_path / "checkpoint.pt"
    opts = EMOptions(n_classes=3, n_iter=12, init="random", tol_changes=0.5)  # converges after 3 iterations
    first = classify_em2d(ds, opts, checkpoint=ck)
    assert len(first.log) == 3
    again = classify_em2d(ds, opts, checkpoint=ck)
    assert [e["iteration"] for e in again.log] == [1, 2, 3]
    assert (again.labels == first.labels).all() and torch.equal(again.volumes, first.volumes)
    assert again.extra["resumed_from_iteration"] == 3


def test_registry_dispatches_by_name_and_refuses_unknown_methods():
    names = [m.name for m in methods("discrete")]
    assert names[:3] == ["em2d", "em3d", "hillclimb"]
    assert get_method("em").name == "em2d"  # the CLI's alias and Result.method agree through the table
    with pytest.raises(InputError, match=r"\[--method\]: unknown method 'kmeans'; expected one of em2d"):
        get_method("kmeans", "discrete")
    with pytest.raises(InputError, match="hillclimb does not read 3D subtomograms; use em3d"):
        get_method("hillclimb", "discrete", input_kind="3d")
    opts = build_options(get_method("em2d"), n_classes=5, seed=None, runs=3)  # None and foreign keys ignored
    assert opts.n_classes == 5 and opts.seed == EMOptions().seed


def test_trilinear_corners_match_a_direct_loop():
    g = 9
    gen = torch.Generator().manual_seed(0)
    pts = torch.rand(200, 3, generator=gen) * (g + 2) - 1.5  # some corners fall outside the grid
    for wrap in (False, True):
        flat, w = trilinear_corners(pts, g, wrap=wrap)
        dense = torch.zeros(g**3, dtype=torch.float64).index_add_(0, flat.reshape(-1), w.reshape(-1).double())
        ref = torch.zeros(g, g, g, dtype=torch.float64)
        for x, y, z in pts.double().tolist():
            x0, y0, z0 = int(np.floor(x)), int(np.floor(y)), int(np.floor(z))
            for dz in (0, 1):
                for dy in (0, 1):
                    for dx in (0, 1):
                        i, j, k = z0 + dz, y0 + dy, x0 + dx
                        wt = (1 - abs(z - i)) * (1 - abs(y - j)) * (1 - abs(x - k))
                        if wrap:
                            ref[i % g, j % g, k % g] += wt
                        elif 0 <= i < g and 0 <= j < g and 0 <= k < g:
                            ref[i, j, k] += wt
        assert torch.allclose(dense, ref.reshape(-1), atol=1e-5), wrap


def _classify_cmd(star, out, iterations):
    return [sys.executable, "-m", "tomohet.cli.main", "classify", str(star), "-K", "3", "--init", "random",
            "--iterations", str(iterations), "--out", str(out), "--no-class-maps"]  # fmt: skip


def test_killed_run_resumes_to_byte_identical_labels(small, tmp_path):
    """SIGKILL after the first checkpoint, rerun the same command: the same particles.star as a run that was
    never interrupted."""
    _, layout, _ = small
    star = layout.optimisation_set
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_classify_cmd(star, straight, 4), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_classify_cmd(star, killed, 4), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(_classify_cmd(star, killed, 4), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a = starfile.read(straight / "particles.star", always_dict=True)["particles"]
    b = starfile.read(killed / "particles.star", always_dict=True)["particles"]
    assert (a["rlnClassNumber"].to_numpy() == b["rlnClassNumber"].to_numpy()).all()

"""Bad command-line options and a bad environment (issue 14, item 7): each stops with one line 'error: ...' that
names the option, the file or the folder, exit code 2, no traceback; option checks come before any data is
read, any worker started or any output written. A ground_truth.csv that is not tomohet's only skips the
metrics. ``--pixel-size`` reaches the reader."""

from __future__ import annotations

import errno
import inspect
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import mrcfile
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tomohet.cli.classify import _metrics_against_truth, run_classify
from tomohet.cli.main import _executor, app
from tomohet.cli.options import OptionError, check_classify, check_max_dose
from tomohet.cli.runfolder import LOCK_NAME
from tomohet.cli.runlog import Run
from tomohet.data.truth import load_truth
from tomohet.errors import InputError
from tomohet.simulate.datasets import simulate_preset

N = 12  # particles of the tiny dataset


def assert_cli_error(result, *needles: str) -> str:
    """Exit code 2, no traceback, exactly one line 'error: ...' that holds every needle; returns that line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 12-particle, 13-tilt simulated dataset with its ground truth (about 2 s)."""
    out = tmp_path_factory.mktemp("tiny")
    layout, _ = simulate_preset("smoke", out, seed=3, n_particles=N, acquisition={"tilt_step": 10.0})
    return layout.optimisation_set


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> Path:
    """A copy of the tiny dataset (its folder, with ground_truth.csv and dataset.json) that a test may change."""
    shutil.copytree(tiny.parent, tmp_path / "data")
    return tmp_path / "data" / tiny.name


@pytest.mark.parametrize(
    ("args", "option", "shown"),
    [
        (["-K", "0"], "--classes/-K", "got 0"),
        (["-K", "-3"], "--classes/-K", "got -3"),
        (["--iterations", "0"], "--iterations", "got 0"),
        (["--iterations", "-2"], "--iterations", "got -2"),
        (["--resolution-limit", "0"], "--resolution-limit", "got 0.0"),
        (["--resolution-limit", "-20"], "--resolution-limit", "got -20.0"),
        (["--init", "kmeans++"], "--init", "'kmeans++'"),
        (["--method", "relion"], "--method", "'relion'"),
        (["--runs", "0"], "--runs", "got 0"),
        (["--max-dose", "-1"], "--max-dose", "got -1.0"),
        (["--workers", "-1"], "--workers", "got -1"),
        (["--anneal", "0"], "--anneal", "got 0.0"),
        (["--pixel-size", "0"], "--pixel-size", "got 0.0"),
        (["--pixel-size", "-12"], "--pixel-size", "got -12.0"),
        (["--method", "em3d", "-K", "0"], "--classes/-K", "got 0"),
        (["--method", "hillclimb", "--init", "ppca"], "--init", "not hillclimb"),
        (["--rare-starts", "-1"], "--rare-starts", "got -1"),
    ],
)
def test_classify_bad_option_before_anything_runs(tiny, tmp_path, monkeypatch, args, option, shown):
    def no_reading(*a, **k):
        raise AssertionError("data read before the options were checked")

    monkeypatch.setattr("tomohet.data.io.read_any", no_reading)
    monkeypatch.setattr("tomohet.data.io.read_particles", no_reading)
    monkeypatch.setattr("tomohet.parallel.DaskExecutor", no_reading)
    t = time.perf_counter()
    line = assert_cli_error(cli("classify", tiny, "--out", tmp_path / "c", *args), option, shown)
    assert line.startswith(f"error: {option}:")
    assert time.perf_counter() - t < 10  # --workers -1 used to wait 42 s for a TimeoutError
    assert not (tmp_path / "c").exists()  # nothing written


@pytest.mark.parametrize("method", ["em", "em3d", "hillclimb"])
def test_more_classes_than_particles(tiny, tmp_path, method):
    r = cli("classify", tiny, "--out", tmp_path / "c", "-K", N + 1, "--method", method)
    assert_cli_error(r, "--classes/-K", f"{N + 1} classes for {N} particles", str(tiny))
    assert not (tmp_path / "c" / "particles.star").exists() and not (tmp_path / "c" / LOCK_NAME).exists()


def test_max_dose_that_leaves_particles_without_images():
    """A particle whose every image lies above --max-dose could not be classified: a clear error, not a class."""
    dose = torch.tensor([[0.0, 3.0, 6.0], [4.0, 7.0, 10.0]])  # particle 2 starts at pre-exposure 4
    ds = SimpleNamespace(kind="2d", dose=dose, visible=torch.ones(2, 3, dtype=torch.bool))
    check_max_dose(ds, 5.0)
    with pytest.raises(OptionError, match=r"--max-dose: 1 of 2 particles keep no image at or below 3.0 e/A\^2"):
        check_max_dose(ds, 3.0)


def test_workers_zero_means_this_process():
    check_classify(2, 1, "pca", "em", 1, None, None, 1.0, None, workers=0)  # accepted
    assert _executor(0, None, None) is None  # no Dask cluster: the work runs in this process
    with pytest.raises(OptionError, match="--workers"):
        check_classify(2, 1, "pca", "em", 1, None, None, 1.0, None, workers=-1)


@pytest.mark.parametrize(
    ("args", "option", "shown"),
    [
        (["--oversampling", "0"], "--oversampling", "got 0"),
        (["--batch-size", "0"], "--batch-size", "got 0"),
        (["--batch-size", "-5"], "--batch-size", "got -5"),  # used to write an all-NaN map with a resolution
        (["--pixel-size", "0"], "--pixel-size", "got 0.0"),
    ],
)
def test_reconstruct_bad_option(tiny, tmp_path, args, option, shown):
    assert_cli_error(cli("reconstruct", tiny, "--out", tmp_path / "r", *args), option, shown)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["simulate", "--n-particles", "0"], "--n-particles"),
        (["simulate", "--snr", "-0.1"], "--snr"),
        (["simulate", "--missing-tilts", "1.5"], "--missing-tilts"),
        (["simulate", "--structured-noise", "-1"], "--structured-noise"),
        (["simulate", "--preset", "nope"], "--preset"),
        (["demo", "--n-particles", "-4"], "--n-particles"),
    ],
)
def test_simulate_and_demo_bad_option(tmp_path, args, option):
    assert_cli_error(cli(*args, "--out", tmp_path / "s"), option)
    assert not (tmp_path / "s" / "dataset.json").exists()


def test_out_is_a_file_or_below_a_file(tiny, tmp_path):
    f = tmp_path / "taken"
    f.write_text("mine")
    assert_cli_error(cli("reconstruct", tiny, "--out", f), str(f), "is a file")
    assert_cli_error(cli("classify", tiny, "--out", f / "sub", "-K", "2"), str(f / "sub"), f"{f} is a file")
    assert f.read_text() == "mine"


def test_out_not_creatable(tiny, tmp_path, monkeypatch):
    target = tmp_path / "denied" / "out"
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if self == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert_cli_error(cli("reconstruct", tiny, "--out", target), str(target), "cannot create", "Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_read_only(tiny, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_cli_error(cli("reconstruct", tiny, "--out", ro), str(ro), "not writable")
        assert_cli_error(cli("reconstruct", tiny, "--out", ro / "sub"), str(ro / "sub"), "cannot create")
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("with_name", [True, False])
def test_disk_full_while_simulating(tmp_path, monkeypatch, with_name):
    """A full disk while the stacks are written: one line naming the file (or, where the system does not say
    which, the --out folder); the folder's lock is released and the log says why the run stopped."""
    out = tmp_path / "sim"
    stack = out / "smoke" / "TS_01.mrcs"

    def full(*a, **k):
        if with_name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(stack))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a failed write() on an open file says it

    monkeypatch.setattr("tomohet.simulate.datasets.simulate_images", full)
    r = cli("simulate", "--preset", "smoke", "--n-particles", "4", "--out", out)
    line = assert_cli_error(r, "no space left on device")
    assert (f"error: {stack}: " if with_name else f"error: {out}: ") in line
    assert not (out / LOCK_NAME).exists()
    assert "stopped: OSError" in (out / "tomohet.log").read_text()


def test_disk_full_writing_result_json_keeps_no_truncated_file(tmp_path, monkeypatch):
    real = Path.write_text

    def write_text(self, text, *a, **k):
        if self.name.startswith("result.json"):
            real(self, text[: len(text) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OSError) as err, Run(tmp_path / "o", "test", {}) as run:
        run.finish("test")
    assert err.value.filename == str(tmp_path / "o" / "result.json") and err.value.errno == errno.ENOSPC
    assert not (tmp_path / "o" / "result.json").exists() and not (tmp_path / "o" / "result.json.tmp").exists()


def _classify(data: Path, out: Path, *extra: str):
    return cli("classify", data, "--out", out, "-K", "2", "--iterations", "1", *extra)


def test_foreign_ground_truth_beside_the_input_skips_metrics(tiny_copy, tmp_path):
    """Issue 14: classify wrote its labels, then died with KeyError 'rlnTomoParticleName' before result.json."""
    gt = tiny_copy.parent / "ground_truth.csv"
    pd.DataFrame({"particle": ["a", "b"], "class": [1, 2]}).to_csv(gt, index=False)  # someone else's file
    result = run_classify(tiny_copy, tmp_path / "c", n_classes=2, n_iter=1, class_maps=False)
    assert "metrics" not in result
    assert str(gt) in result["metrics_skipped"] and "rlnTomoParticleName" in result["metrics_skipped"]
    assert json.loads((tmp_path / "c" / "result.json").read_text())["metrics_skipped"] == result["metrics_skipped"]
    log = (tmp_path / "c" / "tomohet.log").read_text()
    assert "WARNING metrics skipped" in log and str(gt) in log
    post = pd.read_csv(tmp_path / "c" / "posteriors.csv")  # the labels are all there
    assert len(post) == N and set(post["rlnClassNumber"]) <= {1, 2}


@pytest.mark.parametrize(
    ("table", "column", "message"),
    [
        ({"particle": ["a"], "class": [1]}, "rlnTomoParticleName", "no column 'rlnTomoParticleName'"),
        ({"rlnTomoParticleName": ["p1", "p2"], "label": [0, 1]}, "state", "no column 'state'"),
        ({"rlnTomoParticleName": ["p1"], "state": [0]}, "rlnTomoParticleName", "no ground truth for particle 'p2'"),
        ({"rlnTomoParticleName": ["p1", "p2"], "state": [0, None]}, "state", "no state for particle 'p2'"),
    ],
)
def test_load_truth_names_the_file_and_the_column(tmp_path, table, column, message):
    gt = tmp_path / "ground_truth.csv"
    pd.DataFrame(table).to_csv(gt, index=False)
    with pytest.raises(InputError) as err:
        load_truth(gt, ["p1", "p2"])
    assert err.value.path == gt and err.value.field == column and message in str(err.value)
    gt.write_bytes(b"\x00\xff\xfe binary")
    with pytest.raises(InputError, match="not a readable ground-truth CSV|no column"):
        load_truth(gt, ["p1"])


def test_foreign_dataset_json_skips_only_the_oracle(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"made_by": "someone else"}))
    truth = pd.DataFrame({"rlnTomoParticleName": ["p1", "p2", "p3", "p4"], "state": [0, 0, 1, 1]})
    with Run(tmp_path / "c", "test", {}) as run:
        metrics = _metrics_against_truth(SimpleNamespace(kind="2d"), tmp_path / "ground_truth.csv", truth,
                                         np.array([1, 1, 0, 0]), run)  # fmt: skip
    assert "oracle" not in metrics and metrics["method"]["ari"] == 1.0
    log = (tmp_path / "c" / "tomohet.log").read_text()
    assert "oracle skipped" in log and str(tmp_path / "dataset.json") in log


def test_given_truth_that_does_not_fit_is_an_error_before_the_work(tiny, tmp_path):
    gt = tmp_path / "mine.csv"
    pd.DataFrame({"name": ["x"], "state": [0]}).to_csv(gt, index=False)
    assert_cli_error(_classify(tiny, tmp_path / "c", "--truth", gt), str(gt), "[rlnTomoParticleName]")
    pd.DataFrame({"rlnTomoParticleName": ["TS_01/1"], "state": [0]}).to_csv(gt, index=False)
    assert_cli_error(_classify(tiny, tmp_path / "c", "--truth", gt), str(gt), "no ground truth for particle")
    assert not (tmp_path / "c" / "particles.star").exists()


def _reader_takes_pixel_size() -> bool:
    from tomohet.data import io

    return all("pixel_size" in inspect.signature(f).parameters for f in (io.read_any, io.read_particles))


def test_pixel_size_override_reaches_the_reader(tiny, tmp_path):
    if not _reader_takes_pixel_size():
        pytest.skip("tomohet.data.io readers do not take pixel_size= yet")
    r = cli("reconstruct", tiny, "--out", tmp_path / "r", "--pixel-size", "6.5", "--oversampling", "1")
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "r" / "result.json").read_text())
    assert result["pixel_size"] == 6.5 and result["options"]["pixel_size"] == 6.5
    with mrcfile.open(tmp_path / "r" / "map.mrc", permissive=True) as m:
        assert float(m.voxel_size.x) == pytest.approx(6.5)


def test_pixel_size_passed_by_classify(tiny, tmp_path, monkeypatch):
    if not _reader_takes_pixel_size():
        pytest.skip("tomohet.data.io readers do not take pixel_size= yet")
    from tomohet.data import io

    seen = {}
    real = io.read_any

    def spy(path, tomograms=None, *, pixel_size=None):
        seen["pixel_size"] = pixel_size
        return real(path, tomograms, pixel_size=pixel_size)

    monkeypatch.setattr(io, "read_any", spy)
    # stops after reading (more classes than particles): enough to see what the reader was given
    assert_cli_error(cli("classify", tiny, "--out", tmp_path / "c", "-K", N + 1, "--pixel-size", "7"), "--classes")
    assert seen == {"pixel_size": 7.0}

"""Bad input: every reader stops with one clear InputError naming the file and the field, the CLI prints one
'error: ...' line and exits with code 2, and nothing the user gave is modified."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tomohet.cli.main import app
from tomohet.data.io import read_particles
from tomohet.data.relion5 import read_optimisation_set
from tomohet.data.star import read_star, write_star
from tomohet.errors import InputError


def snapshot(paths: list[Path]) -> dict[Path, tuple[int, str]]:
    """mtime and content hash of each file (to prove that nothing the user gave is modified)."""
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths if p.exists()}


def run_cli(star: Path, out: Path):
    return CliRunner().invoke(app, ["reconstruct", str(star), "--out", str(out), "--oversampling", "1"])


def assert_cli_error(result, *needles: str) -> None:
    """Exit code 2, no traceback, exactly one line 'error: ...' that holds every needle."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def warptools_copy(warptools_optset, tmp_path) -> Callable[..., tuple[Path, Path]]:
    """A copy of the WarpTools project in tmp_path (optimisation set, particles star with absolute image
    paths to the originals, tomograms star); ``edit(blocks)`` may change the particles star's blocks first.
    Returns (optimisation set, particles star)."""
    pstar, tstar = read_optimisation_set(warptools_optset)

    def make(edit: Callable[[dict], None] | None = None) -> tuple[Path, Path]:
        blocks = read_star(pstar)
        parts = blocks["particles"]
        parts["rlnImageName"] = [str((pstar.parent / n).resolve()) for n in parts["rlnImageName"]]
        if edit:
            edit(blocks)
        new_p = tmp_path / pstar.name
        write_star(blocks, new_p)
        shutil.copy(tstar, tmp_path / tstar.name)
        oset = tmp_path / warptools_optset.name
        shutil.copy(warptools_optset, oset)
        return oset, new_p

    return make


def test_missing_particle_column(warptools_copy, tmp_path):
    oset, pstar = warptools_copy(lambda b: b.update(particles=b["particles"].drop(columns="rlnAngleTilt")))
    before = snapshot([oset, pstar])
    with pytest.raises(InputError) as err:
        read_particles(oset)
    assert str(pstar) in str(err.value) and "rlnAngleTilt" in str(err.value) and "data_particles" in str(err.value)
    assert err.value.field == "rlnAngleTilt" and err.value.path == pstar
    assert_cli_error(run_cli(oset, tmp_path / "out"), str(pstar), "[rlnAngleTilt]")
    assert snapshot([oset, pstar]) == before


def test_box_disagrees_with_stack(warptools_copy, tmp_path):
    def box64(blocks):
        blocks["optics"]["rlnImageSize"] = 64

    oset, pstar = warptools_copy(box64)
    ds = read_particles(oset)
    assert ds.box == 64
    stacks = list(ds.images.paths)
    before = snapshot([oset, pstar] + stacks)
    with pytest.raises(InputError) as err:
        ds.batch([0])
    msg = str(err.value)
    assert "32x32" in msg and "box 64" in msg and "[rlnImageSize]" in msg and str(stacks[0]) in msg
    assert str(pstar) in msg  # the star file that claims the box is named too
    assert_cli_error(run_cli(oset, tmp_path / "out"), "[rlnImageSize]", "box 64")
    assert snapshot([oset, pstar] + stacks) == before


def test_nan_in_an_image(warptools_copy, warptools_optset, tmp_path):
    pstar0, _ = read_optimisation_set(warptools_optset)
    first = pstar0.parent / read_star(pstar0)["particles"]["rlnImageName"].iloc[0]
    bad = tmp_path / "nan.mrcs"
    shutil.copy(first, bad)
    with mrcfile.open(bad, mode="r+") as m:
        data = np.array(m.data)
        data[3, 10, 10] = np.nan
        m.set_data(data)

    def point_to_nan(blocks):
        blocks["particles"].loc[0, "rlnImageName"] = str(bad)

    oset, pstar = warptools_copy(point_to_nan)
    ds = read_particles(oset)
    before = snapshot([oset, pstar, bad, first])
    assert ds.batch([1]).images.isfinite().all()  # other particles still read
    with pytest.raises(InputError) as err:
        ds.batch([0, 1])
    assert str(bad) in str(err.value) and "image 4" in str(err.value) and "NaN" in str(err.value)
    assert err.value.field == "rlnImageName"
    assert_cli_error(run_cli(oset, tmp_path / "out"), str(bad), "image 4", "[rlnImageName]")
    assert snapshot([oset, pstar, bad, first]) == before


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated"])
def test_missing_or_unreadable_stack(warptools_copy, warptools_optset, tmp_path, kind):
    stack = tmp_path / f"{kind}.mrcs"
    if kind == "garbage":
        stack.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated":  # a valid header whose data are cut short
        pstar0, _ = read_optimisation_set(warptools_optset)
        first = pstar0.parent / read_star(pstar0)["particles"]["rlnImageName"].iloc[0]
        stack.write_bytes(first.read_bytes()[:3000])

    def point(blocks):
        blocks["particles"].loc[2, "rlnImageName"] = str(stack)

    oset, pstar = warptools_copy(point)
    before = snapshot([oset, pstar, stack])
    ds = read_particles(oset)
    with pytest.raises(InputError) as err:
        ds.batch([2])
    expected = "image file not found" if kind == "missing" else "not a readable MRC file"
    assert str(stack) in str(err.value) and expected in str(err.value) and err.value.field == "rlnImageName"
    assert_cli_error(run_cli(oset, tmp_path / "out"), str(stack), expected)
    assert snapshot([oset, pstar, stack]) == before
    assert stack.exists() == (kind != "missing")


@pytest.mark.parametrize("content", [b"hello\nthis is not a STAR file\n", np.random.default_rng(1).bytes(3000)])
def test_not_a_star_file(tmp_path, content):
    path = tmp_path / "particles.star"
    path.write_bytes(content)
    before = snapshot([path])
    with pytest.raises(InputError) as err:
        read_particles(path)
    assert str(path) in str(err.value) and "STAR" in str(err.value)
    assert_cli_error(run_cli(path, tmp_path / "out"), str(path), "STAR")
    assert snapshot([path]) == before


def test_star_with_no_known_layout(tmp_path):
    path = tmp_path / "other.star"
    write_star({"stuff": pd.DataFrame({"rlnMicrographName": ["a.mrc"], "rlnDefocusU": [1.0]})}, path)
    with pytest.raises(InputError, match="unrecognised STAR file"):
        read_particles(path)
    assert_cli_error(run_cli(path, tmp_path / "out"), str(path), "unrecognised STAR file")


def ribosome_copy(ribosome_star: Path, tmp_path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    """A copy of the ribosome image-series star (image names made absolute) changed by ``edit``."""
    df = read_star(ribosome_star)[""]
    stack = ribosome_star.parent / df["rlnImageName"].iloc[0].split("@")[1]
    df["rlnImageName"] = [f"{n.split('@')[0]}@{stack.resolve()}" for n in df["rlnImageName"]]
    path = tmp_path / "ribo.star"
    write_star({"": edit(df)}, path)
    return path


@pytest.mark.parametrize("column", ["rlnGroupName", "rlnImageName", "rlnAngleTilt", "rlnDefocusV"])
def test_warp_v1_missing_column(ribosome_star, tmp_path, column):
    path = ribosome_copy(ribosome_star, tmp_path, lambda df: df.drop(columns=column))
    before = snapshot([path, ribosome_star])
    with pytest.raises(InputError) as err:
        read_particles(path)
    assert str(path) in str(err.value) and err.value.field == column and f"[{column}]" in str(err.value)
    assert_cli_error(run_cli(path, tmp_path / "out"), str(path), f"[{column}]")
    assert snapshot([path, ribosome_star]) == before


def test_warp_v1_bad_rows(ribosome_star, tmp_path):
    def bad_name(df):
        df.loc[7, "rlnImageName"] = "stack_without_frame.mrcs"
        return df

    path = ribosome_copy(ribosome_star, tmp_path, bad_name)
    with pytest.raises(InputError, match=r"\[rlnImageName\]: row 8: expected 'N@stack.mrcs'"):
        read_particles(path)

    def nan_defocus(df):
        df.loc[11, "rlnDefocusU"] = np.nan
        return df

    path = ribosome_copy(ribosome_star, tmp_path, nan_defocus)
    with pytest.raises(InputError, match=r"\[rlnDefocusU\]: row 12 of data_ is not finite"):
        read_particles(path)

    def missing_stack(df):
        df.loc[200, "rlnImageName"] = "000001@" + str(tmp_path / "nowhere.mrcs")
        return df

    path = ribosome_copy(ribosome_star, tmp_path, missing_stack)
    with pytest.raises(InputError) as err:
        read_particles(path)
    assert "nowhere.mrcs [rlnImageName]: image stack not found (named in row 201" in str(err.value)
    assert str(path) in str(err.value)

    def frame_beyond_stack(df):
        df.loc[0, "rlnImageName"] = df.loc[0, "rlnImageName"].replace("000001@", "000300@")
        return df

    ds = read_particles(ribosome_copy(ribosome_star, tmp_path, frame_beyond_stack))
    with pytest.raises(InputError, match=r"\[rlnImageName\]: frame 300 requested but the stack has 220"):
        ds.batch([0])

"""Bad input at the data layer (issue 14, hardening): every case is one InputError whose one-line message names the
file and the field (and the row, tilt series or particle where there is one), or the recovered result.

A tiny simulated RELION 5 project (4 particles x 5 tilts), its Warp v1 image-series and RELION 3.1 subtomogram
forms, and the real ribosome image-series star are copied, changed and read; nothing given is ever modified."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

import tomohet.data.io as io_module
import tomohet.data.relion5 as relion5_module
import tomohet.data.star as star_module
import tomohet.data.subtomo as subtomo_module
import tomohet.data.warp_v1 as warp_v1_module
from tomohet.data.io import detect_format, read_any, read_particles
from tomohet.data.relion5 import read_relion5
from tomohet.data.star import read_star, write_star
from tomohet.data.subtomo import read_subtomograms, write_relion31_subtomograms
from tomohet.data.warp_v1 import read_warp_v1, write_warp_v1
from tomohet.errors import InputError
from tomohet.simulate.datasets import simulate_preset

from .test_fuzz_stars import absolute_images

Edit = Callable[[dict], None]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> dict:
    """Parsed blocks (absolute image paths) of the tiny project in its three forms."""
    out = tmp_path_factory.mktemp("bad_input_data")
    layout, _ = simulate_preset(
        "smoke", out / "sim", seed=7, n_particles=4, acquisition={"tilt_max": 6.0, "n_tomograms": 2}
    )
    ds = read_relion5(layout.optimisation_set)
    parts, tomos = read_star(layout.particles_star), read_star(layout.tomograms_star)
    absolute_images(parts, layout.particles_star.parent, ("rlnImageName",))
    parts["particles"]["rlnRandomSubset"] = [1, 2, 1, 2]
    w1 = write_warp_v1(ds, out / "w1" / "w1.star")
    w1_blocks = read_star(w1)
    absolute_images(w1_blocks, w1.parent, ("rlnImageName",))
    sub = write_relion31_subtomograms(ds, out / "sub", batch_size=4, oversampling=1)
    sub_blocks = read_star(sub)
    absolute_images(sub_blocks, sub.parent, ("rlnImageName", "rlnCtfImage"))
    return {"particles": parts, "tomograms": tomos, "w1": w1_blocks, "sub": sub_blocks}


def copy(blocks: dict) -> dict:
    return {k: (v.copy() if isinstance(v, pd.DataFrame) else dict(v)) for k, v in blocks.items()}


def relion5_project(sim: dict, folder: Path, particles: Edit | None = None, tomograms: Edit | None = None) -> dict:
    """Write the RELION 5 project into ``folder`` (after the edits); returns its three paths."""
    folder.mkdir(parents=True, exist_ok=True)
    p, t = copy(sim["particles"]), copy(sim["tomograms"])
    if particles:
        particles(p)
    if tomograms:
        tomograms(t)
    paths = {"particles": folder / "particles.star", "tomograms": folder / "tomograms.star"}
    write_star(p, paths["particles"])
    write_star(t, paths["tomograms"])
    paths["optset"] = folder / "optimisation_set.star"
    write_star({"": {"rlnTomoParticlesFile": "particles.star", "rlnTomoTomogramsFile": "tomograms.star"}},
               paths["optset"])  # fmt: skip
    return paths


def single_star(sim: dict, key: str, path: Path, edit: Edit | None = None) -> Path:
    blocks = copy(sim[key])
    if edit:
        edit(blocks)
    write_star(blocks, path)
    return path


def digest(paths) -> dict:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def raises(path_to_read: Path, *needles: str, **kw) -> InputError:
    """read_any raises one InputError whose one-line message holds every needle; the input is unchanged."""
    folder = Path(path_to_read).parent
    before = digest(p for p in folder.iterdir() if p.is_file())
    with pytest.raises(InputError) as err:
        read_any(path_to_read, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    assert digest(p for p in folder.iterdir() if p.is_file()) == before
    return err.value


def set_column(block: str, column: str, value) -> Edit:
    def edit(blocks: dict) -> None:
        blocks[block][column] = value

    return edit


def set_cell(block: str, column: str, value, row: int = 0) -> Edit:
    def edit(blocks: dict) -> None:
        df = blocks[block].astype({column: object}) if column in blocks[block] else blocks[block]
        df.loc[row, column] = value
        blocks[block] = df

    return edit


# --- 1. text in numeric fields ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("star", "block", "field", "row"),
    [
        ("particles", "optics", "rlnOpticsGroup", 2),
        ("particles", "particles", "rlnOpticsGroup", 3),
        ("particles", "particles", "rlnRandomSubset", 2),
        ("particles", "optics", "rlnImageSize", 1),
        ("particles", "particles", "rlnAngleTilt", 4),
        ("tomograms", "global", "rlnTomoHand", 2),
        ("tomograms", "global", "rlnVoltage", 1),
        ("tomograms", "TS_02.tomostar", "rlnDefocusU", 3),
    ],
)
def test_text_in_numeric_relion5_field(sim, tmp_path, star, block, field, row):
    edit = set_cell(block, field, "abc", row - 1)
    paths = relion5_project(sim, tmp_path, **{star: edit})
    err = raises(paths["optset"], str(paths[star]), f"[{field}]", f"row {row} of data_{block}: 'abc' is not a number")
    assert err.field == field and err.path == paths[star]


def test_text_in_stacks_flag(sim, tmp_path):
    paths = relion5_project(sim, tmp_path, particles=lambda b: b["general"].update(rlnTomoSubTomosAre2DStacks="yes"))
    raises(paths["particles"], str(paths["particles"]), "[rlnTomoSubTomosAre2DStacks]", "'yes'")


@pytest.mark.parametrize(("field", "row"), [("rlnRandomSubset", 6), ("rlnVoltage", 2), ("rlnCtfBfactor", 9)])
def test_text_in_numeric_warp_v1_field(sim, tmp_path, field, row):
    path = single_star(sim, "w1", tmp_path / "w1.star", set_cell("", field, "abc", row - 1))
    raises(path, str(path), f"[{field}]", f"row {row} of data_: 'abc' is not a number")


@pytest.mark.parametrize(
    ("block", "field", "row"),
    [("particles", "rlnOpticsGroup", 2), ("particles", "rlnRandomSubset", 3), ("optics", "rlnVoltage", 1)],
)
def test_text_in_numeric_subtomogram_field(sim, tmp_path, block, field, row):
    path = single_star(sim, "sub", tmp_path / "sub.star", set_cell(block, field, "abc", row - 1))
    raises(path, str(path), f"[{field}]", f"row {row} of data_{block}: 'abc' is not a number")


def test_bad_whole_numbers_and_flags(sim, tmp_path):
    paths = relion5_project(sim, tmp_path / "a", particles=set_cell("particles", "rlnRandomSubset", 1.5, 1))
    raises(paths["optset"], "[rlnRandomSubset]", "row 2 of data_particles: 1.5 is not a whole number")
    paths = relion5_project(sim, tmp_path / "b", particles=set_cell("particles", "rlnRandomSubset", 3, 2))
    raises(paths["optset"], "[rlnRandomSubset]", "row 3: half set 3; expected 1 or 2")
    paths = relion5_project(sim, tmp_path / "c", tomograms=set_cell("global", "rlnTomoHand", 0.0, 0))
    raises(paths["optset"], str(paths["tomograms"]), "[rlnTomoHand]", "expected -1 or 1")
    paths = relion5_project(sim, tmp_path / "d", tomograms=set_cell("global", "rlnVoltage", -300.0, 1))
    raises(paths["optset"], "[rlnVoltage]", "the voltage (kV) must be positive, got -300")


# --- 2. pixel size zero or negative -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.0, -12.0])
def test_pixel_size_not_positive(sim, tmp_path, value):
    paths = relion5_project(sim, tmp_path / "r5", particles=set_column("optics", "rlnImagePixelSize", value))
    err = raises(paths["optset"], str(paths["particles"]), "[rlnImagePixelSize]", "pixel size must be a positive")
    assert err.field == "rlnImagePixelSize"
    path = single_star(sim, "sub", tmp_path / "sub.star", set_column("optics", "rlnImagePixelSize", value))
    raises(path, str(path), "[rlnImagePixelSize]", "pixel size must be a positive")

    # the Warp v1 writer stores the pixel size as rlnDetectorPixelSize with rlnMagnification 10000
    path = single_star(sim, "w1", tmp_path / "w1.star", set_column("", "rlnDetectorPixelSize", value))
    raises(path, str(path), "[rlnDetectorPixelSize]", "pixel size must be a positive")
    with pytest.raises(InputError, match=r"\[pixel_size\]: pixel size must be a positive number of Angstrom, got"):
        read_any(paths["optset"], pixel_size=value)


# --- 3. rlnDetectorPixelSize without rlnMagnification; the pixel_size override -----------------------------------


def ribosome_copy(ribosome_star: Path, tmp_path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    df = read_star(ribosome_star)[""]
    stack = (ribosome_star.parent / df["rlnImageName"].iloc[0].split("@")[1]).resolve()
    df["rlnImageName"] = [f"{n.split('@')[0]}@{stack}" for n in df["rlnImageName"]]
    path = tmp_path / "ribo.star"
    write_star({"": edit(df)}, path)
    return path


def test_detector_pixel_size_without_magnification(ribosome_star, tmp_path, caplog):
    path = ribosome_copy(ribosome_star, tmp_path, lambda df: df.drop(columns="rlnMagnification"))
    before = digest([path, ribosome_star])
    with caplog.at_level(logging.WARNING, logger="tomohet"):
        ds = read_any(path)
    assert ds.pixel_size == pytest.approx(1.96) and ds.n_particles == 6 and ds.n_images == 219
    warned = [r for r in caplog.records if r.name == "tomohet" and r.levelno == logging.WARNING]
    assert len(warned) == 1 and "rlnDetectorPixelSize" in warned[0].getMessage()
    assert str(path) in warned[0].getMessage() and "Angstrom" in warned[0].getMessage()
    assert digest([path, ribosome_star]) == before


def test_pixel_size_override_warp_v1(ribosome_star, tmp_path):
    def origins(df):
        df = df.drop(columns="rlnMagnification")
        df["rlnOriginXAngst"] = 3.92
        df["rlnOriginYAngst"] = -7.84
        return df

    path = ribosome_copy(ribosome_star, tmp_path, origins)
    own = read_any(path)
    over = read_any(path, pixel_size=3.92)
    assert own.pixel_size == pytest.approx(1.96) and over.pixel_size == pytest.approx(3.92)
    vis = own.visible
    assert torch.allclose(own.shifts[vis], torch.tensor([-2.0, 4.0]).expand(int(vis.sum()), 2))
    assert torch.allclose(over.shifts[vis], torch.tensor([-1.0, 2.0]).expand(int(vis.sum()), 2))
    # without any pixel size in the file, only the override makes it readable
    bare = ribosome_copy(
        ribosome_star, tmp_path, lambda df: df.drop(columns=["rlnMagnification", "rlnDetectorPixelSize"])
    )
    raises(bare, str(bare), "[rlnImagePixelSize]", "no pixel size")
    assert read_warp_v1(bare, pixel_size=2.5).pixel_size == 2.5


def test_pixel_size_override_relion5_and_subtomograms(sim, tmp_path):
    def origin(b):
        b["particles"]["rlnOriginXAngst"] = 12.0

    paths = relion5_project(sim, tmp_path, particles=origin)
    own, over = read_any(paths["optset"]), read_any(paths["optset"], pixel_size=6.0)
    assert own.pixel_size == 12.0 and over.pixel_size == 6.0
    assert own.shifts.abs().max() > 0.5  # one pixel along x of the tomogram, projected
    assert torch.allclose(over.shifts, 2 * own.shifts, atol=1e-5)
    assert torch.equal(over.rotations, own.rotations) and over.box == own.box
    path = single_star(sim, "sub", tmp_path / "sub.star", set_column("particles", "rlnOriginXAngst", 12.0))
    s_own, s_over = read_any(path), read_subtomograms(path, pixel_size=6.0)
    assert s_own.shifts[:, 0].tolist() == [1.0] * 4 and s_over.shifts[:, 0].tolist() == [2.0] * 4


# --- 4. single-particle stars ---------------------------------------------------------------------------------------


def spa_star(ribosome_star: Path, path: Path, group: bool) -> Path:
    """A RELION 3.1 single-particle star (optics + particles, no tilt or dose per image) over the ribosome stack."""
    stack = (ribosome_star.parent / read_star(ribosome_star)[""]["rlnImageName"].iloc[0].split("@")[1]).resolve()
    n = 12
    parts = pd.DataFrame({
        "rlnCoordinateX": np.linspace(100, 900, n), "rlnCoordinateY": np.linspace(50, 500, n),
        "rlnImageName": [f"{i + 1:06d}@{stack}" for i in range(n)],
        "rlnMicrographName": [f"MotionCorr/mic_{i // 4:03d}.mrc" for i in range(n)],
        "rlnDefocusU": 20000.0, "rlnDefocusV": 19500.0, "rlnDefocusAngle": 30.0, "rlnCtfBfactor": 0.0,
        "rlnCtfScalefactor": 1.0, "rlnAngleRot": 10.0, "rlnAngleTilt": 80.0, "rlnAnglePsi": -30.0,
        "rlnOriginXAngst": 0.5, "rlnOriginYAngst": -0.5, "rlnOpticsGroup": 1, "rlnRandomSubset": [1, 2] * (n // 2),
    })  # fmt: skip
    if group:
        parts["rlnGroupName"] = [f"group_{i // 6 + 1:02d}" for i in range(n)]
    optics = pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"], "rlnOpticsGroup": [1], "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [1.96],
        "rlnImageSize": [64], "rlnImageDimensionality": [2],
    })  # fmt: skip
    write_star({"optics": optics, "particles": parts}, path)
    return path


@pytest.mark.parametrize("group", [True, False])
def test_single_particle_star_is_named_as_such(ribosome_star, tmp_path, group):
    path = spa_star(ribosome_star, tmp_path / "spa.star", group)
    err = raises(path, str(path), "this looks like a single-particle RELION star, not a tilt-series")
    assert "missing" not in str(err)  # not blamed for a missing Warp v1 column
    assert err.field == ("rlnGroupName" if group else None)
    with pytest.raises(InputError, match="single-particle RELION star"):
        read_warp_v1(path)
    with pytest.raises(InputError, match="single-particle RELION star"):
        detect_format(path)


def test_image_series_without_group_is_still_missing_a_column(ribosome_star, tmp_path):
    """A tilt series (per-image tilt and dose) that lacks rlnGroupName is told what it lacks."""
    path = ribosome_copy(ribosome_star, tmp_path, lambda df: df.drop(columns="rlnGroupName"))
    raises(path, "[rlnGroupName]", "required column missing")


# --- 5. projection matrices that are not rotations ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "field", "why"),
    [
        ("scale", "rlnTomoProjX", "|R R^T - I|"),  # a pixel-size factor in the matrix
        ("shear", "rlnTomoProjX", "|R R^T - I|"),
        ("mirror", "rlnTomoProjX/Y/Z", "determinant -1"),
    ],
)
def test_projection_not_a_rotation(sim, tmp_path, kind, field, why):
    def edit(b):
        df = b["TS_02.tomostar"]
        vec = [float(x) for x in df.loc[2, "rlnTomoProjX"].strip("[]").split(",")]
        if kind == "scale":
            vec[:3] = [2 * x for x in vec[:3]]
        elif kind == "shear":
            vec[1] += 0.2
        else:
            vec[:3] = [-x for x in vec[:3]]
        df.loc[2, "rlnTomoProjX"] = "[" + ",".join(map(repr, vec)) + "]"

    paths = relion5_project(sim, tmp_path, tomograms=edit)
    err = raises(
        paths["optset"], str(paths["tomograms"]), "tilt series 'TS_02.tomostar', tilt 3", why, "not a rotation"
    )
    assert err.field == field


def test_real_projection_matrices_are_rotations(warptools_optset):
    ds = read_any(warptools_optset)
    assert ds.n_particles == 40 and ds.pixel_size == 12.0


# --- 6. invisible particles and duplicate names ---------------------------------------------------------------------


def test_particle_with_no_visible_frame(sim, tmp_path):
    paths = relion5_project(sim, tmp_path, particles=set_cell("particles", "rlnTomoVisibleFrames", "[0,0,0,0,0]", 2))
    err = raises(paths["optset"], str(paths["particles"]), "row 3: particle 'TS_02/1' has no visible tilt image")
    assert err.field == "rlnTomoVisibleFrames"


def test_duplicate_particle_names(sim, tmp_path):
    paths = relion5_project(sim, tmp_path / "r5", particles=set_cell("particles", "rlnTomoParticleName", "TS_01/1", 3))
    raises(paths["optset"], str(paths["particles"]), "[rlnTomoParticleName]", "'TS_01/1' appears more than once")

    def dup_row(b):
        b["particles"] = pd.concat([b["particles"], b["particles"].iloc[[1]]], ignore_index=True)

    paths = relion5_project(sim, tmp_path / "r5b", particles=dup_row)
    raises(paths["optset"], "[rlnTomoParticleName]", "particle name 'TS_01/2' appears more than once (rows 2 and 5)")
    path = single_star(sim, "sub", tmp_path / "sub.star", set_cell("particles", "rlnTomoParticleName", "TS_01/1", 2))
    raises(path, str(path), "[rlnTomoParticleName]", "'TS_01/1' appears more than once (rows 1 and 3)")


def test_duplicate_image_series_groups(sim, tmp_path):
    w1 = sim["w1"][""]
    first = w1["rlnGroupName"].iloc[0]
    n0 = int((w1["rlnGroupName"] == first).sum())

    def repeated_row(b):
        b[""] = pd.concat([b[""].iloc[:3], b[""].iloc[[1]], b[""].iloc[3:]], ignore_index=True)

    path = single_star(sim, "w1", tmp_path / "a.star", repeated_row)
    raises(path, str(path), "[rlnGroupName]", f"rows 2 and 4: particle {first!r} lists image")

    def reused_name(b):  # the last particle renamed as the first: one name, two runs of rows
        b[""].loc[b[""].index[-1], "rlnGroupName"] = first

    path = single_star(sim, "w1", tmp_path / "b.star", reused_name)
    raises(path, "[rlnGroupName]", f"particle name {first!r} is used twice (rows 1 and {len(w1)}")
    assert n0 >= 2


# --- 7. no particles --------------------------------------------------------------------------------------------


def test_empty_particle_loops_say_no_particles(sim, tmp_path):
    paths = relion5_project(sim, tmp_path / "r5", particles=lambda b: b.update(particles=b["particles"].iloc[0:0]))
    err = raises(paths["optset"], str(paths["particles"]), "no particles: data_particles has no rows")
    assert "box" not in str(err) and "pixel" not in str(err)
    path = single_star(sim, "w1", tmp_path / "w1.star", lambda b: b.update({"": b[""].iloc[0:0]}))
    raises(path, str(path), "no particles: data_ has no rows")
    path = single_star(sim, "sub", tmp_path / "sub.star", lambda b: b.update(particles=b["particles"].iloc[0:0]))
    raises(path, str(path), "no particles: data_particles has no rows")


# --- 8. each STAR file parsed once ----------------------------------------------------------------------------------


@pytest.fixture
def parse_counter(monkeypatch) -> tuple[Counter, Counter]:
    """Counts of ``starfile.read`` (real parses) and ``read_star`` calls, per resolved path."""
    parses: Counter = Counter()
    calls: Counter = Counter()
    real_parse, real_read_star = starfile.read, star_module.read_star

    def parse(path, *a, **kw):
        parses[Path(path).resolve()] += 1
        return real_parse(path, *a, **kw)

    def counted_read_star(path):
        calls[Path(path).resolve()] += 1
        return real_read_star(path)

    monkeypatch.setattr(starfile, "read", parse)
    for module in (star_module, io_module, relion5_module, warp_v1_module, subtomo_module):
        monkeypatch.setattr(module, "read_star", counted_read_star)
    return parses, calls


def test_each_star_is_parsed_once(sim, tmp_path, parse_counter, warptools_optset):
    parses, calls = parse_counter
    paths = relion5_project(sim, tmp_path / "r5")
    ds = read_any(paths["optset"])
    assert ds.n_particles == 4
    want = {paths[k].resolve(): 1 for k in ("optset", "particles", "tomograms")}
    assert dict(parses) == want and dict(calls) == want
    for read in (read_any, read_particles):
        parses.clear(), calls.clear()
        path = single_star(sim, "w1", tmp_path / f"w1_{read.__name__}.star")
        assert read(path).n_particles == 4
        assert dict(parses) == dict(calls) == {path.resolve(): 1}
    parses.clear(), calls.clear()
    path = single_star(sim, "sub", tmp_path / "sub.star")
    assert read_any(path).n_particles == 4
    assert dict(parses) == dict(calls) == {path.resolve(): 1}
    parses.clear(), calls.clear()
    read_any(warptools_optset)
    assert len(parses) == 3 and set(parses.values()) == {1}

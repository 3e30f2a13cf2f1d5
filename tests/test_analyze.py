"""``tomohet analyze``: the report (offline, every section, non-blank figures, rendered in headless Chromium),
ChimeraX scenes that place each particle where its star says, and per-state stars that read back whole and
reconstruct to the run's class maps."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import starfile
from typer.testing import CliRunner

from tomohet.analysis.insitu import absolute_positions_A, parse_chimerax_matrices
from tomohet.cli.main import app
from tomohet.data.mrc import read_volume
from tomohet.data.relion5 import read_placements, read_relion5
from tomohet.physics.filters import fsc, shell_frequencies
from tomohet.physics.reconstruct import reconstruct


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """The demo on 120 particles (simulate, classify, landscape, analyze both into report.html), and the
    classify run analysed on its own by the command."""
    root = tmp_path_factory.mktemp("analyze")
    runner = CliRunner()
    r = runner.invoke(app, ["demo", "--out", str(root / "demo"), "--n-particles", "120"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["analyze", str(root / "demo" / "classify"), "--shuffles", "49"])
    assert r.exit_code == 0, r.output
    return root / "demo"


def _images(html: str) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("L"), dtype=float)
            for b in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]  # fmt: skip


def test_report_is_offline_and_complete(analysed):
    report = analysed / "classify" / "analysis" / "report.html"
    html = report.read_text()
    for section in ("Runs side by side", "Against the ground truth", "Populations", "Spatial statistics",
                    "Class maps against the true maps", "Map of every state", "Convergence", "Tomogram",
                    "Files for the next step"):  # fmt: skip
        assert section in html, section
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must not load anything remotely"
    assert "<script" not in html
    imgs = _images(html)
    assert len(imgs) >= 6
    assert all(im.std() > 5 for im in imgs), "a blank figure"
    result = json.loads((analysed / "classify" / "analysis" / "result.json").read_text())
    assert result["runs"][0]["oracle ARI"] >= 0.9
    demo = (analysed / "report.html").read_text()  # the demo's report: both runs, each beside the oracle
    assert demo.count("oracle") >= 4 and "landscape: landscape (ppca)" in demo and "classify: classify (em2d)" in demo


def test_demo_report_renders_in_headless_chromium(analysed, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from PIL import Image

    shot = tmp_path / "report.png"
    report = analysed / "report.html"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
           "--window-size=1200,2400", f"--screenshot={shot}",
           report.as_uri()]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console  # a clean console: no script errors, no failed loads
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape[0] >= 2000 and img.std() > 20  # text, tables and figures, not a blank page
    # the top of the page holds the comparison table: dark text on white
    assert (img[:400] < 100).mean() > 0.005


def test_chimerax_scene_places_particles_as_the_star_says(analysed):
    run = analysed / "classify"
    pl = read_placements(run / "particles.star")
    scenes = sorted((run / "analysis" / "chimerax").glob("*.cxc"))
    assert len(scenes) == len(set(pl.tomogram))
    vol, apix = read_volume(run / "class_001_map.mrc")
    centre = np.full(3, vol.shape[-1] / 2 * apix)
    for scene in scenes:
        t = scene.stem
        sel = np.flatnonzero(pl.tomogram == t)
        mats = parse_chimerax_matrices(scene)
        assert sorted(mats) == list(range(1, len(sel) + 1))
        pos = absolute_positions_A(pl.position_A[sel], pl.tomogram_size_A[sel])
        for model, i in enumerate(range(len(sel)), start=1):
            m = mats[model]
            np.testing.assert_allclose(m[:, :3], pl.rotation[sel[i]], atol=1e-5)
            np.testing.assert_allclose(m[:, 3] + m[:, :3] @ centre, pos[i], atol=1e-3)  # the map centre lands on p
        text = scene.read_text()
        assert text.count("\nopen ") == len(sel) and "view matrix models #1," in text


def test_state_stars_read_back_whole_and_reconstruct_the_class_map(analysed):
    run, source = analysed / "classify", analysed / "dataset" / "smoke_particles.star"
    src = starfile.read(source)["particles"]
    sub = run / "subsets" / "class_001_optimisation_set.star"
    assert sub.is_file()
    ds = read_relion5(sub)
    written = starfile.read(run / "subsets" / "class_001_particles.star")["particles"]
    assert set(src.columns) <= set(written.columns)
    rows = src.set_index("rlnTomoParticleName").loc[written["rlnTomoParticleName"]]
    for col in src.columns.drop(["rlnTomoParticleName", "rlnImageName"]):
        assert (rows[col].astype(str).to_numpy() == written[col].astype(str).to_numpy()).all(), col
    # image paths are rewritten relative to the new star, and still name the same files
    src_dir, new_dir = source.parent, sub.parent
    assert [(src_dir / a).resolve() for a in rows["rlnImageName"]] == [
        (new_dir / b).resolve() for b in written["rlnImageName"]
    ]
    rec = reconstruct(ds)
    cmap, apix = read_volume(run / "class_001_map.mrc")
    c = fsc(rec.full, cmap)
    freq = shell_frequencies(cmap.shape[-1], apix)
    band = (freq > 0) & (freq <= 1 / rec.resolution)
    assert float(c[band].min()) >= 0.9


def test_bad_run_folders_get_one_line_errors(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["analyze", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "not a folder" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["analyze", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no result.json" in r.output
    r = runner.invoke(app, ["analyze", str(tmp_path / "empty"), str(tmp_path / "empty")])
    assert r.exit_code == 2 and "--out" in r.output
    r = runner.invoke(app, ["analyze", str(tmp_path / "empty"), "--shuffles", "5"])
    assert r.exit_code == 2 and "--shuffles" in r.output


def test_select_writes_the_chosen_classes_for_the_next_job(analysed, tmp_path):
    run = analysed / "classify"
    r = CliRunner().invoke(app, ["analyze", str(run), "--out", str(tmp_path / "sel"), "--select", "2",
                                 "--shuffles", "19"])  # fmt: skip
    assert r.exit_code == 0, r.output
    sel = json.loads((tmp_path / "sel" / "result.json").read_text())["selection"]
    labels = starfile.read(run / "particles.star")["particles"]
    want = labels.loc[labels["rlnClassNumber"] == 2, "rlnTomoParticleName"].tolist()
    ds = read_relion5(sel["particles"])
    assert sel["n"] == len(want) and sorted(ds.names) == sorted(want)
    assert "selected classes [2]" in (tmp_path / "sel" / "report.html").read_text()


def test_landscape_paths_and_latent_region_selection(analysed, tmp_path):
    import pandas as pd

    land = analysed / "landscape"
    r = CliRunner().invoke(app, ["analyze", str(land), "--out", str(tmp_path / "a"), "--shuffles", "19",
                                 "--path", "c1:c2", "--select-latent", "z0>0"])  # fmt: skip
    assert r.exit_code == 0, r.output
    # the path runs from cluster 1's centre map to cluster 2's, as the landscape wrote them
    for step, k in ((0, 1), (6, 2)):
        got = read_volume(tmp_path / "a" / f"path_1_{step:02d}.mrc")[0]
        want = read_volume(land / f"class_{k:03d}_centre.mrc")[0]
        assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    sel = json.loads((tmp_path / "a" / "result.json").read_text())["selection"]
    z = pd.read_csv(land / "latent.csv")
    assert sel["n"] == int((z["z0"] > 0).sum()) and 0 < sel["n"] < len(z)
    assert "Maps along the path c1 -&gt; c2" in (tmp_path / "a" / "report.html").read_text()
    r = CliRunner().invoke(app, ["analyze", str(land), "--out", str(tmp_path / "b"), "--path", "c1:c9"])
    assert r.exit_code == 2 and "no cluster 9" in r.output


def test_class_maps_that_differ_only_by_noise_are_flagged(analysed):
    """A random split of one class is not distinct; two true states are (the 'choose K' evidence)."""
    import torch

    from tomohet.analysis.distinct import pairwise_distinctness, supported_classes

    torch.manual_seed(0)
    run = analysed / "classify"
    ds = read_relion5(run / "optimisation_set.star")
    labels = starfile.read(run / "particles.star")["particles"]["rlnClassNumber"].to_numpy()
    one = np.flatnonzero(labels == 1)
    np.random.default_rng(0).shuffle(one)
    groups = {1: np.sort(one[::2]), 2: np.sort(one[1::2]), 3: np.flatnonzero(labels == 2)}
    halves = {k: (lambda r: (r.half1, r.half2))(reconstruct(ds, idx)) for k, idx in groups.items()}
    rows = {r["classes"]: r for r in pairwise_distinctness(halves, ds.pixel_size)}
    assert not rows["1-2"]["distinct"] and rows["1-3"]["distinct"] and rows["2-3"]["distinct"]
    assert supported_classes(list(rows.values()), [1, 2, 3]) == 2
    html = (run / "analysis" / "report.html").read_text()
    assert "Do the class maps differ beyond their noise?" in html


def test_warp_v1_run_is_analysed_without_in_situ_part(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["simulate", "--preset", "smoke", "--out", str(tmp_path / "d"), "--n-particles", "60",
                            "--seed", "3", "--warp-v1"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["classify", str(tmp_path / "d" / "smoke_warp_v1.star"), "--out", str(tmp_path / "c"),
                            "-K", "2", "--iterations", "2"])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["analyze", str(tmp_path / "c"), "--shuffles", "19"])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "c" / "analysis" / "report.html").read_text()
    assert "Populations" in html and "No in-situ views" in html and "Spatial statistics" not in html


def test_min_confidence_keeps_only_confident_particles(analysed, tmp_path):
    run = analysed / "classify"
    table = starfile.read(run / "particles.star")["particles"]
    cut = float(np.median(table["rlnMaxValueProbDistribution"]))
    r = CliRunner().invoke(app, ["analyze", str(run), "--out", str(tmp_path / "s"), "--shuffles", "19",
                                 "--min-confidence", str(cut)])  # fmt: skip
    assert r.exit_code == 0, r.output
    sel = json.loads((tmp_path / "s" / "result.json").read_text())["selection"]
    assert sel["confidence"] == "rlnMaxValueProbDistribution"
    assert sel["n"] == int((table["rlnMaxValueProbDistribution"] >= cut).sum())


def test_analyze_reuses_the_runs_own_umap(tmp_path):
    """``latent_umap.csv`` written by ``landscape`` is read back in the order of the particles (not recomputed);
    a file that misses a particle is not used."""
    from tomohet.analysis.analyze import _saved_umap

    pd.DataFrame({"rlnTomoParticleName": ["b", "a", "c"], "umap0": [2.0, 1.0, 3.0],
                  "umap1": [20.0, 10.0, 30.0]}).to_csv(tmp_path / "latent_umap.csv", index=False)  # fmt: skip
    xy = _saved_umap(tmp_path, ["a", "b", "c"])
    assert np.array_equal(xy, [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    assert _saved_umap(tmp_path, ["a", "d"]) is None
    assert _saved_umap(tmp_path / "missing", ["a"]) is None

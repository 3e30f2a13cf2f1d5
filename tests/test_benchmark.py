"""``tomohet benchmark``: one metric path for tomohet and peers (each adapter's reader fed a known peer output),
the measured runner (time, memory, time limit), resume, the leaderboard, and the command's errors."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from tomohet.benchmark.datasets import PreparedDataset
from tomohet.benchmark.measure import run_measured
from tomohet.benchmark.metrics import adjusted_rand_index, rare_state_f1
from tomohet.benchmark.peers import get_peer
from tomohet.benchmark.scoring import DROPPED, CellOutput, read_run_folder, score_output
from tomohet.benchmark.suites import SUITES, DatasetSpec, Suite
from tomohet.data.mrc import write_volume


def _prep(states=None, coordinate=None, oracle=None, n=40) -> PreparedDataset:
    names = [f"TS_01/{i + 1}" for i in range(n)]
    truth = pd.DataFrame({"rlnTomoParticleName": names,
                          "state": states if states is not None else np.zeros(n, int)})  # fmt: skip
    if coordinate is not None:
        truth["coordinate"] = coordinate
    spec = DatasetSpec("toy", classes=len(np.unique(states)) if states is not None else None)
    return PreparedDataset(spec, Path("."), Path("."), Path("x.star"), names, truth, None, n * 41, 10.0, 8, oracle)


def test_scores_labels_and_left_out_particles_as_the_metrics_say():
    rng = np.random.default_rng(0)
    states = np.repeat([0, 1, 2], [20, 12, 8])
    prep = _prep(states, oracle={"discrete": {"ari": 0.9, "rarest_state_f1": 0.95}})
    labels = states.copy()
    flip = rng.choice(40, 6, replace=False)
    labels[flip] = (labels[flip] + 1) % 3
    order = rng.permutation(40)  # the peer lists particles in its own order, and left out two of them
    kept = order[2:]
    out = CellOutput([prep.names[i] for i in kept], labels[kept])
    s = score_output(out, prep)
    expected = labels.copy()
    expected[order[:2]] = DROPPED
    assert s["ari"] == pytest.approx(adjusted_rand_index(states, expected))
    assert s["rare_state_f1"] == pytest.approx(rare_state_f1(states, expected, 2)["f1"])
    assert s["n_left_out"] == 2
    assert s["oracle_ari"] == 0.9 and s["ari_gap_to_oracle"] == pytest.approx(0.9 - s["ari"])


def test_latents_on_a_discrete_set_are_clustered_and_on_a_continuous_set_pca_ordered():
    rng = np.random.default_rng(1)
    states = np.repeat([0, 1], 20)
    z = np.c_[rng.normal(0, 0.05, 40), states * 3.0 + rng.normal(0, 0.1, 40)]  # the states on the 2nd axis
    s = score_output(CellOutput(_prep(states).names, latents=z), _prep(states))
    assert s["ari"] == pytest.approx(1.0) and s["labels_from"].startswith("k-means")
    coord = np.linspace(0, 1, 40)
    # the coordinate lies along the 5th latent axis, the one of largest variance: found after PCA ordering
    z = rng.normal(0, 0.05, (40, 6))
    z[:, 4] = 10 * coord
    prep = _prep(coordinate=coord, oracle={"continuous": {"spearman_abs": 0.99}})
    s = score_output(CellOutput(prep.names, latents=z), prep)
    assert s["spearman_abs"] == pytest.approx(1.0)
    assert s["spearman_gap_to_oracle"] == pytest.approx(-0.01)


def test_relion_reader_reads_its_last_iteration_and_class_maps(tmp_path):
    states = np.repeat([0, 1], 20)
    prep = _prep(states)
    labels = states[::-1].copy()  # RELION's class numbers are arbitrary: ARI is still 1
    labels[:3] = 1 - labels[:3]
    parts = pd.DataFrame({"rlnImageName": [f"Subtomograms/a/{i}_subtomo.mrc" for i in range(40)],
                          "rlnTomoParticleName": prep.names, "rlnClassNumber": labels + 1})  # fmt: skip
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [10.0]})
    starfile.write({"optics": optics, "particles": parts.iloc[::-1]}, tmp_path / "run_it007_data.star")
    starfile.write({"optics": optics, "particles": parts.assign(rlnClassNumber=1)}, tmp_path / "run_it006_data.star")
    for c in (1, 2):
        write_volume(tmp_path / f"run_it007_class{c:03d}.mrc", torch.full((8, 8, 8), float(c)), 10.0)
    out = get_peer("relion31").read(tmp_path, prep)
    s = score_output(out, prep)
    assert s["ari"] == pytest.approx(adjusted_rand_index(states, labels))
    assert out.class_maps.shape == (2, 8, 8, 8) and float(out.class_maps[1].mean()) == 2.0


@pytest.mark.parametrize("peer, z_file", [("cryodrgn_et", "z.pkl"), ("tomodrgn", "z.train.pkl")])
def test_cryodrgn_family_readers_put_latents_back_on_their_particles(tmp_path, peer, z_file):
    states = np.repeat([0, 1], 20)
    prep = _prep(states)
    kept = prep.names[5:][::-1]  # particles with too few tilts were left out; the rest in the star's order
    z = np.array([[0.0, 5.0 * states[prep.names.index(n)]] for n in kept])
    (tmp_path / "train_vae").mkdir()
    with open(tmp_path / "train_vae" / z_file, "wb") as fh:
        pickle.dump(z.astype(np.float32), fh)
    (tmp_path / "kept.txt").write_text("\n".join(kept) + "\n")
    out = get_peer(peer).read(tmp_path, prep)
    s = score_output(out, prep)
    expected = states.copy()
    expected[:5] = DROPPED
    assert s["n_left_out"] == 5
    assert s["ari"] == pytest.approx(adjusted_rand_index(states, expected))


def test_a_peer_that_is_not_installed_says_why_and_how(tmp_path):
    peer = get_peer("cryodrgn_et", path=str(tmp_path / "no_venv"))
    reason = peer.unavailable()
    assert "not found" in reason and "--peer-path cryodrgn_et" in reason
    assert "pip install" in peer.install_command() and "torch==2.13.0" in peer.install_command()
    assert get_peer("relion31", path=str(tmp_path / "relion_refine")).unavailable() is not None


def test_run_measured_reports_time_memory_and_enforces_the_limit(tmp_path):
    code = "import time, numpy as np; a = np.ones(60_000_000); time.sleep(0.3); print('done')"
    m = run_measured([sys.executable, "-c", code], tmp_path / "a.log")
    assert m.returncode == 0 and "done" in (tmp_path / "a.log").read_text()
    assert m.peak_rss_mb > 450  # 480 MB of ones
    assert m.wall_s >= 0.3 and m.cpu_s > 0
    big = np.ones(80_000_000)  # 640 MB in this process: a child must not be charged for it
    m = run_measured([sys.executable, "-c", "import time; time.sleep(0.5)"], tmp_path / "c.log")
    assert big[0] == 1 and m.peak_rss_mb < 200
    m = run_measured([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "b.log", timeout_s=1)
    assert m.timed_out and m.returncode != 0 and m.wall_s < 20


def test_read_run_folder_takes_classify_labels_and_class_maps(tmp_path):
    names = ["TS_01/1", "TS_01/2", "TS_02/1"]
    parts = pd.DataFrame({"rlnTomoParticleName": names, "rlnClassNumber": [2, 1, 2]})
    starfile.write({"particles": parts}, tmp_path / "particles.star")
    write_volume(tmp_path / "class_001_map.mrc", torch.zeros(4, 4, 4), 1.0)
    write_volume(tmp_path / "class_002_map.mrc", torch.ones(4, 4, 4), 1.0)
    out = read_run_folder(tmp_path)
    assert out.names == names and out.labels.tolist() == [1, 0, 1]
    assert out.class_maps.shape == (2, 4, 4, 4)


def test_runner_end_to_end_resumes_and_writes_the_leaderboard(tmp_path):
    from tomohet.benchmark.leaderboard import write_leaderboard
    from tomohet.benchmark.runner import run_suite

    suite = Suite("test", "", (DatasetSpec("smoke_n60", "smoke", 60, classes=2),), ("em2d",), ("cryodrgn_et",))
    paths = {"cryodrgn_et": str(tmp_path / "missing_venv")}
    messages: list[str] = []
    records = run_suite(suite, tmp_path / "b", peer_paths=paths, threads=1, log=messages.append)
    by = {r["method"]: r for r in records}
    assert by["em2d"]["status"] == "ok" and by["em2d"]["scores"]["ari"] == pytest.approx(1.0)
    assert by["em2d"]["scores"]["oracle_ari"] == pytest.approx(1.0)
    assert by["em2d"]["peak_rss_mb"] > 100 and by["em2d"]["wall_s"] > 1
    assert "classify" in by["em2d"]["command"] and by["em2d"]["machine"]["cpus"] >= 1
    assert by["cryodrgn_et"]["status"] == "skipped" and "pip install" in by["cryodrgn_et"]["install"]
    # the method ran on a blind copy: no ground truth where it looked, so its own result.json has no metrics
    run = json.loads((tmp_path / "b" / "runs" / "smoke_n60" / "em2d" / "result.json").read_text())
    assert "metrics" not in run
    first = (tmp_path / "b" / "cells" / "smoke_n60__em2d.json").read_text()
    messages.clear()
    run_suite(suite, tmp_path / "b", peer_paths=paths, threads=1, log=messages.append)
    assert any("em2d: done before" in m for m in messages)
    assert (tmp_path / "b" / "cells" / "smoke_n60__em2d.json").read_text() == first
    files = write_leaderboard(tmp_path / "b")
    md = files["markdown"].read_text()
    assert "oracle (true maps)" in md and "| em2d | 1.000 |" in md and "skipped" in md
    html = files["html"].read_text()
    assert "<table>" in html and "data:image/png;base64" in html and "http" not in html.split("<body>")[1][:200]


def test_suites_are_well_formed():
    for suite in SUITES.values():
        assert suite.datasets and suite.methods
        for d in suite.datasets:
            assert d.preset and d.n_particles
    assert {d.kind for d in SUITES["full"].datasets} == {"discrete", "continuous"}


def test_benchmark_command_rejects_bad_options(tmp_path):
    from typer.testing import CliRunner

    from tomohet.cli.main import app

    r = CliRunner().invoke(app, ["benchmark", "--suite", "huge", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown suite 'huge'" in r.output
    r = CliRunner().invoke(app, ["benchmark", "--peer-path", "relion", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "NAME=PATH" in r.output
    r = CliRunner().invoke(app, ["benchmark", "--methods", "em9", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "unknown name 'em9'" in r.output


def test_perf_suite_measures_operations_in_their_own_processes_and_resumes(tmp_path):
    from tomohet.benchmark.perf import run_perf

    run_perf(tmp_path, threads=1, log=lambda m: None, boxes=(32,), operations=("project", "insert"))
    records = json.loads((tmp_path / "perf.json").read_text())["records"]
    assert [(r["operation"], r["status"]) for r in records] == [("project", "ok"), ("insert", "ok")]
    for r in records:
        assert r["images"] == 256 and r["images_per_s"] > 10 and 50 < r["peak_rss_mb"] < 4000
    assert "| project | 32 |" in (tmp_path / "perf.md").read_text()
    before = (tmp_path / "perf.json").read_text()
    run_perf(tmp_path, threads=1, log=lambda m: None, boxes=(32,), operations=("project", "insert"))
    assert (tmp_path / "perf.json").read_text() == before  # nothing measured again


def test_a_users_dataset_joins_blind_with_its_truth_and_oracle(tmp_path):
    """``--dataset FOLDER``: K from its ground truth, a blind copy of its files (the truth left out, the user's
    folder untouched), the oracle from its dataset.json."""
    from tomohet.benchmark.datasets import prepare_dataset
    from tomohet.benchmark.suites import user_dataset
    from tomohet.simulate.datasets import simulate_preset

    folder = tmp_path / "mine"
    simulate_preset("smoke", folder, n_particles=30)
    before = sorted(p.name for p in folder.iterdir())
    spec = user_dataset(folder)
    assert spec.classes == 2 and spec.kind == "discrete"
    prep = prepare_dataset(spec, tmp_path / "b" / spec.name, log=lambda m: None)
    blind = {p.name for p in (tmp_path / "b" / spec.name / "input").iterdir()}
    assert "ground_truth.csv" not in blind and "dataset.json" not in blind and prep.input.name in blind
    assert prep.oracle["discrete"]["ari"] == pytest.approx(1.0) and len(prep.names) == 30
    assert sorted(p.name for p in folder.iterdir()) == before
    (folder / "ground_truth.csv").unlink()
    with pytest.raises(Exception, match="ground_truth.csv"):
        user_dataset(folder)

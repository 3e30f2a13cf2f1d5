"""``tomohet landscape`` outputs (run_landscape called directly): files, maps along components, clusters written
as classify writes them, metrics against the ground truth, and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tomohet.cli.landscape import run_landscape
from tomohet.data.io import read_any
from tomohet.data.mrc import read_volume, write_volume
from tomohet.data.star import read_star
from tomohet.errors import InputError
from tomohet.simulate.datasets import simulate_preset


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    layout, truth = simulate_preset("smoke", out, seed=2, n_particles=64, snr=0.5, acquisition={"tilt_step": 10.0})
    return layout.optimisation_set, truth


def test_landscape_outputs_and_clusters(smoke, tmp_path):
    oset, truth = smoke
    out = tmp_path / "land"
    res = run_landscape(oset, out, components=3, clusters=2, iterations=3, seed=0)
    ds = read_any(oset)
    # latent.csv: every particle, in input order, by name, then z0..z2
    lat = pd.read_csv(out / "latent.csv")
    assert list(lat.columns) == ["rlnTomoParticleName", "z0", "z1", "z2"]
    assert lat["rlnTomoParticleName"].astype(str).tolist() == list(ds.names)
    assert (pd.read_csv(out / "latent_sd.csv").iloc[:, 1:].to_numpy() > 0).all()
    # maps along a component: 7 steps over +-2 sd of its latent, linear in the component map
    mean, apix = read_volume(out / "mean.mrc")
    comp, _ = read_volume(out / "component_00.mrc")
    assert apix == pytest.approx(ds.pixel_size)
    ends = [read_volume(out / f"component_00_along_{s:02d}.mrc")[0] for s in (0, 3, 6)]
    sd = lat["z0"].std(ddof=0)
    assert torch.allclose(ends[1], mean + float(lat["z0"].mean()) * comp, atol=1e-4)
    assert torch.allclose(ends[2] - ends[0], 4 * sd * comp, atol=1e-4 * float(comp.abs().max() * sd + 1))
    ev = pd.read_csv(out / "explained_variance.csv")
    assert len(ev) == 3 and (np.diff(ev["explained_variance"]) <= 1e-9).all()
    assert ev["explained_variance"].to_numpy() == pytest.approx(
        lat[["z0", "z1", "z2"]].var(ddof=1).to_numpy(), rel=1e-3
    )
    for f in ("explained_variance.png", "latent_scatter.png", "tomohet.log", "clusters.csv", "class_001_map.mrc",
              "class_002_half1.mrc", "class_001_fsc.csv", "class_001_centre.mrc", "latent_embedding.png",
              "variability_mask.mrc"):  # fmt: skip
        assert (out / f).exists(), f
    emb = pd.read_csv(out / "latent_umap.csv")  # UMAP of the 3 latents, one row per particle
    assert list(emb.columns) == ["rlnTomoParticleName", "umap0", "umap1"] and len(emb) == ds.n_particles
    assert np.isfinite(emb[["umap0", "umap1"]].to_numpy()).all() and emb["umap0"].std() > 0
    # clusters as classify writes classes: every input row with rlnClassNumber, subsets per cluster
    parts = read_star(out / "particles.star")["particles"]
    clusters = pd.read_csv(out / "clusters.csv")
    assert len(parts) == ds.n_particles and parts["rlnTomoParticleName"].astype(str).tolist() == list(ds.names)
    assert res["clusters"]["class_number_from"] == "xd"  # ppca: clusters through each particle's likelihood
    assert (parts["rlnClassNumber"].to_numpy() == clusters["xd"].to_numpy()).all()
    assert (parts["tomohetKmeansClassNumber"].to_numpy() == clusters["kmeans"].to_numpy()).all()
    sizes = [c["n"] for c in res["clusters"]["classes"]]
    assert sum(sizes) == ds.n_particles
    for c in res["clusters"]["classes"]:
        sub = read_star(out / "subsets" / f"class_{c['class']:03d}_particles.star")["particles"]
        assert len(sub) == c["n"]
    # the two states are found at this SNR, next to the oracle's figure
    m = res["metrics"]
    assert m["clusters_xd"]["ari"] > 0.8 and m["clusters_kmeans"]["ari"] > 0.8 and m["oracle_discrete"]["ari"] > 0.9
    assert res["timings_s"]["landscape"] > 0 and res["peak_memory_mb"] > 0 and res["method"] == "ppca"
    # the anonymous peak (heap and tensors, sampled) leaves out the mapped stacks' pages the peak RSS counts
    assert 50 < res["peak_anonymous_memory_mb"] <= res["peak_memory_mb"] + 1
    assert res["images_per_s_per_iteration"] > 0 and len(res["iterations"]) == 3


def test_landscape_resumes_from_checkpoint(smoke, tmp_path):
    """An interrupted run resumes from checkpoint.pt and ends where an uninterrupted run with the same seed ends."""
    oset, _ = smoke
    first = run_landscape(oset, tmp_path / "r", components=2, iterations=1, seed=1, oracle=False)
    assert (tmp_path / "r" / "checkpoint.pt").exists()
    more = run_landscape(oset, tmp_path / "r", components=2, iterations=2, seed=1, oracle=False)
    assert [e["iteration"] for e in more["iterations"]] == [1, 2]
    assert more["iterations"][0] == first["iterations"][0]  # iteration 1 comes from the checkpoint
    fresh = run_landscape(oset, tmp_path / "f", components=2, iterations=2, seed=1, oracle=False)
    a = pd.read_csv(tmp_path / "r" / "latent.csv").iloc[:, 1:].to_numpy()
    b = pd.read_csv(tmp_path / "f" / "latent.csv").iloc[:, 1:].to_numpy()
    assert np.allclose(a, b, atol=1e-5 * np.abs(b).max())
    assert fresh["explained_variance"] == pytest.approx(more["explained_variance"], rel=1e-5)


def test_landscape_bad_input(smoke, tmp_path):
    oset, _ = smoke
    with pytest.raises(InputError, match="unknown landscape method 'nope'"):
        run_landscape(oset, tmp_path / "a", method="nope")
    with pytest.raises(InputError, match=r"--components.*at least 1"):
        run_landscape(oset, tmp_path / "b", components=0)
    mask = tmp_path / "mask.mrc"
    write_volume(mask, torch.ones(16, 16, 16), 12.0)
    with pytest.raises(InputError, match="mask box 16 differs from the particles' 32"):
        run_landscape(oset, tmp_path / "c", focus_mask=mask)
    from tomohet.data.subtomo import write_relion31_subtomograms

    ds = read_any(oset)
    star = write_relion31_subtomograms(ds, tmp_path / "sub", particles=np.arange(4))
    with pytest.raises(InputError, match="works on 2D tilt-series stacks, but this input holds 3D subtomograms"):
        run_landscape(star, tmp_path / "d", method="ppca")

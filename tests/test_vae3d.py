"""The subtomogram VAE (``landscape --method vae3d``): sectors, the per-sector statistics against the weighted
likelihood they stand for, accuracy on 2D stacks and on RELION 3.1 subtomograms (the hinge, a 2-state set), the
landscape outputs, and a resumed run that ends with the latents of an uninterrupted one."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score

from tomohet.cli.landscape import run_landscape
from tomohet.data.io import read_any
from tomohet.methods.landscape import cluster_latents
from tomohet.methods.subtomo_ppca import SubtomoPPCA, sector_index
from tomohet.methods.vae3d import VAE3DOptions, fit_vae3d
from tomohet.physics.bands import VolumeBand
from tomohet.simulate.datasets import simulate_preset


@pytest.fixture(scope="module")
def hinge(tmp_path_factory):
    out = tmp_path_factory.mktemp("hinge_vae3d")
    layout, truth = simulate_preset("hinge", out, seed=0, n_particles=200, snr=0.5,
                                    acquisition={"tilt_step": 6.0, "box": 24, "pixel_size": 16.0})  # fmt: skip
    return out, layout.optimisation_set, truth["coordinate"].to_numpy()


def best_rho(latents: np.ndarray, angle: np.ndarray) -> float:
    return max(abs(spearmanr(latents[:, i], angle)[0]) for i in range(min(3, latents.shape[1])))


def test_a_tilt_plane_lies_in_one_sector():
    """In the tomogram frame the central slice of a tilt at angle alpha about y holds the frequencies at that
    angle: all of them (and their Friedel mates) fall into the sector of alpha."""
    sectors = 12
    for alpha in (-57.0, -20.0, 3.0, 44.0):
        a = math.radians(alpha)
        u = torch.tensor([math.cos(a), 0.0, -math.sin(a)])  # in the plane, perpendicular to the tilted beam
        beam = torch.tensor([math.sin(a), 0.0, math.cos(a)])
        assert abs(float(u @ beam)) < 1e-6
        s, t = torch.meshgrid(torch.linspace(0.5, 10, 7), torch.linspace(-10, 10, 9), indexing="ij")
        freq = s.reshape(-1, 1) * u + t.reshape(-1, 1) * torch.tensor([0.0, 1.0, 0.0])
        idx = sector_index(freq, sectors)
        assert len(set(idx.tolist())) == 1
        assert torch.equal(idx, sector_index(-freq, sectors))
    every = sector_index(torch.randn(5000, 3), sectors)
    assert set(every.tolist()) == set(range(sectors))


def test_sector_statistics_are_the_weighted_likelihood():
    """Summed over sectors, ``a.b - a.G.a / 2`` differs between two coefficient vectors exactly as the weighted
    log-likelihood ``-1/2 sum_k q_k |r_k - w_k (W a)_k|^2 / w_k`` does (noise variance ``w sigma2`` per voxel)."""
    d, n, n_l = 12, 3, 4
    band = VolumeBand(d, d // 2)
    ds = SimpleNamespace(box=d, n_particles=n)
    opt = SimpleNamespace(n_components=n_l, mask_radius_px=None, kappa_init=0.1)
    model = SubtomoPPCA(ds, opt, SimpleNamespace(band=band), sectors=8)
    gen = torch.Generator().manual_seed(0)
    p = band.size
    w = torch.rand(n, p, generator=gen, dtype=torch.float64) + 0.1
    data = torch.complex(torch.randn(n, p, generator=gen, dtype=torch.float64),
                         torch.randn(n, p, generator=gen, dtype=torch.float64))  # fmt: skip
    mu = torch.complex(torch.randn(1, p, generator=gen, dtype=torch.float64), torch.zeros(1, p, dtype=torch.float64))
    basis = torch.complex(torch.randn(1, n_l, p, generator=gen, dtype=torch.float64),
                          torch.randn(1, n_l, p, generator=gen, dtype=torch.float64))  # fmt: skip
    q = band.mult / (0.5 + band.shell.double())
    bsec, gsec, _ = model._sector_statistics(data, w, mu, basis, q)
    b, g = bsec.sum(1), gsec.sum(1)
    r = data - w * mu

    def loglik(a):
        fit = torch.einsum("nl,lp->np", a.to(torch.complex128), basis[0])
        return -0.5 * (q * (r - w * fit).abs() ** 2 / w).sum(1)

    def quad(a):
        return (a * b).sum(1) - 0.5 * torch.einsum("ni,nij,nj->n", a, g, a)

    a1, a2 = torch.randn(n, n_l, generator=gen, dtype=torch.float64), torch.randn(n, n_l, generator=gen,
                                                                                  dtype=torch.float64)  # fmt: skip
    assert torch.allclose(loglik(a1) - loglik(a2), quad(a1) - quad(a2), rtol=1e-9)


def test_vae3d_on_stacks_and_on_relion31_subtomograms(hinge, tmp_path):
    """The hinge angle is the main latent axis, from 2D stacks made into subtomograms and from the RELION 3.1
    subtomograms (3D CTF volumes, rotated tomogram frame) of the same particles; the landscape outputs."""
    from tomohet.data.subtomo import write_relion31_subtomograms

    out, oset, angle = hinge
    res = run_landscape(oset, tmp_path / "stacks", method="vae3d", components=2, iterations=8, seed=0,
                        class_maps=False, method_options={"basis": 4, "basis_epochs": 5})  # fmt: skip
    lat = pd.read_csv(tmp_path / "stacks" / "latent.csv")
    assert best_rho(lat[["z0", "z1"]].to_numpy(), angle) >= 0.9
    assert (tmp_path / "stacks" / "decoder.pt").exists()
    assert [e["stage"] for e in res["iterations"]] == ["ppca"] * 3 + ["vae"] * 2 + ["networks"] * 3
    assert res["input"] == "2D stacks inserted" and res["sectors"] == 12
    assert all(e["gain_held_out"] is not None for e in res["iterations"][3:])
    keep = np.arange(120)
    star = write_relion31_subtomograms(read_any(oset), Path(out) / "subtomograms", particles=keep)
    sub = read_any(star)
    r3 = fit_vae3d(sub, VAE3DOptions(n_components=2, basis=4, n_iter=8, basis_epochs=5))
    assert r3.method == "vae3d" and r3.extra["input"] == "subtomograms"
    assert r3.latents.shape == (len(keep), 2)
    assert best_rho(r3.latents, angle[keep]) >= 0.9


def test_vae3d_finds_two_states_and_resumes_to_the_same_latents(tmp_path):
    layout, truth = simulate_preset("smoke", tmp_path / "data", seed=3, n_particles=96, snr=0.3,
                                    acquisition={"tilt_step": 10.0})  # fmt: skip
    ds = read_any(layout.optimisation_set)
    opt = VAE3DOptions(n_components=2, basis=4, n_iter=8, basis_epochs=5, seed=1)
    ref = fit_vae3d(ds, opt)
    assert adjusted_rand_score(truth["state"], cluster_latents(ref.latents, 2, "kmeans", 0)) >= 0.95
    ckpt = tmp_path / "checkpoint.pt"
    fit_vae3d(ds, VAE3DOptions(n_components=2, basis=4, n_iter=4, basis_epochs=5, seed=1), checkpoint=ckpt)
    resumed = fit_vae3d(ds, opt, checkpoint=ckpt)
    assert resumed.extra["resumed_from_iteration"] == 4
    assert np.allclose(ref.latents, resumed.latents, atol=1e-5)


def test_vae3d_options_are_checked(hinge):
    _, oset, _ = hinge
    ds = read_any(oset)
    with pytest.raises(ValueError, match="sectors must be at least 4"):
        fit_vae3d(ds, VAE3DOptions(sectors=2))
    with pytest.raises(ValueError, match="held_out"):
        fit_vae3d(ds, VAE3DOptions(held_out=0.6))

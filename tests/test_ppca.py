"""Tilt-space PPCA: recovery of a planted low-rank basis, latents independent of missing tilts, focus masks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tomohet.data.model import ArrayImageSource
from tomohet.data.relion5 import read_relion5
from tomohet.methods.landscape import LANDSCAPE_METHODS, cluster_latents, maps_along_component
from tomohet.methods.ppca import PPCAOptions, fit_ppca, infer_latents
from tomohet.physics.filters import lowpass
from tomohet.physics.projector import VolumeProjector
from tomohet.simulate.acquisition import Acquisition, clean_images, write_geometry

D, APIX = 32, 12.0


def blob(c, s):
    k = torch.arange(D, dtype=torch.float32) - D // 2
    z, y, x = torch.meshgrid(k, k, k, indexing="ij")
    return torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s**2))


def dataset_of_maps(out: Path, maps: torch.Tensor, weights: np.ndarray, noise: float, seed: int = 0, tilt_step=10.0):
    """Particles whose maps are ``sum_k weights[i, k] maps[k]`` (a linear model), imaged with the simulator's
    geometry and forward model (CTF, exposure, tilts), plus white noise of ``noise`` x the signal's std."""
    n = len(weights)
    acq = Acquisition(box=D, pixel_size=APIX, tilt_step=tilt_step, n_tomograms=2)
    oset, _ = write_geometry(out, "lin", n, acq, np.random.default_rng(seed))
    ds = read_relion5(oset)
    ds.images = ArrayImageSource(torch.zeros(n, ds.n_tilts, D, D))
    proj = VolumeProjector(maps, oversampling=2)
    imgs = torch.zeros(n, ds.n_tilts, D, D)
    for s in range(0, n, 32):
        idx = np.arange(s, min(n, s + 32))
        b = ds.batch(idx)
        clean, _ = clean_images(proj, b, b.rotations, APIX)  # [K, B, T, D, D]
        imgs[idx] = torch.einsum("kbtyx,bk->btyx", clean, torch.from_numpy(weights[idx]).float())
    gen = torch.Generator().manual_seed(seed)
    imgs = imgs + noise * float(imgs.std()) * torch.randn(imgs.shape, generator=gen)
    ds.images = ArrayImageSource(imgs * ds.visible[..., None, None])
    return ds


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Mean + z1 W1 + z2 W2 (a moving and an appearing density), 80 particles x 13 tilts, near noise-free."""
    mean = blob((0, 0, 0), 4.0) + 0.7 * blob((6, 2, -3), 3.0) + 0.6 * blob((-5, -4, 3), 3.0)
    w1 = 0.5 * (blob((7, 3, -3), 2.5) - blob((5, 1, -3), 2.5))
    w2 = 0.4 * blob((-3, 7, 5), 2.5)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((80, 2))
    ds = dataset_of_maps(tmp_path_factory.mktemp("planted"), torch.stack([mean, w1, w2]), np.c_[np.ones(80), z], 0.1)
    opts = PPCAOptions(n_components=3, n_iter=6, init="random", resolution_limit_A=40.0, seed=0)
    return ds, torch.stack([w1, w2]), z, fit_ppca(ds, opts)


def principal_angles_deg(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    qa, _ = torch.linalg.qr(a.reshape(len(a), -1).double().T)
    qb, _ = torch.linalg.qr(b.reshape(len(b), -1).double().T)
    return np.rad2deg(np.arccos(np.clip(torch.linalg.svdvals(qa.T @ qb).numpy(), -1, 1)))


def test_ppca_recovers_planted_basis(planted):
    ds, w, z, res = planted
    assert "ppca" in LANDSCAPE_METHODS and LANDSCAPE_METHODS["ppca"].inputs == "2d"
    assert res.latents.shape == (ds.n_particles, 3) and res.volumes.shape == (3, D, D, D)
    # the two leading components span the planted basis (compared in the band the method works in)
    truth = torch.stack([lowpass(x, 40.0, APIX) for x in w])
    angles = principal_angles_deg(res.volumes[:2], truth)
    assert angles.max() < 10.0, angles
    # each true latent is a linear function of the recovered ones (canonical correlation)
    x = np.c_[res.latents[:, :2], np.ones(len(z))]
    for k in range(2):
        coef, *_ = np.linalg.lstsq(x, z[:, k], rcond=None)
        assert np.corrcoef(x @ coef, z[:, k])[0, 1] > 0.95
    # the third component explains (almost) nothing: the planted model has rank 2
    ratio = res.extra["explained_variance_ratio"]
    assert ratio[2] < 0.01 and ratio[0] >= ratio[1] >= ratio[2]
    # orthonormal basis, centred latents, map(z) = mean + sum z_l V_l reproduces each particle's fitted map
    gram = res.volumes.reshape(3, -1).double() @ res.volumes.reshape(3, -1).double().T
    assert torch.allclose(gram, torch.eye(3, dtype=torch.float64), atol=1e-4)
    assert np.abs(res.latents.mean(0)).max() < 1e-6 * max(1.0, np.abs(res.latents).max())
    values, maps = maps_along_component(res, 0, steps=7, span_sd=2.0)
    assert np.allclose(values, np.linspace(-2, 2, 7) * res.latents[:, 0].std(), atol=1e-6)
    assert torch.allclose(maps[3], res.extra["mean_map"] + float(values[3]) * res.volumes[0], atol=1e-5)
    # the log-likelihood rises over the iterations (generalised EM)
    ll = [e["log_likelihood"] for e in res.log]
    assert ll[-1] > ll[0] and all(e["images_per_s"] > 0 for e in res.log)


def test_basis_confined_to_where_the_particles_vary(planted):
    """The PCA start's variability mask holds the planted differences: the basis outside it is zero, inside it
    still spans the planted one; the result carries each particle's latent likelihood for xd clusters."""
    ds, w, z, _ = planted
    opts = PPCAOptions(n_components=2, n_iter=3, init="pca", resolution_limit_A=40.0, seed=0)
    res = fit_ppca(ds, opts)
    frac = res.extra["variability_mask_fraction"]
    assert 0.02 < frac < 0.5, frac  # a region around the two changing densities, not the whole particle
    angles = principal_angles_deg(res.volumes, torch.stack([lowpass(x, 40.0, APIX) for x in w]))
    assert angles.max() < 15.0, angles
    free = fit_ppca(ds, dataclasses.replace(opts, confine_basis=False))
    assert "variability_mask_fraction" not in free.extra
    outside = res.extra["variability_mask"] == 0
    assert float(outside.float().mean()) > 0.3  # the mask has a soft edge; beyond it, exactly 0
    assert float(res.volumes[:, outside].abs().max()) == 0.0  # confined: zero wherever the mask is
    assert float(free.volumes[:, outside].abs().mean()) > 0.01 * float(free.volumes.abs().mean())
    info = res.extra["latent_information"]
    assert info["b"].shape == (ds.n_particles, 2) and info["G"].shape == (ds.n_particles, 2, 2)
    labels = cluster_latents(res.latents, 2, "xd", 0, info)
    assert labels.shape == (ds.n_particles,) and set(labels) == {0, 1}


def test_latent_does_not_depend_on_missing_tilts(planted):
    ds, _, _, res = planted
    particles = np.arange(0, 80, 10)
    full, full_sd = infer_latents(ds, res, particles)
    assert np.allclose(full, res.latents[particles], atol=1e-4 * np.abs(res.latents).max())
    rng = np.random.default_rng(1)
    vis = ds.visible.clone()
    for i in particles:  # 30 % of this particle's tilts removed, a different random set each
        vis[i, torch.from_numpy(rng.choice(ds.n_tilts, int(round(0.3 * ds.n_tilts)), replace=False))] = False
    cut = dataclasses.replace(ds, visible=vis)
    part, part_sd = infer_latents(cut, res, particles)
    spread = res.latents[:, :2].std(0)
    assert (part_sd[:, :2] >= full_sd[:, :2] - 1e-9).all()  # less data: more uncertainty
    assert (part_sd[:, :2] < 0.2 * spread).all()  # and still a sharp coordinate
    assert (np.abs(part[:, :2] - full[:, :2]) < 2 * part_sd[:, :2]).all(), (part[:, :2] - full[:, :2]) / part_sd[:, :2]
    # the cut tilts really changed the data: with zeros in place of the missing images (no mask) the latent moves
    zeroed = dataclasses.replace(ds, images=ArrayImageSource(ds.images.images * vis[..., None, None]))
    wrong, _ = infer_latents(zeroed, res, particles)
    assert (np.abs(wrong[:, :2] - full[:, :2]) > 2 * part_sd[:, :2]).any()


def test_cluster_helpers_are_deterministic():
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(0, 0.3, (50, 2)), rng.normal(3, 0.3, (50, 2))]
    for how in ("kmeans", "gmm"):
        a, b = cluster_latents(z, 2, how, 0), cluster_latents(z, 2, how, 0)
        assert (a == b).all() and len(set(a[:50])) == 1 and len(set(a[50:])) == 1 and a[0] != a[-1]


@pytest.mark.slow
def test_focus_mask_excluding_the_moving_domain(tmp_path):
    """A hinge: with the moving lid masked out, no top-3 component follows the hinge angle; without, one does."""
    from tomohet.simulate.phantoms import hinge

    ph = hinge(box=D, pixel_size=APIX, n_maps=7)
    n = 160
    rng = np.random.default_rng(0)
    which = rng.integers(0, 7, n)
    angle = ph.coordinate[which]
    ds = dataset_of_maps(tmp_path, ph.volumes, np.eye(7)[which], noise=1.0)
    opts = PPCAOptions(n_components=3, n_iter=5, init="random", seed=0)
    free = fit_ppca(ds, opts)
    rho_free = max(abs(spearmanr(angle, free.latents[:, k]).statistic) for k in range(3))
    assert rho_free > 0.8
    moving = ph.volumes.std(0)
    moving = lowpass((moving > 0.1 * moving.max()).float(), 30.0, APIX) > 0.02  # the lid, dilated
    focus = (~moving).float()
    masked = fit_ppca(ds, opts, focus_mask=focus)
    assert float((masked.volumes.abs() * moving).sum()) < 1e-6 * float(masked.volumes.abs().sum()) + 1e-6
    rhos = [abs(spearmanr(angle, masked.latents[:, k]).statistic) for k in range(3)]
    assert max(rhos) < 0.3, rhos


@pytest.mark.parametrize("module", ["ppca", "vae", "wmd_pca", "msvd"])
def test_a_landscape_method_module_imports_first(module):
    """Importing a built-in method module before anything else works (the registry loads the built-ins on
    first use, not while one of them is half-way through its own import)."""
    import subprocess
    import sys

    code = f"import tomohet.methods.{module}; from tomohet.methods.landscape import get_method; get_method('vae')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_kappa_is_estimated_for_the_expanded_basis():
    """``basis_power_ratio`` with the expansion ``chol`` equals the ratio computed directly on the expanded basis
    ``w' = chol^T w`` (mean and posterior covariance transformed), and differs from the unexpanded one: estimated
    before the expansion, the prior's shrinkage fed back and ``kappa`` fell every iteration."""
    from tomohet.methods.ppca_pass import basis_power_ratio, latent_expansion

    gen = torch.Generator().manual_seed(0)
    v, n_l = 200, 3
    w = torch.complex(torch.randn(v, n_l, generator=gen, dtype=torch.float64),
                      torch.randn(v, n_l, generator=gen, dtype=torch.float64))  # fmt: skip
    f = torch.randn(v, n_l, n_l, generator=gen, dtype=torch.float64)
    cov = f @ f.transpose(1, 2) * 0.1
    tau = torch.rand(v, generator=gen, dtype=torch.float64) + 0.5
    rng = np.random.default_rng(0)
    z = rng.standard_normal((500, n_l)) * np.array([1.5, 1.2, 0.8]) + 0.3
    eta, chol = latent_expansion(z, np.tile(0.2 * np.eye(n_l), (500, 1, 1)))
    assert np.allclose(eta, z.mean(0))
    assert np.allclose(chol @ chol.T, np.cov(z.T, bias=True) + 0.2 * np.eye(n_l), atol=1e-6)
    c = torch.from_numpy(chol)
    w_exp = torch.stack([sum(w[:, m] * c[m, k] for m in range(n_l)) for k in range(n_l)], 1)  # w'_k = sum_m c_mk w_m
    var_exp = torch.stack([c[:, k] @ cov @ c[:, k] for k in range(n_l)], 1)  # [V, L]
    direct = float(((w_exp.abs() ** 2 + 2 * var_exp) / (2 * tau[:, None])).mean())
    assert basis_power_ratio(w, cov, tau, chol) == pytest.approx(direct, rel=1e-10)
    assert basis_power_ratio(w, cov, tau, None) < 0.8 * direct  # latent variance > 1 here: the expansion grows W

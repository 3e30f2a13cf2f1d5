"""The tilt-series VAE (``landscape --method vae``): the algebra it rests on, accuracy on a small 2-state set,
the landscape outputs, and a run killed with SIGTERM mid-epoch that resumes to the same latents."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from tomohet.cli.landscape import run_landscape
from tomohet.data.io import read_any
from tomohet.data.mrc import read_volume
from tomohet.errors import InputError
from tomohet.methods.ppca_pass import ImageStatistics
from tomohet.methods.vae import VAEOptions, fit_vae, held_out_images, reexpress
from tomohet.methods.vae_net import Decoder, negative_log_likelihood
from tomohet.simulate.datasets import simulate_preset


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_smoke")
    layout, truth = simulate_preset("smoke", out, seed=3, n_particles=96, snr=0.3, acquisition={"tilt_step": 10.0})
    return layout.optimisation_set, truth


def test_reexpressed_statistics_keep_every_image_likelihood():
    """Old coefficients ``a = eta + L a_new``: each image's ``-(r2 - 2 a.b + a.G.a)/2`` is unchanged."""
    gen = torch.Generator().manual_seed(0)
    n, t, k = 5, 7, 4
    x = torch.randn(n, t, k, 6, generator=gen)
    gram = x @ x.transpose(-1, -2)
    b = torch.randn(n, t, k, generator=gen)
    r2 = torch.rand(n, t, generator=gen) * 10 + 20
    stats = ImageStatistics(b, gram, r2, torch.zeros(n, t, dtype=torch.bool))
    eta = np.random.default_rng(1).normal(size=k)
    a0 = np.random.default_rng(2).normal(size=(k, k))
    chol = np.linalg.cholesky(a0 @ a0.T + np.eye(k))
    new = reexpress(stats, eta, chol)
    a_new = torch.randn(n, k, generator=gen)
    a_old = torch.as_tensor(eta, dtype=torch.float32) + a_new @ torch.as_tensor(chol, dtype=torch.float32).T

    def ll(s, a):
        return -(s.r2 - 2 * (s.b * a[:, None]).sum(-1) + torch.einsum("ni,ntij,nj->nt", a, s.gram, a)) / 2

    assert torch.allclose(ll(stats, a_old), ll(new, a_new), rtol=1e-4, atol=1e-3)
    # and the decoder, reparametrised the same way, outputs the new coefficients of the same maps
    dec = Decoder(3, k, hidden=16, layers=1)
    z = torch.randn(10, 3, generator=gen)
    with torch.no_grad():
        before = dec(z)
        dec.reparametrise(eta, chol)
        after = dec(z)
    recon = torch.as_tensor(eta, dtype=torch.float32) + after @ torch.as_tensor(chol, dtype=torch.float32).T
    assert torch.allclose(recon, before, atol=1e-4)
    # the loss is the negative log-likelihood up to a constant: minimised by the least-squares coefficients
    g1 = gram.sum(1)
    b1 = b.sum(1)
    best = torch.linalg.solve(g1, b1[..., None])[..., 0]
    worse = best + 0.1
    assert (negative_log_likelihood(best, b1, g1) < negative_log_likelihood(worse, b1, g1)).all()


def test_held_out_images_are_a_seeded_fraction_of_the_visible_ones():
    vis = np.ones((50, 40), dtype=bool)
    vis[:10, 30:] = False  # missing high tilts
    vis[10] = False
    vis[10, :3] = True  # a particle with 3 images keeps them all
    held = held_out_images(vis, 0.1, seed=4)
    assert not (held & ~vis).any()
    assert held[:10].sum(1).tolist() == [3] * 10 and held[11:].sum(1).tolist() == [4] * 39
    assert held[10].sum() == 0
    assert (held == held_out_images(vis, 0.1, seed=4)).all() and (held != held_out_images(vis, 0.1, seed=5)).any()


def test_vae_finds_two_states_and_writes_the_landscape(two_states, tmp_path):
    oset, truth = two_states
    out = tmp_path / "vae"
    res = run_landscape(oset, out, method="vae", components=2, clusters=2, iterations=6, seed=0,
                        method_options={"basis": 4})  # fmt: skip
    assert res["metrics"]["clusters_kmeans"]["ari"] >= 0.95
    lat = pd.read_csv(out / "latent.csv")
    ds = read_any(oset)
    assert list(lat.columns) == ["rlnTomoParticleName", "z0", "z1"]
    assert lat["rlnTomoParticleName"].astype(str).tolist() == list(ds.names)
    assert lat["z0"].var() >= lat["z1"].var()  # ordered by variance
    # a non-linear landscape: a decoder instead of component maps; maps along each latent axis from it
    assert (out / "decoder.pt").exists() and not (out / "component_00.mrc").exists()
    decoder = torch.load(out / "decoder.pt", weights_only=False)
    along = [read_volume(out / f"component_00_along_{s:02d}.mrc")[0] for s in range(7)]
    sd, mid = lat["z0"].std(ddof=0), lat[["z0", "z1"]].mean().to_numpy()
    point = mid.copy()
    point[0] += 2 * sd
    assert torch.allclose(decoder.maps(point[None])[0], along[6], atol=1e-4)
    # the two ends of the main axis differ where the states differ: more than a random latent jitter does
    assert float((along[6] - along[0]).abs().max()) > 0.05 * float(along[3].abs().max())
    centre = read_volume(out / "class_001_centre.mrc")[0]
    c1 = np.asarray(res["clusters"]["classes"][0]["latent_centre"])
    assert torch.allclose(decoder.maps(c1[None])[0], centre, atol=1e-4)
    # per-epoch log: the PPCA start, then VAE epochs with the held-out gain reported
    stages = [e["stage"] for e in res["iterations"]]
    assert stages[:3] == ["ppca"] * 3 and stages[3:] == ["vae"] * 3
    assert all(e["gain_held_out"] is not None for e in res["iterations"][3:])
    assert res["held_out_fraction"] == pytest.approx(0.1)


def test_vae_options_are_checked(two_states, tmp_path):
    oset, _ = two_states
    with pytest.raises(InputError, match="--basis does not apply to --method ppca"):
        run_landscape(oset, tmp_path / "x", method="ppca", method_options={"basis": 4})
    ds = read_any(oset)
    with pytest.raises(ValueError, match="tilt_keep"):
        fit_vae(ds, VAEOptions(tilt_keep=0.0))


def _cli(oset, out, *extra):
    return [sys.executable, "-m", "tomohet", "landscape", str(oset), "--out", str(out), "--method", "vae",
            "--components", "2", "--basis", "3", "--iterations", "7", "--basis-epochs", "5", *extra]  # fmt: skip


def test_sigterm_mid_epoch_then_resume_gives_the_same_latents(two_states, tmp_path):
    oset, _ = two_states
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_cli(oset, ref), check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli(oset, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 300
    seen = 0.0
    while time.time() < deadline and proc.poll() is None:  # kill it in the 5th epoch (VAE, refining the maps)
        if ckpt.exists() and ckpt.stat().st_mtime != seen:
            seen = ckpt.stat().st_mtime
            state = torch.load(ckpt, weights_only=False)["state"]
            if state["iteration"] >= 4:
                time.sleep(0.3)
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    assert not (out / "latent.csv").exists()
    subprocess.run(_cli(oset, out), check=True, env=env, capture_output=True)
    a = pd.read_csv(ref / "latent.csv")
    b = pd.read_csv(out / "latent.csv")
    assert np.allclose(a[["z0", "z1"]].to_numpy(), b[["z0", "z1"]].to_numpy(), atol=1e-5)
    result = json.loads((out / "result.json").read_text())
    assert [e["stage"] for e in result["iterations"]] == ["ppca"] * 3 + ["vae"] * 2 + ["networks"] * 2
    # early stopping: the networks of the networks-only epoch with the best held-out gain
    best = result["best_epoch"]
    gains = {e["iteration"]: e["gain_held_out"] for e in result["iterations"] if e["stage"] == "networks"}
    assert best in gains and gains[best] == max(gains.values())
    assert result["final_gain_held_out"] == gains[best]

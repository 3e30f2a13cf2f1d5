"""Runs across processes with ``torchrun`` (``tomohet.parallel.TorchDistributedExecutor``, data-parallel training
of the VAE's networks) give the serial run's landscape; mixed precision (bfloat16 autocast) trains the same
landscape; commands that do not run under torchrun say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tomohet.methods.vae_net import Decoder, Encoder, TrainingSettings, train_networks
from tomohet.simulate.datasets import simulate_preset


@pytest.fixture(scope="module")
def two_states(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_smoke")
    layout, _ = simulate_preset("smoke", out, seed=3, n_particles=96, snr=0.3, acquisition={"tilt_step": 10.0})
    return layout.optimisation_set


def _args(oset, out, *extra):
    return ["-m", "tomohet", "landscape", str(oset), "--out", str(out), "--method", "vae", "--components", "2",
            "--basis", "3", "--iterations", "7", "--basis-epochs", "5", "--clusters", "2", *extra]  # fmt: skip


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def test_torchrun_with_two_processes_gives_the_serial_landscape(two_states, tmp_path):
    serial, ddp = tmp_path / "serial", tmp_path / "ddp"
    subprocess.run([sys.executable, *_args(two_states, serial)], check=True, env=_env(), capture_output=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *_args(two_states, ddp)], env=_env(), capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    a, b = (pd.read_csv(d / "latent.csv") for d in (serial, ddp))
    assert a["rlnTomoParticleName"].tolist() == b["rlnTomoParticleName"].tolist()
    # 96 particles are one partition (128), so here the passes run on rank 0 (their split: the map/reduce test
    # below); the networks train on shares of every batch with averaged gradients (DDP): the same latents up to
    # the order of float sums
    za, zb = a[["z0", "z1"]].to_numpy(), b[["z0", "z1"]].to_numpy()
    assert np.abs(za - zb).max() < 1e-3 * za.std()
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (serial, ddp))
    ppca = [e["log_likelihood"] for e in ra["iterations"] if e["stage"] == "ppca"]
    assert ppca == [e["log_likelihood"] for e in rb["iterations"] if e["stage"] == "ppca"]  # bit for bit
    assert rb["metrics"]["clusters_kmeans"]["ari"] == ra["metrics"]["clusters_kmeans"]["ari"] == 1.0
    # one process wrote the outputs: one run log, one set of per-cluster maps, a checkpoint
    assert len((ddp / "tomohet.log").read_text().split("landscape ->")) == 2
    assert (ddp / "checkpoint.pt").exists() and (ddp / "class_002_map.mrc").exists()


_MAP_REDUCE = """
import json, sys
import numpy as np
from tomohet.methods.engine import map_partitions
from tomohet.parallel import TorchDistributedExecutor


class Sums:  # order-sensitive: the particles in the order merged, a float sum
    def __init__(self, particles, total):
        self.particles, self.total = particles, total

    def merge(self, other):
        return Sums(self.particles + other.particles, self.total + other.total)


class Data:
    n_particles = 23

    def chunks(self, size):
        idx = np.arange(self.n_particles)
        return [idx[lo:lo + size] for lo in range(0, self.n_particles, size)]


def step(ds, particles, state, cache=None, progress=None):
    import torch.distributed as dist
    if progress:
        progress(len(particles))
    return Sums([(int(i), dist.get_rank() if dist.is_initialized() else -1) for i in particles],
                float(np.sum(np.sqrt(particles + state))))


ex = TorchDistributedExecutor()
seen = []
out = map_partitions(step, Data(), 0.5, 4, ex, progress=seen.append)
if ex.rank == 0:
    json.dump({"particles": out.particles, "total": out.total, "seen": sum(seen), "size": ex.size},
              open(sys.argv[1], "w"))
ex.close()
"""


def test_map_reduce_across_processes_keeps_the_serial_order(tmp_path):
    """23 particles in partitions of 4 over 2 processes: partitions alternate between the ranks, every process
    merges them in partition order (the serial sum, bit for bit), and progress counts every particle once."""
    script = tmp_path / "map_reduce.py"
    script.write_text(_MAP_REDUCE)
    out = tmp_path / "out.json"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), str(out)], env=_env(), capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["size"] == 2 and got["seen"] == 23
    assert [p for p, _ in got["particles"]] == list(range(23))
    ranks = [r for _, r in got["particles"]]
    assert ranks == [(i // 4) % 2 for i in range(23)]  # partition p on rank p mod 2
    serial = 0.0
    for lo in range(0, 23, 4):
        serial += float(np.sum(np.sqrt(np.arange(lo, min(lo + 4, 23)) + 0.5)))
    assert got["total"] == serial


def test_classify_refuses_torchrun(two_states, tmp_path):
    env = {**_env(), "WORLD_SIZE": "2", "RANK": "0"}
    run = subprocess.run([sys.executable, "-m", "tomohet", "classify", str(two_states), "--out", str(tmp_path / "c"),
                          "-K", "2"], env=env, capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2
    assert "does not run under torchrun" in run.stdout + run.stderr
    assert not (tmp_path / "c").exists()


def _planted_statistics(n=400, t=9, k=3, seed=0):
    """Per-image statistics of particles whose coefficients are one of two points (two states), 9 tilts."""
    gen = torch.Generator().manual_seed(seed)
    state = torch.arange(n) % 2
    truth = torch.stack([torch.full((k,), -1.5), torch.full((k,), 1.5)])[state]
    x = torch.randn(n, t, k, 6, generator=gen) * 0.5
    gram = x @ x.transpose(-1, -2)
    b = torch.einsum("ntij,nj->nti", gram, truth) + torch.einsum(
        "ntij,ntj->nti", x, torch.randn(n, t, 6, generator=gen)
    )
    return b, gram, state


@pytest.mark.parametrize("amp", [None, torch.bfloat16])
def test_networks_train_in_mixed_precision(amp):
    """bfloat16 autocast (the default on CUDA) learns the two states as float32 does; the likelihood's quadratic
    forms stay in float32."""
    b, gram, state = _planted_statistics()
    torch.manual_seed(0)
    enc, dec = Encoder(3, 2, hidden=32, layers=1), Decoder(2, 3, hidden=32, layers=1)
    enc.amp = dec.amp = amp
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    settings = TrainingSettings(passes=30, batch=64, beta=1.0, free_bits=0.05, tilt_keep=0.7, seed=1)
    held_in = torch.ones(b.shape[:2], dtype=torch.bool)
    losses = train_networks(enc, dec, opt, b, gram, held_in, settings)
    assert np.isfinite(losses["loss"])
    with torch.no_grad():
        mu, _ = enc(*(t.sum(1) for t in (b, gram)))
    assert mu.dtype == torch.float32
    axis = torch.linalg.svd(mu - mu.mean(0), full_matrices=False).Vh[0]
    side = ((mu - mu.mean(0)) @ axis > 0).long()
    accuracy = float((side == state).float().mean())
    assert max(accuracy, 1 - accuracy) > 0.97
    if amp is not None:  # autocast was on: the same weights in float32 give slightly different outputs
        enc.amp = None
        with torch.no_grad():
            mu32, _ = enc(*(t.sum(1) for t in (b, gram)))
        rel = float((mu32 - mu).abs().max() / mu32.abs().max())
        assert 0 < rel < 0.05

"""Project-then-reconstruct through files: simulate a RELION 5 project with realistic CTF, dose and a
+/-60 degree dose-symmetric tilt series from many particle orientations, read it back, reconstruct."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tomohet.data.relion5 import read_relion5
from tomohet.physics.filters import fsc
from tomohet.physics.reconstruct import reconstruct
from tomohet.simulate.acquisition import Acquisition, acquisition_order, simulate_images


def blob_volume(box: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z, y, x = torch.meshgrid(*[torch.arange(box, dtype=torch.float32) - box // 2] * 3, indexing="ij")
    vol = torch.zeros(box, box, box)
    for _ in range(40):
        c = (torch.rand(3, generator=g) - 0.5) * box / 2
        s = 1.0 + torch.rand(1, generator=g) * 1.5
        vol += torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s**2))
    return vol


def test_dose_symmetric_order():
    tilts = np.arange(-3, 4) * 3.0
    order = acquisition_order(tilts, "dose-symmetric")
    assert tilts[order].tolist() == [0, 3, 6, -3, -6, 9, -9]
    assert tilts[acquisition_order(tilts, "bidirectional")].tolist() == [0, 3, 6, 9, -3, -6, -9]


@pytest.fixture(scope="module")
def noise_free(tmp_path_factory):
    vol = blob_volume(32)
    acq = Acquisition(box=32, pixel_size=8.0, snr=1e8, float16=False, missing_high_tilt_fraction=0.2)
    out = tmp_path_factory.mktemp("roundtrip")
    layout = simulate_images(out, "rt", vol[None], np.zeros(160, dtype=int), acq, seed=0, batch_size=80)
    return vol, acq, layout


def test_simulated_geometry_reads_back(noise_free):
    vol, acq, layout = noise_free
    ds = read_relion5(layout.optimisation_set)
    tilts = acq.tilt_angles()
    assert ds.n_particles == 160 and ds.n_tilts == len(tilts) == 41
    # the tilt angle seen by each image is the simulated one (up to the small axis jitter)
    assert np.allclose(ds.tilt_angle[0].numpy(), tilts, atol=0.05)
    expected_dose = acq.pre_exposure(tilts)
    assert np.allclose(ds.dose[5].numpy(), expected_dose) and expected_dose.max() == pytest.approx(120.0)
    assert not ds.ctf_premultiplied and ds.box == 32 and ds.pixel_size == 8.0
    assert 0.1 < 1 - ds.visible.all(1).float().mean() < 0.35  # ~20% lost high tilts
    assert layout.measured_snr == pytest.approx(1e8, rel=0.1)


def test_project_reconstruct_fsc(noise_free):
    vol, _, layout = noise_free
    ds = read_relion5(layout.optimisation_set)
    rec = reconstruct(ds)
    curve = fsc(rec.full, vol)
    nyq = ds.box // 2
    assert curve[1 : int(0.8 * nyq) + 1].min() >= 0.9  # measured >= 0.99

"""The gold-standard filter of class differences and the half-set M-step sums it needs; the compact spectra
cache."""

from __future__ import annotations

import numpy as np
import torch

from tomohet.methods.difference_filter import filter_class_differences, gaussian_smooth
from tomohet.methods.em2d import HalfSetAccumulators, in_half_set_a
from tomohet.physics.projector import FourierAccumulator
from tomohet.physics.rotations import random_rotations


def _blob(d: int, centre, sigma: float) -> torch.Tensor:
    z, y, x = torch.meshgrid(*(torch.arange(d, dtype=torch.float32),) * 3, indexing="ij")
    r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    return torch.exp(-r2 / (2 * sigma**2))


def test_filter_keeps_a_real_difference_and_removes_noise_elsewhere():
    d, g = 32, torch.Generator().manual_seed(0)
    base = _blob(d, (16, 16, 16), 7.0)
    truth = torch.stack([base, base + 0.3 * _blob(d, (10, 16, 20), 2.5)])  # class 1 differs in one place
    noise = 0.08

    def estimate() -> torch.Tensor:
        return truth + noise * torch.randn(truth.shape, generator=g)

    half_a, half_b = estimate(), estimate()
    full = (half_a + half_b) / 2
    priors = np.array([0.5, 0.5])
    filtered, fsc = filter_class_differences(full, half_a, half_b, priors, sigma_px=2.0)

    def error(v: torch.Tensor) -> float:  # of the class difference (the pooled map is left as it is)
        return float(((v[1] - v[0] - (truth[1] - truth[0])) ** 2).sum())

    assert error(filtered) < 0.2 * error(full)  # most of the noise in the differences is gone
    assert torch.allclose(filtered.mean(0), full.mean(0), atol=1e-5)
    far = _blob(d, (24, 8, 8), 3.0) > 0.5  # a region where the classes do not differ
    spread = lambda v: float((v[1] - v[0])[far].abs().mean())  # noqa: E731
    assert spread(filtered) < 0.2 * spread(full)
    near = _blob(d, (10, 16, 20), 1.0) > 0.5  # the true difference survives near its centre
    kept = float((filtered[1] - filtered[0])[near].mean()) / float((truth[1] - truth[0])[near].mean())
    assert 0.45 < kept < 1.2  # shrunk (a Wiener filter), not erased
    assert fsc.shape == (2, d // 2 + 1) and float(fsc[0, 1]) > 0.8  # low shells of the difference agree


def test_filter_with_identical_halves_changes_nothing_but_noise_free_maps():
    d = 24
    maps = torch.stack([_blob(d, (12, 12, 12), 5.0), _blob(d, (12, 10, 12), 5.0)])
    out, _ = filter_class_differences(maps, maps, maps, [0.3, 0.7], sigma_px=1.5)
    assert torch.allclose(out, maps, atol=1e-4)  # no disagreement between halves: no noise to remove


def test_gaussian_smooth_preserves_the_sum_and_spreads_a_point():
    v = torch.zeros(16, 16, 16)
    v[8, 8, 8] = 1.0
    s = gaussian_smooth(v, 2.0)
    assert abs(float(s.sum()) - 1.0) < 1e-5
    # the profile along an axis is a Gaussian of sigma 2 voxels
    assert abs(float(s[8, 8, 10] / s[8, 8, 8]) - np.exp(-4 / 8)) < 1e-3


def test_half_set_sums_add_up_to_the_single_accumulator():
    m, n_tilts = 16, 3
    particles = np.array([4, 5, 6, 9])
    in_a = in_half_set_a(particles, n_tilts)
    assert in_a.tolist() == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    g = torch.Generator().manual_seed(1)
    n = len(particles) * n_tilts
    data = torch.randn(n, m, m // 2 + 1, dtype=torch.complex64, generator=g)
    weight = torch.rand(n, m, m // 2 + 1, generator=g)
    rot = random_rotations(n, generator=g).float()
    halves = HalfSetAccumulators(2, m)
    halves.insert(1, in_a, data, weight, rot)
    single = FourierAccumulator(m)
    single.insert(data, weight, rot)
    all_data, all_weight, a_data, a_weight = halves.sums()
    assert torch.allclose(all_data[1], single.data, atol=1e-4) and torch.allclose(all_weight[1], single.weight)
    assert float(all_weight[0].abs().sum()) == 0.0  # class 0 received nothing
    only_a = FourierAccumulator(m)
    only_a.insert(data[in_a], weight[in_a], rot[in_a])
    assert torch.allclose(a_data[1], only_a.data, atol=1e-4)

"""Class differences put on one shared pattern per voxel (states built from pieces)."""

from __future__ import annotations

import numpy as np
import torch

from tomohet.methods.difference_patterns import project_on_patterns


def _blob(d: int, centre, sigma: float) -> torch.Tensor:
    z, y, x = torch.meshgrid(*(torch.arange(d, dtype=torch.float32),) * 3, indexing="ij")
    r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    return torch.exp(-r2 / (2 * sigma**2))


def _ladder(d: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Four states: a base, then three pieces added one by one (an assembly ladder)."""
    base = _blob(d, (16, 16, 16), 7.0)
    pieces = [0.3 * _blob(d, c, 2.5) for c in ((9, 16, 20), (22, 10, 15), (15, 23, 9))]
    states = [base]
    for p in pieces:
        states.append(states[-1] + p)
    return torch.stack(states), pieces


def test_patterns_remove_noise_that_leaves_the_pieces_and_keep_the_pooled_map():
    d, g = 32, torch.Generator().manual_seed(0)
    truth, pieces = _ladder(d)
    priors = np.array([0.4, 0.25, 0.2, 0.15])
    noise = 0.05 / torch.as_tensor(priors).sqrt().float()[:, None, None, None]  # small classes are noisier
    region = (sum(pieces) > 0.3 * 0.05).float()  # where the states differ
    noisy = truth + noise * torch.randn(truth.shape, generator=g) * region
    out, labels = project_on_patterns(noisy, priors, region, smooth_px=1.5)

    w = torch.as_tensor(priors, dtype=torch.float32)
    pooled = lambda v: torch.einsum("k,kzyx->zyx", w, v)  # noqa: E731

    def error(v: torch.Tensor) -> float:  # of the class differences, each class weighted by its prior
        diff = (v - pooled(v)) - (truth - pooled(truth))
        return float((w[:, None, None, None] * diff**2).sum())

    assert error(out) < 0.55 * error(noisy)  # one number per voxel instead of three: most of the noise gone
    assert torch.allclose(pooled(out), pooled(noisy), atol=1e-5)
    assert torch.equal(out[:, region < 0.5], noisy[:, region < 0.5])  # outside the region: untouched
    # each piece's core has one pattern, and the three pieces have three different ones
    cores = [int(torch.mode(labels[p > 0.2]).values) for p in pieces]
    assert sorted(cores) == [0, 1, 2]
    for p, c in zip(pieces, cores, strict=True):
        assert float((labels[p > 0.2] == c).float().mean()) > 0.9
    assert int(labels[region < 0.5].max()) == -1


def test_two_classes_and_noise_free_ladders_are_unchanged():
    d = 24
    truth, _ = _ladder(32)
    out, _ = project_on_patterns(truth, [0.4, 0.25, 0.2, 0.15], None, smooth_px=1.0)
    spread = float((truth - truth.mean(0)).norm())
    assert float((out - truth).norm()) < 0.01 * spread  # every voxel lies on its piece's pattern (but where tails
    # of two pieces overlap)
    two = torch.stack([_blob(d, (12, 12, 12), 5.0), _blob(d, (12, 10, 12), 5.0)])
    out2, labels2 = project_on_patterns(two, [0.3, 0.7], None, smooth_px=1.0)
    assert torch.equal(out2, two) and int(labels2.max()) == -1
    # an empty class is left as it is and the others still projected
    empty = torch.cat([truth, torch.zeros(1, 32, 32, 32)])
    out3, _ = project_on_patterns(empty, [0.4, 0.25, 0.2, 0.15, 0.0], None, smooth_px=1.0)
    assert torch.equal(out3[4], empty[4]) and float((out3[:4] - truth).norm()) < 0.01 * spread

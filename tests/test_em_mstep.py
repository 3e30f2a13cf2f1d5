"""The EM M-step's empirical-Bayes prior (``em2d.shrink_to_pooled_map``): a class with no data follows the pooled
map, a class with abundant data keeps its own, and the shrinkage grows as the classes' spread shrinks."""

from __future__ import annotations

import torch

from tomohet.methods.em2d import shrink_to_pooled_map
from tomohet.physics.fourier import radial_index_3d


def _solve(data, weight, reg):
    shifted, reg_diff = shrink_to_pooled_map(data, weight, reg, radial_index_3d(data.shape[-1]).clamp(max=4))
    return shifted / (weight + reg_diff)


def test_shrinkage_follows_the_data_where_they_are_and_the_pool_where_they_are_not():
    g = 8
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(3, g, g, g, dtype=torch.complex64, generator=gen)
    weight = torch.stack([torch.full((g, g, g), 1e4), torch.full((g, g, g), 1e4), torch.zeros(g, g, g)])
    data = truth * weight
    reg = torch.full((g, g, g), 1e-3)
    maps = _solve(data, weight, reg)
    pooled = data.sum(0) / (weight.sum(0) + reg)
    # abundant data: the class keeps its own map (within the weak prior's pull)
    torch.testing.assert_close(maps[0], truth[0], atol=2e-3, rtol=2e-3)
    # no data: the class map is the pooled map, not zero
    torch.testing.assert_close(maps[2], pooled, atol=1e-5, rtol=1e-5)
    assert float(pooled.abs().mean()) > 0.3


def test_shrinkage_is_stronger_when_the_classes_agree():
    g = 8
    gen = torch.Generator().manual_seed(1)
    common = torch.randn(g, g, g, dtype=torch.complex64, generator=gen)
    spread = torch.randn(2, g, g, g, dtype=torch.complex64, generator=gen)
    weight = torch.full((2, g, g, g), 4.0)
    reg = torch.full((g, g, g), 1e-3)
    pulls = []
    for scale in (1.0, 0.1):
        own = common + scale * spread
        maps = _solve(own * weight, weight, reg)
        # how far each map moved from its own data towards the pooled map, relative to the distance
        pooled = (own * weight).sum(0) / (weight.sum(0) + reg)
        pulls.append(float(((maps - own).abs() / (pooled - own).abs().clamp_min(1e-9)).median()))
    assert 0.0 < pulls[0] < pulls[1] < 1.0

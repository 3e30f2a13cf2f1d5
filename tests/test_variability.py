"""The variability map and mask that confine class differences in the EM's M-step (methods.variability)."""

from __future__ import annotations

import numpy as np
import torch

from tomohet.methods.variability import confine_differences, variability_map, variability_mask


def _planted(n=400, s=16, seed=0):
    """Difference features: white noise everywhere, plus +-signal in a small cube for two classes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, s, s, s, generator=gen)
    region = torch.zeros(s, s, s, dtype=torch.bool)
    region[3:7, 9:13, 5:9] = True
    labels = torch.arange(n) % 2
    x[:, region] += (2.0 * labels - 1.0)[:, None] * 0.8
    return x.reshape(n, -1), region


def test_variability_map_finds_where_classes_differ():
    feats, region = _planted()
    var = variability_map(feats, n_classes=2, box=16)
    inside = float(var[region].mean())
    outside = float(var[~region].mean())
    assert inside > 20 * outside  # the noise spreads over the box, the signal over the region
    mask = variability_mask(var, pixel_size=10.0, resolution_A=30.0)
    assert float(mask[region].min()) > 0.9  # the region is inside the mask, with a margin
    assert float(mask.mean()) < 0.3  # and the mask is far from the whole box
    corner = torch.zeros_like(region)
    corner[12:, :3, 12:] = True
    assert float(mask[corner].max()) < 0.05


def test_pure_noise_confines_nothing():
    """Without a component above the noise bulk the mask covers the whole box: no difference is suppressed."""
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        feats = torch.randn(200, 16**3, generator=gen)
        mask = variability_mask(variability_map(feats, n_classes=2, box=16), pixel_size=10.0, resolution_A=30.0)
        assert float(mask.mean()) > 0.95


def test_confined_class_maps_agree_outside_the_mask_and_keep_their_differences_inside():
    gen = torch.Generator().manual_seed(2)
    vols = torch.randn(3, 8, 8, 8, generator=gen)
    mask = torch.zeros(8, 8, 8)
    mask[2:5, 2:5, 2:5] = 1.0
    priors = np.array([0.5, 0.3, 0.2])
    out = confine_differences(vols, priors, mask)
    mu = torch.einsum("k,kzyx->zyx", torch.tensor(priors, dtype=torch.float32), vols)
    outside = mask == 0
    for k in range(3):
        assert torch.allclose(out[k][outside], mu[outside], atol=1e-6)
        assert torch.allclose(out[k][~outside], vols[k][~outside], atol=1e-6)
    # the prior-weighted mean is unchanged
    assert torch.allclose(torch.einsum("k,kzyx->zyx", torch.tensor(priors, dtype=torch.float32), out), mu, atol=1e-5)

"""Coherent groups of particles as rare-state starts (:mod:`tomohet.methods.rare_start`)."""

from __future__ import annotations

import numpy as np
import torch

from tomohet.methods.difference_pca import pca_kmeans
from tomohet.methods.rare_start import coherent_groups, group_size, seeded_labels


def _planted(n: int, f: int, members: int, offset: float, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Unit-variance noise features ``[n, f]`` with ``members`` particles shifted by a random direction of norm
    ``offset`` (a rare state below the PCA detection threshold when ``p (1-p) offset^2 < sqrt(f / n)``)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, f, generator=gen)
    direction = torch.randn(f, generator=gen)
    idx = np.sort(np.random.default_rng(seed).choice(n, members, replace=False))
    x[torch.from_numpy(idx)] += offset * direction / direction.norm()
    return x, idx


def test_coherent_group_finds_a_rare_state_that_pca_kmeans_misses():
    n, members = 1000, 50
    x, idx = _planted(n, 3000, members, offset=8.0)  # PCA needs ~10 here (4 leading PCs, k-means)
    truth = np.zeros(n, bool)
    truth[idx] = True
    labels = pca_kmeans(x, 2, None, 0)[0]
    best_pca = max(float(truth[labels == k].mean()) for k in range(2))
    groups = coherent_groups(x, 3)
    assert len(groups) == 3 and all(len(g) == group_size(n) == 50 for g in groups)
    assert float(truth[groups[0]].mean()) >= 0.8  # the best group is mostly the rare state
    assert best_pca < 0.2  # PCA + k-means splits the noise
    for a in range(3):  # the candidates overlap less than half
        for b in range(a + 1, 3):
            assert len(np.intersect1d(groups[a], groups[b])) < 25


def test_coherent_groups_on_a_subset_extend_to_every_particle():
    n, members = 3000, 150
    x, idx = _planted(n, 2000, members, offset=6.0, seed=1)
    groups = coherent_groups(x, 2, seed=1, max_particles=1000)
    assert all(len(g) == group_size(n) == 150 and g.max() < n and len(np.unique(g)) == 150 for g in groups)
    assert len(np.intersect1d(groups[0], idx)) >= 0.8 * members


def test_seeded_labels_put_the_group_in_the_last_class_and_leave_the_base_alone():
    base = np.array([0, 1, 0, 1, 0, 1])
    out = seeded_labels(base, np.array([1, 4]), 3)
    assert out.tolist() == [0, 2, 0, 1, 2, 1] and base.tolist() == [0, 1, 0, 1, 0, 1]
    assert coherent_groups(torch.zeros(3, 5), 2) == []  # too few particles: no candidates


def test_rare_state_starts_need_enough_particles_for_a_rare_state():
    from tomohet.methods.rare_start import MIN_GROUP, MIN_PARTICLES, group_size, rare_starts_apply

    assert MIN_PARTICLES == 200 and group_size(MIN_PARTICLES) == MIN_GROUP
    assert not rare_starts_apply(64) and not rare_starts_apply(199)
    assert rare_starts_apply(200) and rare_starts_apply(1000)

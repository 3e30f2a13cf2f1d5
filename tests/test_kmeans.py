"""The numpy k-means of the classification starts."""

from __future__ import annotations

import numpy as np
import pytest

from tomohet.benchmark.metrics import discrete_report
from tomohet.methods.kmeans import kmeans


def test_kmeans_finds_separated_clusters_of_unequal_size_and_is_deterministic():
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]])
    truth = rng.choice(4, 800, p=[0.55, 0.25, 0.15, 0.05])  # a 5% cluster among larger ones
    x = centres[truth] + rng.normal(size=(800, 3))
    labels, found, inertia = kmeans(x, 4, seed=0)
    assert discrete_report(truth, labels)["ari"] > 0.97
    assert inertia == pytest.approx(((x - found[labels]) ** 2).sum())
    # each centre is the mean of its members (Lloyd's fixed point)
    for c in range(4):
        assert np.allclose(found[c], x[labels == c].mean(0), atol=1e-6)
    again = kmeans(x, 4, seed=0)
    assert np.array_equal(again[0], labels) and again[2] == inertia


def test_kmeans_more_starts_never_worse_and_bad_k_is_refused():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    one = kmeans(x, 6, n_init=1, seed=1)[2]
    many = kmeans(x, 6, n_init=10, seed=1)[2]
    assert many <= one + 1e-9
    with pytest.raises(ValueError, match="clusters"):
        kmeans(x[:3], 4)
    labels, _, inertia = kmeans(np.zeros((5, 2)), 2)  # fewer distinct points than clusters
    assert inertia == 0.0 and len(labels) == 5

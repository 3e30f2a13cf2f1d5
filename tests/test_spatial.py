"""Spatial statistics of states in tomograms: a planted clustering is found, random labels are not."""

import numpy as np
import pytest

from tomohet.analysis.spatial import spatial_statistics


def _tomogram(seed: int, clustered: bool, n: int = 300):
    """Positions (Angstrom) in a 4000 x 4000 x 1000 slab; state 1 (20 %) either in 4 tight groups or at random."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform([0, 0, 0], [4000, 4000, 1000], size=(n, 3))
    labels = np.zeros(n, int)
    k = n // 5
    labels[:k] = 1
    if clustered:  # polysome-like: state 1 within 150 A of one of 4 centres
        centres = rng.uniform([500, 500, 200], [3500, 3500, 800], size=(4, 3))
        pos[:k] = centres[np.arange(k) % 4] + rng.normal(0, 150, size=(k, 3))
    return pos, labels, np.array(["TS_01"] * n)


def test_planted_clustering_is_detected():
    pos, labels, tomos = _tomogram(0, clustered=True)
    stats = {s.state: s for s in spatial_statistics(pos, labels, tomos, n_shuffles=199)}
    assert stats[1].p_nn < 0.01 and stats[1].p_ripley < 0.01
    assert stats[1].mean_nn_A < 0.5 * stats[1].null_mean_nn_A
    assert (stats[1].l_observed_A > stats[1].l_null_A).all()


def test_random_labels_are_not_called_clustered():
    calls = 0
    for seed in range(50):
        pos, labels, tomos = _tomogram(100 + seed, clustered=False)
        s = {s.state: s for s in spatial_statistics(pos, labels, tomos, n_shuffles=99, seed=seed)}[1]
        calls += (s.p_nn <= 0.05) or (s.p_ripley <= 0.05)
    assert calls <= 5  # >= 90 % of seeds give p > 0.05 for both tests


def test_bad_positions_raise():
    with pytest.raises(ValueError, match="NaN"):
        spatial_statistics(np.full((10, 3), np.nan), np.zeros(10), np.array(["a"] * 10))


def test_aligned_neighbours_are_detected_and_random_ones_are_not():
    from scipy.spatial.transform import Rotation

    from tomohet.analysis.spatial import neighbour_orientation

    pos, labels, tomos = _tomogram(3, clustered=True)
    rot = Rotation.random(len(pos), random_state=3).as_matrix()
    base = Rotation.random(random_state=4).as_matrix()
    jitter = Rotation.from_rotvec(np.random.default_rng(5).normal(0, 0.1, size=((labels == 1).sum(), 3)))
    rot[labels == 1] = (jitter * Rotation.from_matrix(base)).as_matrix()  # state 1: neighbours aligned to ~6 deg
    stats = neighbour_orientation(pos, rot, labels, tomos, n_shuffles=199)
    assert stats[1]["p_aligned"] < 0.01 and stats[1]["median_neighbour_angle_deg"] < 20
    rot = Rotation.random(len(pos), random_state=6).as_matrix()
    assert neighbour_orientation(pos, rot, labels, tomos, n_shuffles=99)[1]["p_aligned"] > 0.05

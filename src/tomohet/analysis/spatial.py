"""Spatial statistics of states in their tomograms, each tested against a label-shuffle null.

The question a practitioner asks is whether one state sits closer to its own kind than the particles'
positions alone explain (polysomes, lattices, clusters at a membrane). The positions themselves are
whatever the cell made of them (crowding, excluded volume, the slab of the lamella), so the null keeps the
positions and shuffles the state labels within each tomogram: every statistic is compared with its
distribution over the shuffles (a Monte Carlo test; Besag & Diggle 1977, Appl. Stat. 26:327; for labelled
point patterns Diggle 2013, *Statistical Analysis of Spatial Point Patterns*, ch. 5 "random labelling").
No edge correction is needed because the null shares the observed pattern's edges.

Statistics per state (all distances in Angstrom):
- the mean nearest-neighbour distance from each particle of the state to the nearest other particle of the
  same state (clustering makes it small);
- Ripley's K for the state's cross pairs within each tomogram, ``K(r) = V / (n (n - 1)) * #pairs(d < r)``
  summed over tomograms, reported as the 3D ``L(r) = (3 K / (4 pi))^(1/3)`` (``L(r) = r`` for complete spatial
  randomness), and a global test over all radii: the largest standardised excess of ``K`` over the null mean
  (a maximum statistic over radii keeps the test's level when many radii are looked at).

p-values are one-sided for clustering, ``(1 + #{null >= observed}) / (1 + n_shuffles)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass
class StateSpatialStats:
    """Spatial statistics of one state (see the module docstring)."""

    state: int
    n: int
    mean_nn_A: float  # mean nearest same-state neighbour distance
    null_mean_nn_A: float
    p_nn: float
    radii_A: np.ndarray  # [R]
    l_observed_A: np.ndarray  # [R] L(r)
    l_null_A: np.ndarray  # [R] L of the null mean K
    p_ripley: float  # global (maximum over radii) test

    def row(self) -> dict:
        return {"state": self.state, "n": self.n, "mean_nn_A": round(self.mean_nn_A, 1),
                "null_mean_nn_A": round(self.null_mean_nn_A, 1), "p_nn": self.p_nn,
                "p_ripley": self.p_ripley}  # fmt: skip


def _groups(tomograms: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(tomograms == t) for t in np.unique(tomograms)]


def _shuffled(labels: np.ndarray, groups: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The labels permuted within each tomogram (the random-labelling null: positions kept)."""
    lab = labels.copy()
    for g in groups:
        lab[g] = rng.permutation(lab[g])
    return lab


def _nn_mean(positions: np.ndarray, labels: np.ndarray, groups: list[np.ndarray], state: int) -> float:
    """Mean distance from each particle of ``state`` to its nearest same-state neighbour in its tomogram."""
    d = []
    for g in groups:
        p = positions[g[labels[g] == state]]
        if len(p) > 1:
            d.append(cKDTree(p).query(p, k=2)[0][:, 1])
    return float(np.concatenate(d).mean()) if d else float("nan")


def _pair_counts(positions: np.ndarray, labels: np.ndarray, groups: list[np.ndarray], state: int,
                 radii: np.ndarray, volumes: np.ndarray) -> np.ndarray:  # fmt: skip
    """Ripley's K of ``state`` at ``radii``, pooled over tomograms (weighted by their pair counts)."""
    num = np.zeros(len(radii))
    den = 0.0
    for g, vol in zip(groups, volumes, strict=True):
        p = positions[g[labels[g] == state]]
        n = len(p)
        if n < 2:
            continue
        tree = cKDTree(p)
        counts = tree.count_neighbors(tree, radii) - n  # ordered pairs, self-pairs removed
        num += vol * counts
        den += n * (n - 1)
    return num / max(den, 1.0)


def spatial_statistics(
    positions_A: np.ndarray,
    labels: np.ndarray,
    tomograms: np.ndarray,
    *,
    radii_A: np.ndarray | None = None,
    n_shuffles: int = 199,
    seed: int = 0,
    min_particles: int = 5,
) -> list[StateSpatialStats]:
    """Per-state clustering tests (module docstring). ``positions_A`` ``[N, 3]`` in Angstrom, ``labels`` ``[N]``
    state per particle, ``tomograms`` ``[N]`` tomogram name per particle. ``radii_A`` default: 12 radii from
    the median nearest-neighbour distance of all particles to a quarter of the largest tomogram extent. States
    with fewer than ``min_particles`` particles are skipped."""
    positions_A = np.asarray(positions_A, dtype=np.float64)
    labels = np.asarray(labels)
    tomograms = np.asarray(tomograms).astype(str)
    if positions_A.ndim != 2 or positions_A.shape[1] != 3 or len(positions_A) != len(labels) != len(tomograms):
        raise ValueError("positions must be [N, 3] with one label and one tomogram per particle")
    if not np.isfinite(positions_A).all():
        raise ValueError("particle positions contain NaN or infinite values")
    groups = _groups(tomograms)
    volumes = np.array([np.prod(np.ptp(positions_A[g], axis=0).clip(1.0)) for g in groups])
    if radii_A is None:
        nn_all = np.concatenate([cKDTree(positions_A[g]).query(positions_A[g], k=2)[0][:, 1]
                                 for g in groups if len(g) > 1])  # fmt: skip
        extent = max(float(np.ptp(positions_A[g], axis=0).max()) for g in groups)
        radii_A = np.linspace(np.median(nn_all), max(extent / 4, 2 * np.median(nn_all)), 12)
    radii_A = np.asarray(radii_A, dtype=np.float64)
    rng = np.random.default_rng(seed)
    shuffles = [_shuffled(labels, groups, rng) for _ in range(n_shuffles)]
    out = []
    for state in np.unique(labels):
        n = int((labels == state).sum())
        if n < min_particles:
            continue
        nn_obs = _nn_mean(positions_A, labels, groups, state)
        nn_null = np.array([_nn_mean(positions_A, lab, groups, state) for lab in shuffles])
        k_obs = _pair_counts(positions_A, labels, groups, state, radii_A, volumes)
        k_null = np.stack([_pair_counts(positions_A, lab, groups, state, radii_A, volumes) for lab in shuffles])
        mu, sd = k_null.mean(0), k_null.std(0) + 1e-12
        t_obs = float(((k_obs - mu) / sd).max())
        t_null = ((k_null - mu) / sd).max(1)
        out.append(StateSpatialStats(
            state=int(state), n=n, mean_nn_A=nn_obs, null_mean_nn_A=float(np.nanmean(nn_null)),
            p_nn=float((1 + (nn_null <= nn_obs).sum()) / (1 + n_shuffles)),
            radii_A=radii_A, l_observed_A=np.cbrt(3 * k_obs / (4 * np.pi)), l_null_A=np.cbrt(3 * mu / (4 * np.pi)),
            p_ripley=float((1 + (t_null >= t_obs).sum()) / (1 + n_shuffles)),
        ))  # fmt: skip
    return out


def _neighbour_angles(positions: np.ndarray, rotations: np.ndarray, labels: np.ndarray, groups: list[np.ndarray],
                      state: int) -> np.ndarray:  # fmt: skip
    """Rotation angle (degrees) between each particle of ``state`` and its nearest same-state neighbour."""
    out = []
    for g in groups:
        sel = g[labels[g] == state]
        if len(sel) < 2:
            continue
        _, j = cKDTree(positions[sel]).query(positions[sel], k=2)
        rel = np.einsum("nji,njk->nik", rotations[sel], rotations[sel[j[:, 1]]])  # R_i^T R_j
        cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)
        out.append(np.degrees(np.arccos(cos)))
    return np.concatenate(out) if out else np.zeros(0)


def neighbour_orientation(
    positions_A: np.ndarray, rotations: np.ndarray, labels: np.ndarray, tomograms: np.ndarray, *,
    n_shuffles: int = 199, seed: int = 0, min_particles: int = 5,
) -> dict[int, dict]:  # fmt: skip
    """Pair orientation statistics per state: the median rotation angle between each particle and its nearest
    same-state neighbour (polysomes and lattices show aligned neighbours: small angles), against the same
    label-shuffle null as :func:`spatial_statistics`; one-sided p-value for "more aligned than chance".
    ``rotations`` ``[N, 3, 3]`` (any consistent convention: only relative rotations enter)."""
    positions_A, rotations = np.asarray(positions_A, float), np.asarray(rotations, float)
    labels, tomograms = np.asarray(labels), np.asarray(tomograms).astype(str)
    groups = _groups(tomograms)
    rng = np.random.default_rng(seed)
    out = {}
    for state in np.unique(labels):
        if (labels == state).sum() < min_particles:
            continue
        obs = float(np.median(_neighbour_angles(positions_A, rotations, labels, groups, state)))
        null = np.array([np.median(_neighbour_angles(positions_A, rotations, _shuffled(labels, groups, rng), groups,
                                                     state)) for _ in range(n_shuffles)])  # fmt: skip
        out[int(state)] = {"median_neighbour_angle_deg": round(obs, 1),
                           "null_median_angle_deg": round(float(null.mean()), 1),
                           "p_aligned": float((1 + (null <= obs).sum()) / (1 + n_shuffles))}  # fmt: skip
    return out

"""k-means for the classification starts: k-means++ seeding (Arthur & Vassilvitskii 2007, SODA 1027) and Lloyd
iterations, best of several seeded starts by inertia.

Written here (numpy only) rather than taken from scikit-learn for one measured reason: the starts cluster a few
thousand points in 4-12 dimensions, and importing ``sklearn.cluster`` adds ~150 MB to the resident memory of a
``classify`` run (scipy, joblib, threadpoolctl), about a seventh of its peak.
"""

from __future__ import annotations

import numpy as np


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``[N, K]`` squared Euclidean distances."""
    d = (x**2).sum(1)[:, None] - 2 * x @ centres.T + (centres**2).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability proportional to the squared distance to the
    nearest centre so far (the greedy variant: the best of ``2 + log k`` candidates)."""
    n = len(x)
    trials = 2 + int(np.log(k))
    centres = [x[rng.integers(n)]]
    closest = _squared_distances(x, np.asarray(centres))[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters
            centres.append(x[rng.integers(n)])
            continue
        cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total).clip(0, n - 1)
        d = np.minimum(closest[None, :], _squared_distances(x, x[cand]).T)  # [trials, N]
        best = int(np.argmin(d.sum(1)))
        centres.append(x[cand[best]])
        closest = d[best]
    return np.asarray(centres)


def kmeans(
    x: np.ndarray, k: int, n_init: int = 20, seed: int = 0, max_iter: int = 300, tol: float = 1e-4
) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels ``[N]`` (int64), centres ``[k, F]`` and inertia (sum of squared distances to the centres) of the
    best of ``n_init`` k-means++ / Lloyd runs on ``x`` ``[N, F]``; deterministic for a ``seed``. A run stops when
    the centres move less than ``tol`` x the data's mean per-feature variance; an empty cluster is re-seeded at
    the point farthest from its centre."""
    x = np.asarray(x, dtype=np.float64)
    if k < 1 or k > len(x):
        raise ValueError(f"k-means: {k} clusters for {len(x)} points")
    rng = np.random.default_rng(seed)
    scale = tol * float(x.var(0).mean())
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        centres = _plus_plus(x, k, rng)
        for _ in range(max_iter):
            d = _squared_distances(x, centres)
            labels = d.argmin(1)
            new = centres.copy()
            for c in range(k):
                members = labels == c
                if members.any():
                    new[c] = x[members].mean(0)
                else:
                    far = int(d[np.arange(len(x)), labels].argmax())
                    new[c], labels[far] = x[far], c
            shift = float(((new - centres) ** 2).sum())
            centres = new
            if shift <= scale:
                break
        d = _squared_distances(x, centres)
        labels = d.argmin(1)
        inertia = float(d[np.arange(len(x)), labels].sum())
        if best is None or inertia < best[2]:
            best = (labels.astype(np.int64), centres, inertia)
    return best

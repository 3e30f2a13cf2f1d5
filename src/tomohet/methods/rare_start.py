"""Starts for a rare state: small groups of particles whose difference features agree, each tried by the EM as a
class of its own beside the PCA start.

At low SNR a state held by a few percent of the particles adds too little variance to the difference features
for their leading principal components to carry it (its spike lies under the noise bulk: Baik, Ben Arous &
Peche 2005, Ann. Probab. 33:1643), so k-means on them splits the noise and the EM never finds the state; yet
from a start that holds it, even a class of 50 in which only 15 are the state's, the EM keeps it (``rare_spread``,
1000 particles, SNR 0.008: rare-state F1 0.87, oracle 0.99; ``benchmarks/CLASSIFY.md`` section 9).

A coherent group is found without the spectrum. Grown from one particle, a group of ``size`` particles is
replaced by the ``size`` particles whose features have the largest summed inner product with it, until it no
longer changes (a fixed point of the Gram matrix of the centred features; a few steps). Groups from every start
are ranked by the mean inner product within them, and the best ones that overlap less than half are the
candidates. The features are taken at a coarser band than the PCA's (:data:`RARE_BAND_FACTOR`): fewer noise
dimensions per unit of a subunit-sized difference.

A group's start confines the class differences to where the group differs (:func:`group_variability`, then
:func:`~.variability.variability_mask`), not to the PCA's variability mask, which at K = 2 follows the noise the
PCA split: from the same group start (``rare_spread`` seed 0, 31 of 50 in the group) the EM ends at F1 0.91 with
the group's mask (0.89 with the mask of the true difference), 0.80 with the PCA's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .variability import variability_mask

RARE_BAND_FACTOR = 1.4  # coherent groups from features at 1.4 x the PCA features' band (Angstrom)
GROUP_FRACTION = 0.05  # a group holds 5 % of the particles (at least MIN_GROUP)
MIN_GROUP = 10
MAX_GRAM_PARTICLES = 2000  # larger datasets: groups grown on a random subset, then extended to all particles
START_BATCH = 256  # groups grown at once (memory: START_BATCH x particles floats)


MIN_PARTICLES = round(MIN_GROUP / GROUP_FRACTION)  # 200: fewer, and a group of MIN_GROUP is not a rare state


def rare_starts_apply(n_particles: int) -> bool:
    """Whether coherent-group starts are tried on ``n_particles``: from :data:`MIN_PARTICLES` up. Below it a group
    of :data:`MIN_GROUP` particles is more than 5% of them and its class map mostly noise (64 particles, K = 4:
    such a start won in em3d and emptied another class)."""
    return n_particles >= MIN_PARTICLES


def group_size(n_particles: int) -> int:
    """Particles in one candidate group: :data:`GROUP_FRACTION` of them, at least :data:`MIN_GROUP`, at most
    half of them."""
    return int(min(max(MIN_GROUP, round(GROUP_FRACTION * n_particles)), n_particles // 2))


def coherent_groups(
    features: torch.Tensor,
    n_groups: int,
    size: int | None = None,
    seed: int = 0,
    max_particles: int = MAX_GRAM_PARTICLES,
    max_steps: int = 10,
) -> list[np.ndarray]:
    """Up to ``n_groups`` groups of particle indices (sorted ``[size]`` arrays; ``size`` default
    :func:`group_size`) whose difference features ``[N, F]`` agree most, best first, pairwise overlapping less
    than half (module docstring). With more than ``max_particles`` particles the groups grow on a seeded random
    subset of that many and are then extended to all particles: the ``size`` whose features correlate most with
    the group's mean feature."""
    n = features.shape[0]
    size = group_size(n) if size is None else int(size)
    if n < 4 or size < 2 or n_groups < 1:
        return []
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(n, max_particles, replace=False)) if n > max_particles else np.arange(n)
    mean = features.float().mean(0)
    x = features[torch.from_numpy(sub)].float() - mean
    gram = x @ x.T
    gram.fill_diagonal_(0)
    m = int(min(max(2, round(size * len(sub) / n)), len(sub) - 1))
    found: list[tuple[float, np.ndarray]] = []
    for lo in range(0, len(sub), START_BATCH):
        starts = torch.arange(lo, min(lo + START_BATCH, len(sub)))
        groups = torch.topk(gram[starts], m, dim=1).indices  # first step: the start's nearest particles
        for _ in range(max_steps):
            member = torch.zeros(len(starts), len(sub)).scatter_(1, groups, 1.0)
            new = torch.topk(member @ gram, m, dim=1).indices
            if torch.equal(new.sort(1).values, groups.sort(1).values):
                break
            groups = new
        member = torch.zeros(len(starts), len(sub)).scatter_(1, groups, 1.0)
        within = ((member @ gram) * member).sum(1) / (m * (m - 1))
        found += [(float(w), g.numpy()) for w, g in zip(within, groups, strict=True)]
    found.sort(key=lambda t: -t[0])
    chosen: list[np.ndarray] = []
    for _, g in found:
        gs = set(g.tolist())
        if all(len(gs.intersection(c.tolist())) < m / 2 for c in chosen):
            chosen.append(g)
            if len(chosen) == n_groups:
                break
    if len(sub) == n:
        return [np.sort(g) for g in chosen]
    out = []
    for g in chosen:  # extend to every particle by the group's mean feature
        centre = x[torch.from_numpy(g)].mean(0)
        score = torch.cat([(features[lo : lo + 4096].float() - mean) @ centre for lo in range(0, n, 4096)])
        out.append(np.sort(torch.topk(score, size).indices.numpy()))
    return out


def seeded_labels(base: np.ndarray, group: np.ndarray, n_classes: int) -> np.ndarray:
    """Start labels ``[N]``: ``base`` (classes ``0..n_classes-2``, e.g. k-means into one class fewer) with the
    particles of ``group`` moved to the last class ``n_classes - 1``."""
    labels = np.asarray(base).copy()
    labels[np.asarray(group)] = n_classes - 1
    return labels


def group_variability(features: torch.Tensor, group: np.ndarray, box: int) -> torch.Tensor:
    """Signal variance per voxel ``[D, D, D]`` (``box`` D) of a group's difference from all particles: the
    squared mean feature of the group (features ``[N, s^3]`` centred) less its noise variance (feature variance
    / group size), resampled to the box (trilinear); for :func:`~.variability.variability_mask`."""
    n, f = features.shape
    s = round(f ** (1 / 3))
    if s**3 != f:
        raise ValueError(f"features of {f} values are not a cube")
    mean = features.float().mean(0)
    centred = features[torch.from_numpy(np.asarray(group))].float() - mean
    noise = features.float().var(0) / len(group)
    signal = (centred.mean(0) ** 2 - noise).clamp_min(0)
    return F.interpolate(signal.reshape(1, 1, s, s, s), size=(box,) * 3, mode="trilinear", align_corners=False)[0, 0]


def group_start_mask(others: torch.Tensor, features: torch.Tensor, group: np.ndarray, box: int, pixel_size: float,
                     resolution_A: float) -> torch.Tensor:  # fmt: skip
    """The variability mask ``[D, D, D]`` of a group's start: where the group differs from all particles
    (:func:`group_variability` of ``features`` ``[N, s^3]``) or the other classes do (``others``, a variance map
    ``[D, D, D]``, zeros at K = 2), each scaled to its maximum so the mask is their union
    (:func:`~.variability.variability_mask` at ``resolution_A``)."""

    def unit_max(v: torch.Tensor) -> torch.Tensor:
        return v / v.max().clamp_min(1e-30)

    var = torch.maximum(unit_max(others), unit_max(group_variability(features, group, box)))
    return variability_mask(var, pixel_size, resolution_A)

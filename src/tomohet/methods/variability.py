"""Where the particles differ: a variability map from the wedge-masked difference features, and the mask that
confines class differences to it in the EM's M-step.

The difference features (:func:`~.difference_pca.difference_features`) of N particles hold signal (the class
differences, in a few regions of the particle) plus noise spread over the whole box. Their leading principal
components carry the signal: with eigenvalues ``lambda_k`` above the noise bulk ``lambda_bulk`` and unit
loadings ``v_k``, the signal variance per voxel is ``sum_k (lambda_k - lambda_bulk) v_k^2`` (the spiked covariance
model; as PEET's and Dynamo's variance maps, denoised by keeping the components above the bulk). A mask drawn
around it (smoothed, thresholded at a fraction of its maximum, dilated, soft edge) is where class maps may differ:
outside it every class map equals the pooled map, so classes cannot fit noise there, and a particle's own noise
pulls it less toward the class it is in (the self-consistency that traps EM in local optima).

Measured on the ``ladder`` preset (4 states, seed 0, oracle ARI 0.945; ``benchmarks/CLASSIFY.md`` section 6): the
map correlates 0.88 with the true between-state variance (one component), the mask covers 83% of the true
variable region at 87% precision, and EM from the PCA start ends at ARI 0.77 instead of 0.67 (seeds 0-2:
0.77 / 0.81 / 0.66 against 0.67 / 0.68 / 0.58), as with the mask made from the true maps (0.78); from the true
labels EM with the true mask ends at 0.80, with the same log-likelihood as from the PCA start: the masked EM no
longer depends on where it starts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..physics.filters import lowpass
from .difference_pca import leading_scores, standardise_

MASK_THRESHOLD = 0.1  # fraction of the map's maximum (0.2 lost the smallest ladder state: ARI 0.65)
BULK_RANK_FACTOR = 2  # the noise bulk is the eigenvalue at rank 2 K


def variability_map(features: torch.Tensor, n_classes: int, box: int, seed: int = 0) -> torch.Tensor:
    """Signal variance per voxel ``[D, D, D]`` (``box`` D, arbitrary units) from difference features ``[N, s^3]``:
    the ``n_classes - 1`` leading components above the noise bulk (the eigenvalue at rank ``2 n_classes``),
    scaled as :func:`~.difference_pca.pca_kmeans` scales the features (in place: :func:`~.difference_pca.
    standardise_`), resampled to the box (trilinear)."""
    n, f = features.shape
    s = round(f ** (1 / 3))
    if s**3 != f:
        raise ValueError(f"features of {f} values are not a cube")
    x = standardise_(features.float())
    q = max(1, n_classes - 1)
    rank = min(BULK_RANK_FACTOR * n_classes, n - 1, f - 1)
    scores = leading_scores(x, rank + 1, seed)  # [N, rank+1], U S
    ev = (scores**2).sum(0) / max(n - 1, 1)  # eigenvalues of the feature covariance
    bulk = ev[rank]
    var = torch.zeros(f, dtype=torch.float64)
    for k in range(min(q, rank)):
        gain = float(ev[k] - bulk)
        if gain <= 0:
            continue
        load = (x.T @ scores[:, k].to(x.dtype)).double()  # X^T U S = V S^2 (no float64 copy of X)
        load = load / load.norm().clamp_min(1e-30)
        var += gain * load**2
    vol = var.float().reshape(1, 1, s, s, s)
    return F.interpolate(vol, size=(box, box, box), mode="trilinear", align_corners=False)[0, 0]


def variability_mask(var_map: torch.Tensor, pixel_size: float, resolution_A: float,
                     threshold: float = MASK_THRESHOLD) -> torch.Tensor:  # fmt: skip
    """Soft mask ``[D, D, D]`` (0..1) around the variable region: ``var_map`` low-passed to ``resolution_A``,
    thresholded at ``threshold`` x its maximum, dilated by ~0.6 x the resolution, then a soft edge (low-pass to
    ~0.7 x the resolution). All ones when the map is empty (no component above the noise)."""
    v = lowpass(var_map, resolution_A, pixel_size)
    top = float(v.max())
    if top <= 0:
        return torch.ones_like(var_map)
    m = (v > threshold * top).float()
    r = max(1, round(0.6 * resolution_A / pixel_size))
    m = F.max_pool3d(m[None, None], 2 * r + 1, 1, r)[0, 0]
    return lowpass(m, 0.7 * resolution_A, pixel_size).clamp(0, 1)


def confine_differences(volumes: torch.Tensor, priors, mask: torch.Tensor) -> torch.Tensor:
    """Class maps ``[K, D, D, D]`` whose differences from their prior-weighted mean lie inside ``mask``:
    ``mu + mask (V_k - mu)``."""
    w = torch.as_tensor(priors, dtype=volumes.dtype).clamp_min(0)
    w = w / w.sum().clamp_min(1e-12)
    mu = torch.einsum("k,kzyx->zyx", w, volumes)
    return mu + mask * (volumes - mu)

"""The field's metrics against ground truth: discrete labels, class maps and continuous latents.

Discrete (``true`` and ``pred`` are per-particle labels of any hashable type, e.g. ints or strings):

- :func:`adjusted_rand_index`, :func:`normalized_mutual_information` (scikit-learn);
- :func:`matched_accuracy`: accuracy after the optimal one-to-one matching of the (possibly rectangular,
  K != number of true states) confusion matrix (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``);
  unmatched classes or states count as wrong;
- :func:`population_error`: predicted minus true fraction per matched true state;
- :func:`rare_state_f1`: F1 of the class that overlaps a given (rare) state most (DESIGN.md: "a rare state
  is found" when this F1 >= 0.8 with K = number of true states).

Maps: :func:`map_fsc` (map-to-truth FSC: area under the curve up to Nyquist and the 0.5 / 0.143 resolutions)
and :func:`per_class_fsc` (each class map against its matched true map).

Continuous: :func:`latent_spearman` (best |Spearman rho| of the top 3 latent components, i.e. the first 3
columns, with the true coordinate) and :func:`knn_preservation` (fraction of each point's k nearest
neighbours in the truth that are also among its k nearest neighbours in the latent space).

:func:`discrete_report` and :func:`continuous_report` bundle them into JSON-ready dictionaries.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import NearestNeighbors

from ..errors import InputError
from ..physics.filters import fsc, resolution_at

Labels = Sequence[Hashable] | np.ndarray
TOP_COMPONENTS = 3  # DESIGN.md: "best of the top components" = the first 3 latent columns


def _labels(x: Labels, field: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise InputError(None, f"expected a 1D array of labels, got shape {arr.shape}", field=field)
    if arr.size == 0:
        raise InputError(None, "expected at least one label, got none", field=field)
    return arr


def _pair(true: Labels, pred: Labels) -> tuple[np.ndarray, np.ndarray]:
    t, p = _labels(true, "true"), _labels(pred, "pred")
    if t.shape != p.shape:
        raise InputError(None, f"true has {t.size} labels but pred has {p.size}; expected one label per particle")
    return t, p


def _py(v: Any) -> Any:
    """A numpy scalar as the plain Python value (for JSON)."""
    return v.item() if isinstance(v, np.generic) else v


# ----------------------------------------------------------------------------------------------- discrete


def adjusted_rand_index(true: Labels, pred: Labels) -> float:
    """Adjusted Rand index of two labelings (1 = identical partitions, ~0 = chance; label names don't matter)."""
    t, p = _pair(true, pred)
    return float(adjusted_rand_score(t, p))


def normalized_mutual_information(true: Labels, pred: Labels) -> float:
    """Normalised mutual information (arithmetic normalisation, scikit-learn's default), in [0, 1]."""
    t, p = _pair(true, pred)
    return float(normalized_mutual_info_score(t, p))


def confusion_matrix(true: Labels, pred: Labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts ``C[i, j]`` of particles with true state ``states[i]`` and predicted class ``classes[j]``.

    Returns ``(C, states, classes)`` with ``C`` int64 of shape ``[n_states, n_classes]`` (rectangular when the
    number of classes differs from the number of states) and the sorted unique labels of each side.
    """
    t, p = _pair(true, pred)
    states, ti = np.unique(t, return_inverse=True)
    classes, pi = np.unique(p, return_inverse=True)
    c = np.zeros((states.size, classes.size), dtype=np.int64)
    np.add.at(c, (ti, pi), 1)
    return c, states, classes


def match_labels(true: Labels, pred: Labels) -> dict[Any, Any]:
    """Optimal one-to-one matching of predicted classes to true states (maximum total overlap).

    Returns ``{class: state}``; with more classes than states the surplus classes are absent (and vice versa
    some states stay unmatched).
    """
    c, states, classes = confusion_matrix(true, pred)
    rows, cols = linear_sum_assignment(c, maximize=True)
    return {_py(classes[j]): _py(states[i]) for i, j in zip(rows, cols, strict=True)}


def matched_accuracy(true: Labels, pred: Labels) -> float:
    """Fraction of particles whose class is matched to their true state under the optimal one-to-one matching
    of the (possibly rectangular) confusion matrix; particles in unmatched classes count as wrong."""
    c, _, _ = confusion_matrix(true, pred)
    rows, cols = linear_sum_assignment(c, maximize=True)
    return float(c[rows, cols].sum() / c.sum())


def population_error(true: Labels, pred: Labels) -> dict[str, Any]:
    """Per true state: predicted fraction (of the matched class; 0 when no class is matched) minus true fraction.

    Returns ``{"per_state": {str(state): {"true_fraction", "pred_fraction", "error"}}, "mean_abs": float,
    "max_abs": float}`` (fractions of all particles, so errors are in [-1, 1]).
    """
    c, states, classes = confusion_matrix(true, pred)
    n = c.sum()
    rows, cols = linear_sum_assignment(c, maximize=True)
    matched = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    true_frac = c.sum(axis=1) / n
    class_frac = c.sum(axis=0) / n
    per_state: dict[str, dict[str, float]] = {}
    errs = []
    for i, s in enumerate(states):
        pf = float(class_frac[matched[i]]) if i in matched else 0.0
        e = pf - float(true_frac[i])
        errs.append(abs(e))
        per_state[str(_py(s))] = {"true_fraction": float(true_frac[i]), "pred_fraction": pf, "error": e}
    return {"per_state": per_state, "mean_abs": float(np.mean(errs)), "max_abs": float(np.max(errs))}


def rare_state_f1(true: Labels, pred: Labels, state: Hashable) -> dict[str, Any]:
    """F1 of the predicted class that overlaps ``state`` most (most particles of that state; ties go to the
    class with the higher F1). Returns ``{"f1", "precision", "recall", "class"}``; F1 = 0 if the state is absent.
    """
    c, states, classes = confusion_matrix(true, pred)
    hit = np.nonzero(states == state)[0]
    if hit.size == 0:
        return {"f1": 0.0, "precision": 0.0, "recall": 0.0, "class": None}
    row = c[hit[0]]
    precision = row / np.maximum(c.sum(axis=0), 1)
    recall = row / max(row.sum(), 1)
    f1 = np.where(row > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    best = max(range(classes.size), key=lambda j: (row[j], f1[j]))
    return {
        "f1": float(f1[best]),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "class": _py(classes[best]),
    }


def discrete_report(true: Labels, pred: Labels) -> dict[str, Any]:
    """All discrete metrics in one JSON-ready dictionary.

    Keys: ``n``, ``n_states``, ``n_classes``, ``ari``, ``nmi``, ``accuracy`` (matched), ``population_error``
    (see :func:`population_error`), ``matching`` (``{str(class): state}``), ``rarest_state`` and
    ``rarest_state_f1`` (:func:`rare_state_f1` of the least abundant true state).
    """
    t, p = _pair(true, pred)
    c, states, classes = confusion_matrix(t, p)
    rarest = _py(states[int(np.argmin(c.sum(axis=1)))])
    return {
        "n": int(t.size),
        "n_states": int(states.size),
        "n_classes": int(classes.size),
        "ari": adjusted_rand_index(t, p),
        "nmi": normalized_mutual_information(t, p),
        "accuracy": matched_accuracy(t, p),
        "population_error": population_error(t, p),
        "matching": {str(k): v for k, v in match_labels(t, p).items()},
        "rarest_state": rarest,
        "rarest_state_f1": rare_state_f1(t, p, rarest)["f1"],
    }


# ----------------------------------------------------------------------------------------------------- maps


def _volume(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def map_fsc(volume: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, pixel_size: float) -> dict[str, Any]:
    """Map-to-truth FSC of two ``[D, D, D]`` volumes with voxel size ``pixel_size`` (Angstrom).

    Returns ``{"auc", "resolution_0.5", "resolution_0.143", "curve"}``: ``auc`` is the area under the FSC
    over normalised frequency 0..Nyquist (trapezoid over shells 0..D//2, divided by D//2, so identical maps
    give 1); resolutions in Angstrom (Nyquist, 2 x pixel, when the curve never drops below the threshold);
    ``curve`` the per-shell FSC as a list.
    """
    v, t = _volume(volume), _volume(truth)
    if v.ndim != 3 or v.shape != t.shape or len(set(v.shape)) != 1:
        shapes = f"{tuple(v.shape)} and {tuple(t.shape)}"
        raise InputError(None, f"expected two cubic volumes of the same shape, got {shapes}", field="volume")
    d = v.shape[-1]
    curve = fsc(v.float(), t.float())
    c = curve.numpy()
    auc = float(np.sum(0.5 * (c[1:] + c[:-1])) / (d // 2))
    return {
        "auc": auc,
        "resolution_0.5": resolution_at(curve, d, pixel_size, 0.5),
        "resolution_0.143": resolution_at(curve, d, pixel_size, 0.143),
        "curve": c.tolist(),
    }


def per_class_fsc(
    class_maps: torch.Tensor | np.ndarray,
    true_maps: torch.Tensor | np.ndarray,
    pixel_size: float,
    matching: dict[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Each class map ``[K, D, D, D]`` against its true map ``[S, D, D, D]``.

    ``matching`` maps class index -> true-map index (e.g. from :func:`match_labels` with integer labels
    0..K-1 and 0..S-1); without it, classes are matched one-to-one to true maps by maximum total FSC AUC.
    Unmatched classes (K > S) are compared with their best true map. Returns one dictionary per class:
    :func:`map_fsc`'s keys plus ``"class"`` and ``"truth"`` (the index compared with).
    """
    cm, tm = _volume(class_maps), _volume(true_maps)
    if cm.ndim != 4 or tm.ndim != 4 or cm.shape[1:] != tm.shape[1:]:
        shapes = f"{tuple(cm.shape)} and {tuple(tm.shape)}"
        raise InputError(None, f"expected [K, D, D, D] and [S, D, D, D] maps, got {shapes}", field="maps")
    results = [[map_fsc(cm[k], tm[s], pixel_size) for s in range(tm.shape[0])] for k in range(cm.shape[0])]
    if matching is None:
        auc = np.array([[r["auc"] for r in row] for row in results])
        rows, cols = linear_sum_assignment(auc, maximize=True)
        matching = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    out = []
    for k in range(cm.shape[0]):
        s = matching.get(k)
        if s is None:
            s = int(np.argmax([r["auc"] for r in results[k]]))
        out.append({"class": k, "truth": int(s), **results[k][s]})
    return out


# ----------------------------------------------------------------------------------------------- continuous


def _latent(latent: np.ndarray | torch.Tensor | Sequence[float], n: int) -> np.ndarray:
    if isinstance(latent, torch.Tensor):
        latent = latent.detach().cpu().numpy()
    z = np.asarray(latent, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] != n:
        raise InputError(None, f"expected a latent of shape [{n}, L] (one row per particle), got {z.shape}", "latent")
    return z


def latent_spearman(
    true_coord: np.ndarray | Sequence[float], latent: np.ndarray | torch.Tensor, n_components: int = TOP_COMPONENTS
) -> dict[str, Any]:
    """Best |Spearman rho| between the true continuous coordinate ``[N]`` and one of the top latent components.

    "Top" means the first ``n_components`` (default 3) columns of ``latent`` ``[N, L]`` (PCA-family methods
    order their components by variance; a VAE's latent should be ordered likewise, e.g. by PCA of the means,
    before calling). Returns ``{"rho_abs", "rho", "component"}`` (signed rho of the best column and its index).
    """
    t = np.asarray(true_coord, dtype=np.float64).reshape(-1)
    z = _latent(latent, t.size)[:, :n_components]
    best = (0.0, 0.0, 0)
    for j in range(z.shape[1]):
        if np.ptp(z[:, j]) == 0 or np.ptp(t) == 0:
            continue
        rho = float(spearmanr(t, z[:, j]).statistic)
        if np.isfinite(rho) and abs(rho) > best[0]:
            best = (abs(rho), rho, j)
    return {"rho_abs": best[0], "rho": best[1], "component": best[2]}


def knn_preservation(
    true_coords: np.ndarray | Sequence[float], latent: np.ndarray | torch.Tensor, k: int = 10
) -> float:
    """Mean over points of |kNN_truth(i) & kNN_latent(i)| / k (self excluded; Euclidean distances).

    ``true_coords`` is ``[N]`` or ``[N, C]``, ``latent`` ``[N, L]``. 1 = every neighbourhood kept; a random
    embedding gives about k / (N - 1).
    """
    t = np.asarray(true_coords, dtype=np.float64)
    t = t[:, None] if t.ndim == 1 else t
    z = _latent(latent, t.shape[0])
    n = t.shape[0]
    if not 1 <= k < n:
        raise InputError(None, f"k must be between 1 and N-1 = {n - 1}, got {k}", field="k")

    def neighbours(x: np.ndarray) -> np.ndarray:
        idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x, return_distance=False)
        keep = idx != np.arange(n)[:, None]  # drop self; with duplicate points self may be missing: drop the last
        keep[keep.all(axis=1), -1] = False
        return idx[keep].reshape(n, k)

    a, b = neighbours(t), neighbours(z)
    hits = (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)


def continuous_report(
    true_coord: np.ndarray | Sequence[float], latent: np.ndarray | torch.Tensor, k: int = 10
) -> dict[str, Any]:
    """Continuous metrics in one JSON-ready dictionary: ``n``, ``latent_dim``, ``spearman_abs`` (best of the
    top 3 components), ``spearman``, ``spearman_component``, ``knn_preservation`` (with ``k``), ``k``."""
    t = np.asarray(true_coord, dtype=np.float64).reshape(-1)
    z = _latent(latent, t.size)
    s = latent_spearman(t, z)
    return {
        "n": int(t.size),
        "latent_dim": int(z.shape[1]),
        "spearman_abs": s["rho_abs"],
        "spearman": s["rho"],
        "spearman_component": s["component"],
        "knn_preservation": knn_preservation(t, z, k=min(k, t.size - 1)),
        "k": int(min(k, t.size - 1)),
    }


def pose_error_report(true_rotation, true_offset_px, rotation=None, offset_px=None) -> dict:
    """Pose errors against the truth, all as corrections of the written poses (:mod:`tomohet.data.poses`):
    ``true_*`` the corrections that give the true poses, ``rotation`` / ``offset_px`` the estimated ones (None: the
    written poses, i.e. no correction). Median and mean angle (degrees) and centre distance (pixels), and the same
    after removing the rotation and offset common to all particles (``*_aligned``): a map refined with the poses
    is free to take a slightly rotated or shifted frame, which moves every pose alike and is no error."""
    from ..physics.rotations import rotation_angle

    n = len(true_rotation)
    rot = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1) if rotation is None else rotation.double()
    off = torch.zeros(n, 3, dtype=torch.float64) if offset_px is None else offset_px.double()
    rel = true_rotation.double().transpose(-1, -2) @ rot  # the identity for every particle when exact
    u, _, vt = torch.linalg.svd(rel.mean(0))
    common = u @ torch.diag(torch.tensor([1.0, 1.0, float(torch.det(u @ vt))], dtype=torch.float64)) @ vt
    centre = torch.einsum("nij,nj->ni", rel, off) - true_offset_px.double()  # reference frame of the true pose
    out = {}
    for suffix, ang, dist in (
        ("", rotation_angle(rel), centre.norm(dim=-1)),
        ("_aligned", rotation_angle(common.T @ rel), (centre - centre.mean(0)).norm(dim=-1)),
    ):
        ang, dist = np.degrees(ang.numpy()), dist.numpy()
        out.update({f"median_angle_error{suffix}_deg": float(np.median(ang)), f"mean_angle_error{suffix}_deg":
                    float(ang.mean()), f"median_centre_error{suffix}_px": float(np.median(dist)),
                    f"mean_centre_error{suffix}_px": float(dist.mean())})  # fmt: skip
    return out

"""Consistency of discrete classifications across independent runs (STOPGAP-style consistency cleaning).

Several runs of a stochastic classifier (hill climbing with simulated annealing, or EM from different seeds) give
the same partition with arbitrary class names. :func:`match_runs` renames every run's classes to those of a
reference run (the optimal one-to-one matching of the confusion matrix, Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``); :func:`consistency` then takes the majority vote per particle (the
consensus) and the fraction of runs that agree with it; :func:`clean` returns the particles whose consistency
reaches a threshold. Nothing is dropped from the input: callers write the consistency as a per-particle column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import InputError


def _as_labels(labels_list: Sequence[np.ndarray]) -> list[np.ndarray]:
    runs = [np.asarray(lab) for lab in labels_list]
    if not runs:
        raise InputError(None, "expected the labels of at least one run, got none", field="labels")
    n = runs[0].shape
    for r, lab in enumerate(runs):
        if lab.ndim != 1 or lab.shape != n:
            raise InputError(None, f"run {r} has labels of shape {lab.shape}; expected {n} like run 0", field="labels")
        if lab.size and (not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0):
            raise InputError(None, f"run {r} has labels that are not non-negative integers", field="labels")
    return [lab.astype(np.int64) for lab in runs]


def label_permutation(reference: np.ndarray, labels: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """``perm`` such that ``perm[labels]`` names ``labels``' classes after the ``reference`` classes they overlap
    most (optimal one-to-one matching of the square confusion matrix; a class that overlaps no reference class
    gets a reference name that nothing else took)."""
    ref, lab = _as_labels([reference, labels])
    k = int(max(n_classes or 0, ref.max(initial=-1) + 1, lab.max(initial=-1) + 1))
    conf = np.zeros((k, k), dtype=np.int64)  # [reference class, run class]
    np.add.at(conf, (ref, lab), 1)
    rows, cols = linear_sum_assignment(conf, maximize=True)
    perm = np.empty(k, dtype=np.int64)
    perm[cols] = rows
    return perm


def match_runs(labels_list: Sequence[np.ndarray], n_classes: int | None = None, reference: int = 0) -> list[np.ndarray]:
    """Every run's labels renamed to the classes of run ``reference`` (Hungarian matching on the confusion
    matrix). Returns a new list; the reference run is returned unchanged."""
    runs = _as_labels(labels_list)
    k = int(max([n_classes or 0] + [lab.max(initial=-1) + 1 for lab in runs]))
    ref = runs[reference]
    return [lab.copy() if r == reference else label_permutation(ref, lab, k)[lab] for r, lab in enumerate(runs)]


def vote_fractions(labels_list: Sequence[np.ndarray], n_classes: int | None = None) -> np.ndarray:
    """Fraction of runs that put each particle in each class, ``[N, K]`` (labels already matched)."""
    runs = _as_labels(labels_list)
    k = int(max([n_classes or 0] + [lab.max(initial=-1) + 1 for lab in runs]))
    votes = np.zeros((runs[0].size, k))
    rows = np.arange(runs[0].size)
    for lab in runs:
        votes[rows, lab] += 1.0
    return votes / len(runs)


def consistency(
    labels_list: Sequence[np.ndarray],
    n_classes: int | None = None,
    align: bool = True,
    reference: int = 0,
    tie_break: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Consensus labels (majority vote over runs) and per-particle consistency (fraction of runs, in [0, 1],
    that agree with the consensus). With ``align`` the runs are first matched to run ``reference``; ties of the
    vote go to run ``tie_break``'s class (default: the reference run), then to the lowest class."""
    runs = match_runs(labels_list, n_classes, reference) if align else _as_labels(labels_list)
    frac = vote_fractions(runs, n_classes)
    pref = runs[reference if tie_break is None else tie_break]
    score = frac.copy()
    score[np.arange(len(pref)), pref] += 0.5 / len(runs)  # less than one vote: only breaks ties
    consensus = score.argmax(1)
    return consensus, frac[np.arange(len(consensus)), consensus]


def clean(consensus: np.ndarray, consistency: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """Indices of the particles kept by consistency cleaning: those whose consistency is at least ``threshold``
    (a fraction of runs; 1.0 keeps only particles on which every run agrees). ``consensus`` only fixes the
    number of particles."""
    c = np.asarray(consistency, dtype=np.float64)
    if c.shape != np.shape(consensus):
        raise InputError(None, f"consistency has shape {c.shape} but consensus {np.shape(consensus)}", field="labels")
    if not 0.0 <= threshold <= 1.0:
        raise InputError(None, f"consistency threshold {threshold} is outside [0, 1]", field="threshold")
    return np.flatnonzero(c >= threshold - 1e-9)

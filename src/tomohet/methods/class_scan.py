"""How many classes do the data support? For each K of a range, two-fold cross-validation: EM on one half of the
particles (a seeded random split), its class maps, priors and noise power score the other half
(:func:`~.em2d.heldout_log_likelihood`, each particle free to be in any class), and the other way round; the K
with the highest held-out log-likelihood is then run on all particles.

The fit's own log-likelihood grows with every class added (a class fits noise as well as signal). So does a
score that is cross-fitted *within* one run: each particle's class was chosen against maps that held its own
noise, so a split of one state by noise survives it (on ``rare_spread`` seed 1 it preferred K = 3, the common
state split 575 / 365). With the halves fitted apart, no particle's data touch the partition or the maps it is
scored with; the held-out score grows only while an added class describes particles it was not estimated from
(``benchmarks/CLASSIFY.md`` section 10). The price: each half is half the data, so a state too rare or too weak
to be found in 500 particles is not counted.

A run may leave a class empty (fewer than :data:`EMPTY_FRACTION` of its half): it found fewer states than it was
given, and its score is that of a fit with fewer classes (on ``ladder`` seed 0, K = 5 scored above K = 4 with one
class empty in both halves). The K chosen is therefore the smallest scanned K at least the number of classes the
best-scoring K's runs populate (the most over its two halves).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .em2d import EMOptions, classify_em2d, heldout_log_likelihood
from .iteration import stage_ticker
from .result import Result

EMPTY_FRACTION = 0.005  # a class with fewer than this fraction of a half's particles counts as empty


@dataclass
class ClassScan:
    """One EM run per number of classes and its scores."""

    rows: list[dict]  # classes, heldout_log_likelihood and fit_log_likelihood (sums over the two halves), class
    # sizes in each half's run, populated_classes (the most over the halves), seconds
    best: int  # the number of classes chosen (module docstring)
    top_score: int  # the number of classes with the highest held-out log-likelihood

    def table(self) -> list[dict]:
        """Rows with the held-out log-likelihood relative to the best (0 there, negative elsewhere)."""
        top = max(r["heldout_log_likelihood"] for r in self.rows)
        return [{**r, "heldout_vs_best": r["heldout_log_likelihood"] - top} for r in self.rows]


def parse_class_range(text: str) -> list[int]:
    """``"1-6"`` -> ``[1, ..., 6]``; ``"2,4,6"`` -> ``[2, 4, 6]``; at least two values, each >= 1."""
    text = text.strip()
    if m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", text):
        lo, hi = int(m[1]), int(m[2])
        ks = list(range(lo, hi + 1))
    elif re.fullmatch(r"\d+(\s*,\s*\d+)*", text):
        ks = sorted({int(v) for v in text.split(",")})
    else:
        raise ValueError(f"give a range like 1-6 or a list like 2,3,4 (got {text!r})")
    if len(ks) < 2 or min(ks) < 1:
        raise ValueError(f"give at least two numbers of classes, each >= 1 (got {text!r})")
    return ks


def split_halves(n_particles: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of ``0..n-1`` (sorted indices) from a seeded random permutation."""
    perm = np.random.default_rng(seed).permutation(n_particles)
    return np.sort(perm[: n_particles // 2]), np.sort(perm[n_particles // 2 :])


def scan_classes(
    dataset,
    classes: list[int],
    options: EMOptions,
    progress: Callable[[str, int, int], None] | None = None,
    checkpoints: Path | None = None,
    **fit_kwargs,
) -> tuple[ClassScan, dict[int, Result]]:
    """Cross-validate :func:`~.em2d.classify_em2d` with ``options`` for each number of ``classes`` (see the module
    docstring), then run the best K on all particles; returns the scan and ``{best K: its result}``.
    ``checkpoints`` (a folder) keeps one checkpoint per run (``K<k>_half1.pt``, ``K<k>_half2.pt``, ``K<k>.pt``), so
    an interrupted scan resumes; ``fit_kwargs`` go to ``classify_em2d`` (e.g. ``focus_mask``)."""
    if dataset.n_particles < 2 * max(classes):
        raise ValueError(f"{dataset.n_particles} particles cannot be cross-validated with {max(classes)} classes "
                         f"(each half needs at least one particle per class)")  # fmt: skip
    halves = [dataset.take(h) for h in split_halves(dataset.n_particles, options.seed)]
    if checkpoints is not None:
        Path(checkpoints).mkdir(parents=True, exist_ok=True)

    def fit_run(ds, k: int, name: str) -> Result:
        stage = None if progress is None else (lambda s, done, total: progress(f"{name}: {s}", done, total))
        ck = None if checkpoints is None else Path(checkpoints) / f"{name.replace(' ', '_')}.pt"
        return classify_em2d(ds, replace(options, n_classes=k), progress=stage, checkpoint=ck, **fit_kwargs)

    rows = []
    for k in classes:
        t0 = time.perf_counter()
        held, fit, sizes = 0.0, 0.0, []
        for j, (a, b) in enumerate(((0, 1), (1, 0))):
            res = fit_run(halves[a], k, f"K{k} half{j + 1}")
            tick = None if progress is None else stage_ticker(progress, f"K{k} half{j + 1}: held-out score",
                                                               halves[b].n_particles)  # fmt: skip
            held += heldout_log_likelihood(halves[b], res, tick)
            fit += float(res.log[-1]["log_likelihood"]) if res.log else float("nan")
            sizes.append(np.bincount(res.labels, minlength=k).tolist())
        populated = max(populated_classes(c, sum(c)) for c in sizes)
        rows.append({"classes": k, "heldout_log_likelihood": held, "fit_log_likelihood": fit,
                     "class_sizes": sizes[0], "class_sizes_half2": sizes[1], "populated_classes": populated,
                     "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
    top = max(rows, key=lambda r: r["heldout_log_likelihood"])
    best = min(k for k in classes if k >= top["populated_classes"])
    return ClassScan(rows, best, top["classes"]), {best: fit_run(dataset, best, f"K{best}")}


def populated_classes(sizes: list[int], n_particles: int) -> int:
    """Classes of a run with at least :data:`EMPTY_FRACTION` of its ``n_particles`` (and at least one)."""
    return sum(1 for s in sizes if s >= max(1.0, EMPTY_FRACTION * n_particles))

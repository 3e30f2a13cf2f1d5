"""How many classes do the data support? EM for each K of a range, each scored by its cross-fitted (held-out)
log-likelihood (:meth:`~.em2d.EMClassifier.heldout_log_likelihood`).

The fit's own log-likelihood grows with every class added (a class fits noise as well as signal); the held-out
one grows only while the added class describes particles it was not estimated from, so its maximum over K is
the number of classes the data support at this SNR and particle count. It cannot see a state too rare for its
map to be estimated from half its particles (``benchmarks/CLASSIFY.md`` section 7).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .em2d import EMOptions, classify_em2d
from .result import Result


@dataclass
class ClassScan:
    """One EM run per number of classes and its scores."""

    rows: list[dict]  # classes, heldout_log_likelihood, fit_log_likelihood, class_sizes, iterations, seconds
    best: int  # the number of classes with the highest held-out log-likelihood

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


def scan_classes(
    dataset,
    classes: list[int],
    options: EMOptions,
    progress: Callable[[str, int, int], None] | None = None,
    checkpoints: Path | None = None,
    **fit_kwargs,
) -> tuple[ClassScan, dict[int, Result]]:
    """Run :func:`~.em2d.classify_em2d` with ``options`` for each number of ``classes`` (held-out score on) and
    return the scan and the results by K. ``checkpoints`` (a folder) keeps one checkpoint per K
    (``K<k>.pt``), so an interrupted scan resumes; ``fit_kwargs`` go to ``classify_em2d`` (e.g. ``focus_mask``)."""
    rows, results = [], {}
    if checkpoints is not None:
        Path(checkpoints).mkdir(parents=True, exist_ok=True)
    for k in classes:
        opt = replace(options, n_classes=k, heldout=True)
        stage = None if progress is None else (lambda name, done, total, k=k: progress(f"K={k}: {name}", done, total))
        ck = None if checkpoints is None else Path(checkpoints) / f"K{k}.pt"
        t0 = time.perf_counter()
        res = classify_em2d(dataset, opt, progress=stage, checkpoint=ck, **fit_kwargs)
        results[k] = res
        rows.append({"classes": k, "heldout_log_likelihood": float(res.extra["heldout_log_likelihood"]),
                     "fit_log_likelihood": float(res.log[-1]["log_likelihood"]) if res.log else float("nan"),
                     "class_sizes": np.bincount(res.labels, minlength=k).tolist(), "iterations": len(res.log),
                     "seconds": round(time.perf_counter() - t0, 2)})  # fmt: skip
    best = max(rows, key=lambda r: r["heldout_log_likelihood"])["classes"]
    return ClassScan(rows, best), results

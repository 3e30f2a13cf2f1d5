"""Write-back: the particles of chosen classes or clusters of a run, as the next job's input (RELION 5
optimisation set + particles/tomograms stars, Warp v1 image-series star, or RELION 3.1/4 subtomogram star),
every original column and the optics table kept (:func:`tomohet.data.annotate.write_annotated`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.annotate import write_annotated
from ..data.io import read_any
from ..errors import InputError


def run_labels(run_dir: Path) -> tuple[list[str], np.ndarray]:
    """Particle names and class numbers (1-based) of a run: ``posteriors.csv`` (classify) or ``clusters.csv``
    (landscape with ``--clusters``, k-means)."""
    for name, col in (("posteriors.csv", "rlnClassNumber"), ("clusters.csv", "kmeans")):
        p = run_dir / name
        if p.is_file():
            df = pd.read_csv(p)
            if col not in df.columns:
                raise InputError(p, f"no {col} column", col)
            return df.iloc[:, 0].astype(str).tolist(), df[col].to_numpy(dtype=int)
    raise InputError(run_dir, "the run has no classes (posteriors.csv) or clusters (clusters.csv) to select from")


def select_classes(run_dir: Path, classes: list[int], out_dir: Path, prefix: str = "selected") -> dict:
    """Write the particles of ``classes`` (1-based class or cluster numbers) of the run in ``run_dir`` into
    ``out_dir``; returns what was written (recorded in the analysis' ``result.json``)."""
    result = json.loads((run_dir / "result.json").read_text())
    nxt = result.get("next_input")
    if not nxt or not (run_dir / nxt).is_file():
        raise InputError(run_dir, "the run folder has no particles file to select from (next_input)")
    names, labels = run_labels(run_dir)
    unknown = sorted(set(classes) - set(labels.tolist()))
    if unknown:
        raise InputError(run_dir, f"--select: class {unknown[0]} is not among the run's classes "
                                  f"{sorted(set(labels.tolist()))}")  # fmt: skip
    ds = read_any(run_dir / nxt)
    index = {n: i for i, n in enumerate(ds.names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise InputError(run_dir / nxt, f"particle {missing[0]!r} of the run's labels is not in this file")
    keep = np.sort(np.array([index[n] for n, k in zip(names, labels, strict=True) if k in set(classes)]))
    path = write_annotated(ds, out_dir, {}, keep, prefix)
    return {"classes": sorted(classes), "n": int(len(keep)), "particles": str(path)}

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
from ..data.star import read_star
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


def _write_selected(run_dir: Path, names: list[str], out_dir: Path, prefix: str) -> tuple[int, Path]:
    """Write the run's particles named ``names`` as the next job's input; returns (count, file)."""
    result = json.loads((run_dir / "result.json").read_text())
    nxt = result.get("next_input") or (result.get("clusters") or {}).get("next_input")
    source = run_dir / nxt if nxt else Path(result.get("options", {}).get("input_path") or run_dir / "missing")
    if not source.is_file():  # the run's own particles file, else the input it read (same particle names)
        raise InputError(run_dir, "no particles file to select from: neither the run's next_input nor its input")
    ds = read_any(source)
    index = {n: i for i, n in enumerate(ds.names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise InputError(source, f"particle {missing[0]!r} of the run's labels is not in this file")
    if not names:
        raise InputError(run_dir, "the selection is empty: no particle matches it")
    keep = np.sort(np.array([index[n] for n in names]))
    return len(keep), write_annotated(ds, out_dir, {}, keep, prefix)


def particle_confidence(run_dir: Path, names: list[str]) -> tuple[np.ndarray, str]:
    """Per-particle confidence in its class: ``tomohetConsistency`` (fraction of hill-climbing runs that agree)
    where the run wrote it, else the EM posterior of the class (``rlnMaxValueProbDistribution``)."""
    star = run_dir / "particles.star"
    if star.is_file():
        table = read_star(star).get("particles")
        if isinstance(table, pd.DataFrame) and "rlnTomoParticleName" in table:
            for col in ("tomohetConsistency", "rlnMaxValueProbDistribution"):
                if col in table:
                    by_name = dict(zip(table["rlnTomoParticleName"].astype(str), table[col].astype(float), strict=True))
                    return np.array([by_name.get(n, np.nan) for n in names]), col
    post = run_dir / "posteriors.csv"
    if post.is_file():
        df = pd.read_csv(post)
        p = df.filter(regex=r"^p\d+$").to_numpy().max(1)
        by_name = dict(zip(df.iloc[:, 0].astype(str), p, strict=True))
        return np.array([by_name.get(n, np.nan) for n in names]), "max posterior"
    raise InputError(run_dir, "--min-confidence: the run records no consistency or posterior per particle")


def select_classes(run_dir: Path, classes: list[int] | None, out_dir: Path, prefix: str = "selected",
                   min_confidence: float | None = None) -> dict:  # fmt: skip
    """Write the particles of ``classes`` (1-based class or cluster numbers; None: all) of the run in ``run_dir``
    into ``out_dir``, keeping only those whose confidence (:func:`particle_confidence`) is at least
    ``min_confidence`` when given; returns what was written (recorded in the analysis' ``result.json``)."""
    names, labels = run_labels(run_dir)
    classes = sorted(set(labels.tolist())) if classes is None else classes
    unknown = sorted(set(classes) - set(labels.tolist()))
    if unknown:
        raise InputError(run_dir, f"--select: class {unknown[0]} is not among the run's classes "
                                  f"{sorted(set(labels.tolist()))}")  # fmt: skip
    keep = np.isin(labels, classes)
    out = {"classes": sorted(classes)}
    if min_confidence is not None:
        conf, source = particle_confidence(run_dir, names)
        keep &= conf >= min_confidence
        out.update(min_confidence=min_confidence, confidence=source)
    n, path = _write_selected(run_dir, [n for n, k in zip(names, keep, strict=True) if k], out_dir, prefix)
    return {**out, "n": n, "particles": str(path)}


def select_latent_region(run_dir: Path, region: str, out_dir: Path, prefix: str = "selected") -> dict:
    """Write the particles whose latents (``latent.csv``) satisfy every condition of ``region``, e.g.
    ``"z0>1.5,z1<0"`` (``zK>v`` or ``zK<v``, joined by commas)."""
    latent = run_dir / "latent.csv"
    if not latent.is_file():
        raise InputError(run_dir, "--select-latent needs a landscape run (latent.csv)")
    df = pd.read_csv(latent)
    keep = np.ones(len(df), bool)
    for cond in region.split(","):
        op = ">" if ">" in cond else "<" if "<" in cond else None
        name, _, value = cond.partition(op) if op else (cond, "", "")
        name = name.strip()
        if op is None or name not in df.columns or not name.startswith("z"):
            raise InputError(latent, f"--select-latent: {cond!r} is not zK>value or zK<value with zK in the file")
        try:
            v = float(value)
        except ValueError as e:
            raise InputError(latent, f"--select-latent: {value!r} is not a number") from e
        keep &= (df[name] > v).to_numpy() if op == ">" else (df[name] < v).to_numpy()
    n, path = _write_selected(run_dir, df.iloc[:, 0].astype(str)[keep].tolist(), out_dir, prefix)
    return {"latent_region": region, "n": n, "particles": str(path)}

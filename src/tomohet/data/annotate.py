"""Write the input particles back with per-particle columns added (class, posterior, consistency), whole
or as a subset, in the input's own format, ready for the next tomohet / RELION / WarpTools job.

RELION 5 input: ``particles.star`` + ``tomograms.star`` + ``optimisation_set.star`` (one row per particle).
Warp v1 input: an image-series ``particles.star`` (one row per image; the particle's value on each of its rows).
RELION 3.1/4 subtomogram input: the star with its blocks, the volume and CTF paths rewritten to point (relative to
the new star) at the user's files, which stay where they are.
Rows and column names of the input are kept; nothing the user gave is modified.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .model import TiltSeriesParticles
from .relion5 import write_relion5
from .star import read_star, write_star
from .subtomo import Subtomograms
from .warp_v1 import write_warp_v1


def write_annotated(
    dataset: TiltSeriesParticles | Subtomograms,
    out_dir: str | Path,
    columns: dict[str, np.ndarray],
    subset: np.ndarray | None = None,
    prefix: str = "",
) -> Path:
    """Write the particles of ``dataset`` (all, or the indices in ``subset``) with ``columns`` (``[N]`` arrays,
    one value per particle) added or replaced. Returns the file to give to the next job (the optimisation set
    for RELION 5, the image-series star for Warp v1)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keep = np.arange(dataset.n_particles) if subset is None else np.asarray(subset)
    stem = f"{prefix}_" if prefix else ""
    if dataset.source_format in ("relion5", "simulated"):
        table = dataset.tables["particles_blocks"]["particles"].copy()
        for name, values in columns.items():
            table[name] = np.asarray(values)
        return write_relion5(dataset, out_dir, prefix, particles=table.iloc[keep].reset_index(drop=True))
    if dataset.source_format == "warp_v1":
        path = out_dir / f"{stem}particles.star"
        write_warp_v1(dataset, path)
        blocks = read_star(path)
        name = next(k for k, v in blocks.items() if isinstance(v, pd.DataFrame) and "rlnGroupName" in v.columns)
        df = blocks[name]
        index = {n: i for i, n in enumerate(dataset.names)}
        particle = df["rlnGroupName"].astype(str).map(index).to_numpy()
        for col, values in columns.items():
            df[col] = np.asarray(values)[particle]
        blocks[name] = df[np.isin(particle, keep)].reset_index(drop=True)
        write_star(blocks, path)
        return path
    if dataset.kind == "3d":
        return _write_subtomograms(dataset, out_dir / f"{stem}particles.star", columns, keep)
    raise ValueError(f"cannot write particles of a {dataset.source_format!r} dataset")


def _write_subtomograms(dataset: Subtomograms, path: Path, columns: dict[str, np.ndarray], keep: np.ndarray) -> Path:
    blocks = dict(dataset.tables["blocks"])
    name = next(k for k, v in blocks.items() if isinstance(v, pd.DataFrame) and "rlnImageName" in v.columns)
    df = blocks[name].copy()
    df["rlnImageName"] = [os.path.relpath(p.resolve(), path.parent.resolve()) for p in dataset.volume_paths]
    df["rlnCtfImage"] = [os.path.relpath(p.resolve(), path.parent.resolve()) for p in dataset.ctf_paths]
    for col, values in columns.items():
        df[col] = np.asarray(values)
    blocks[name] = df.iloc[keep].reset_index(drop=True)
    write_star(blocks, path)
    return path

"""A benchmark dataset made ready for every method and peer: simulated (or a user's folder), a blind copy of its
input (links to the files without the ground truth, so a method cannot find it and every run is timed as a user
would run it), the truth read once, the oracle's figures computed once, and RELION 3.1 subtomograms plus a
consensus map made on demand for the 3D methods and RELION.

Layout under ``OUT/datasets/NAME/``: ``truth/`` (the simulated dataset, or nothing for a user's folder),
``input/`` (links), ``oracle.json``, ``subtomo/`` (``subtomo_particles.star``, ``Subtomograms/``,
``consensus.mrc``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.io import read_any
from ..data.mrc import read_volume, write_volume
from ..data.truth import load_truth, true_geometry
from ..errors import InputError
from .metrics import continuous_report, discrete_report
from .suites import DatasetSpec

HIDDEN = {"ground_truth.csv", "dataset.json", "maps", "tilt_shifts_truth.csv", "result.json", "tomohet.log"}


@dataclass
class PreparedDataset:
    """``input``: the blind star every method reads; ``truth``: ``ground_truth.csv`` rows in the order of
    ``names`` (the dataset's particle order); ``meta``: tomohet's ``dataset.json`` (None for a user's data
    without one); ``oracle``: the oracle's report (``discrete`` or ``continuous`` keys) or None."""

    spec: DatasetSpec
    folder: Path
    truth_folder: Path
    input: Path
    names: list[str]
    truth: pd.DataFrame
    meta: dict | None
    n_images: int
    pixel_size: float
    box: int
    oracle: dict | None = None
    _subtomo: Path | None = field(default=None, repr=False)

    @property
    def states(self) -> np.ndarray | None:
        s = self.truth["state"].to_numpy()
        return s if len(np.unique(s)) > 1 else None

    @property
    def coordinate(self) -> np.ndarray | None:
        if "coordinate" not in self.truth:
            return None
        c = pd.to_numeric(self.truth["coordinate"], errors="coerce").to_numpy(dtype=np.float64)
        return c if np.isfinite(c).all() and np.ptp(c) > 0 else None

    def true_maps(self) -> torch.Tensor | None:
        """The simulation's state maps ``[S, D, D, D]`` in state order (None without ``dataset.json``)."""
        if not self.meta or not self.meta.get("maps"):
            return None
        return torch.stack([read_volume(self.truth_folder / f)[0] for f in self.meta["maps"]])

    def subtomograms(self) -> Path:
        """RELION 3.1 subtomograms of the dataset (written once) and ``consensus.mrc`` (tomohet's Wiener
        reconstruction from the 2D stacks, RELION's ``--ref``); returns the subtomogram star."""
        folder = self.folder / "subtomo"
        star = folder / "subtomo_particles.star"
        if not (star.exists() and (folder / "consensus.mrc").exists()):
            from ..data.subtomo import write_relion31_subtomograms
            from ..physics.reconstruct import reconstruct

            ds = read_any(self.input)
            write_relion31_subtomograms(ds, folder, batch_size=16)
            write_volume(folder / "consensus.mrc", reconstruct(ds).full, ds.pixel_size)
        return star

    def summary(self) -> dict:
        out = self.spec.describe()
        out.update({"n_particles": len(self.names), "n_images": self.n_images, "box": self.box,
                    "pixel_size_A": self.pixel_size})  # fmt: skip
        if self.meta:
            out["measured_snr"] = self.meta.get("measured_snr")
        return out


def _blind_copy(source: Path, target: Path) -> None:
    """``target`` holds a link to every entry of ``source`` except the ground truth (:data:`HIDDEN`)."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        link = target / entry.name
        if entry.name in HIDDEN or link.is_symlink() or link.exists():
            continue
        os.symlink(entry.resolve(), link)


def _input_star(folder: Path) -> Path:
    """The one optimisation set in ``folder`` (else its one star file); an error naming the candidates when
    there are several (then give the star itself)."""
    for pattern in ("*_optimisation_set.star", "*.star"):
        found = sorted(folder.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(f.name for f in found[:4])
            raise InputError(folder, f"{len(found)} candidate inputs ({names}); give the star itself to --dataset")
    raise InputError(folder, "no input: expected one *_optimisation_set.star (or one .star file) in the folder")


def prepare_dataset(spec: DatasetSpec, folder: Path, log=print) -> PreparedDataset:
    """Simulate (unless done) or link the dataset, read its truth and compute its oracle (cached in
    ``oracle.json``)."""
    folder = Path(folder)
    if spec.path is not None:
        source = Path(spec.path)
        star = source if source.is_file() else _input_star(source)
        truth_folder = star.parent
        if not (truth_folder / "ground_truth.csv").exists():
            raise InputError(truth_folder, "a benchmark dataset needs ground_truth.csv beside its star")
    else:
        truth_folder = folder / "truth"
        if not (truth_folder / "dataset.json").exists():
            from ..simulate.datasets import simulate_preset

            t0 = time.perf_counter()
            simulate_preset(spec.preset, truth_folder, seed=spec.seed, n_particles=spec.n_particles, snr=spec.snr,
                            acquisition=dict(spec.acquisition) or None)  # fmt: skip
            log(f"simulated {spec.name} in {time.perf_counter() - t0:.0f} s")
        star = _input_star(truth_folder)
    _blind_copy(truth_folder, folder / "input")
    blind = folder / "input" / star.name
    ds = read_any(blind)
    names = [str(n) for n in ds.names]
    truth = load_truth(truth_folder / "ground_truth.csv", names)
    meta_path = truth_folder / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    n_images = int(ds.visible.sum()) if ds.kind == "2d" else ds.n_particles
    prep = PreparedDataset(spec, folder, truth_folder, blind, names, truth, meta, n_images, float(ds.pixel_size),
                           int(ds.box))  # fmt: skip
    cache = folder / "oracle.json"
    if cache.exists():
        prep.oracle = json.loads(cache.read_text())
    elif meta is not None and ds.kind == "2d":
        t0 = time.perf_counter()
        prep.oracle = dataset_oracle(ds, prep)
        prep.oracle["seconds"] = round(time.perf_counter() - t0, 1)
        cache.write_text(json.dumps(prep.oracle, indent=1, default=float))
        log(f"oracle of {spec.name} in {prep.oracle['seconds']:.0f} s")
    return prep


def dataset_oracle(ds, prep: PreparedDataset) -> dict:
    """The oracle (true maps, true geometry, true noise) scored with the benchmark's metrics: ``discrete``
    (ARI & co. of its MAP states) on datasets with states, ``continuous`` (|rho| of its posterior-mean
    coordinate) on datasets with a continuous coordinate."""
    from .oracle import oracle

    meta = prep.meta
    maps = prep.true_maps()
    true_ds = true_geometry(ds, prep.truth, prep.truth_folder / "ground_truth.csv") or ds
    out: dict = {}
    if meta.get("map_coordinates") is not None and prep.coordinate is not None:
        o = oracle(true_ds, maps, meta["noise_sigma"], coordinates=np.asarray(meta["map_coordinates"]))
        out["continuous"] = continuous_report(prep.coordinate, o.coordinate[:, None])
    elif prep.states is not None:
        o = oracle(true_ds, maps, meta["noise_sigma"], np.asarray(meta["abundances"]))
        out["discrete"] = discrete_report(prep.states, o.labels)
    return out

"""Maps anywhere in a linear landscape, from its run folder: ``map(z) = mean + sum_l z_l component_l``.

``tomohet landscape`` (ppca, wmd-pca, msvd) writes ``mean.mrc`` and ``component_NN.mrc`` in the coordinates of
``latent.csv``, so the map at any latent point, at a cluster centre or along a straight path between two points
is that sum (checked: the written cluster-centre maps equal it to 1e-7). Points are written ``c3`` (the
centre of k-means cluster 3 in ``result.json``) or ``z0=-1.5,z2=0.8`` (unnamed coordinates 0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.mrc import read_volume
from ..errors import InputError


@dataclass
class LinearLandscape:
    """Mean map ``[D, D, D]``, components ``[L, D, D, D]``, voxel size (Angstrom), cluster centres ``{k: [L]}``."""

    mean: torch.Tensor
    components: torch.Tensor
    pixel_size: float
    centres: dict[int, np.ndarray]

    def map_at(self, z: np.ndarray) -> torch.Tensor:
        z = torch.as_tensor(np.asarray(z, dtype=np.float32))
        return self.mean + torch.einsum("l,lxyz->xyz", z, self.components)


def load_linear_landscape(run_dir: Path) -> LinearLandscape | None:
    """The linear model of a landscape run folder, or None if the folder has none (a discrete run)."""
    run_dir = Path(run_dir)
    comps = sorted(run_dir.glob("component_[0-9][0-9].mrc"))
    if not (run_dir / "mean.mrc").is_file() or not comps:
        return None
    mean, apix = read_volume(run_dir / "mean.mrc")
    components = torch.stack([read_volume(p)[0] for p in comps])
    centres = {}
    result = run_dir / "result.json"
    if result.is_file():
        for c in (json.loads(result.read_text()).get("clusters") or {}).get("classes", []):
            if c.get("latent_centre") is not None:
                centres[int(c["class"])] = np.asarray(c["latent_centre"], dtype=float)
    return LinearLandscape(mean, components, apix, centres)


def parse_point(text: str, model: LinearLandscape, where: Path) -> np.ndarray:
    """A latent point from ``c3`` (cluster centre) or ``z0=-1.5,z2=0.8``."""
    text = text.strip()
    n = model.components.shape[0]
    if text.startswith("c") and text[1:].isdigit():
        k = int(text[1:])
        if k not in model.centres:
            raise InputError(where, f"--path: no cluster {k} in this run (clusters {sorted(model.centres)})")
        return model.centres[k]
    z = np.zeros(n)
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if not (name.startswith("z") and name[1:].isdigit()) or not value:
            raise InputError(where, f"--path: {part!r} is not zK=value or cN")
        k = int(name[1:])
        if k >= n:
            raise InputError(where, f"--path: {name} but the landscape has {n} components (z0..z{n - 1})")
        try:
            z[k] = float(value)
        except ValueError as e:
            raise InputError(where, f"--path: {value!r} is not a number") from e
    return z


def maps_along_path(model: LinearLandscape, start: np.ndarray, end: np.ndarray, steps: int = 7) -> list:
    """``steps`` maps at evenly spaced points of the straight path from ``start`` to ``end`` (latent points)."""
    return [model.map_at(start + t * (end - start)) for t in np.linspace(0.0, 1.0, steps)]

"""One metric path for tomohet and the peers: whatever made a result, it becomes a :class:`CellOutput`
(per-particle labels and/or latents keyed by particle name, class maps) and :func:`score_output` scores it
against the dataset's truth with :mod:`tomohet.benchmark.metrics`, next to the oracle's figure.

Conventions: particles a method left out (cryoDRGN-ET drops particles with fewer tilts than it encodes) are
scored as one extra class of their own (discrete) and are left out of the |rho| (continuous), and the count
is reported; latents are ordered by PCA before "best of the top 3 components" is taken, so a VAE's axes and a
PCA's are treated alike; latents without labels on a discrete dataset are clustered by k-means with K = the
number of true states (``tomohet.methods.landscape.cluster_latents``, as tomohet's own landscapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.mrc import read_volume
from ..errors import InputError
from .metrics import continuous_report, discrete_report, per_class_fsc

DROPPED = -1  # label of the particles a method left out


@dataclass
class CellOutput:
    """A method's answer, keyed by particle name: ``labels`` (0-based class, ``DROPPED`` for particles it left
    out) and/or ``latents`` ``[N, L]`` (NaN rows for particles left out) in the order of ``names``; ``class_maps``
    ``[K, D, D, D]`` with class k's map at index k (None: the method wrote none)."""

    names: list[str]
    labels: np.ndarray | None = None
    latents: np.ndarray | None = None
    class_maps: torch.Tensor | None = None

    def aligned(self, names: list[str]) -> CellOutput:
        """The same answer in the order of ``names``; particles it has no row for count as left out."""
        row = {n: i for i, n in enumerate(self.names)}
        unknown = [n for n in self.names if n not in set(names)]
        if unknown:
            raise InputError(None, f"the result names particle {unknown[0]!r}, which the dataset does not have")
        idx = np.array([row.get(n, -1) for n in names])
        have = idx >= 0
        labels = latents = None
        if self.labels is not None:
            labels = np.full(len(names), DROPPED)
            labels[have] = np.asarray(self.labels)[idx[have]]
        if self.latents is not None:
            z = np.asarray(self.latents, dtype=np.float64)
            latents = np.full((len(names), z.shape[1]), np.nan)
            latents[have] = z[idx[have]]
        return CellOutput(list(names), labels, latents, self.class_maps)


def pca_ordered(z: np.ndarray) -> np.ndarray:
    """Latents rotated onto their principal axes, by decreasing variance (centred)."""
    z = z - z.mean(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    return z @ vt.T


def read_run_folder(run: Path, names_from: dict[str, str] | None = None) -> CellOutput:
    """A tomohet run folder (``classify`` or ``landscape``): ``rlnClassNumber`` of ``particles.star`` (when
    written), ``latent.csv`` (when written) and ``class_NNN_map.mrc``. ``names_from`` renames the run's particle
    names (e.g. a subtomogram's ``rlnImageName`` to its ``rlnTomoParticleName``)."""
    from ..data.star import read_star

    run = Path(run)
    names: list[str] | None = None
    labels = latents = None
    latent_csv = run / "latent.csv"
    if latent_csv.exists():
        table = pd.read_csv(latent_csv)
        names = table.iloc[:, 0].astype(str).tolist()
        latents = table[[c for c in table.columns if c.startswith("z")]].to_numpy(dtype=np.float64)
    star = run / "particles.star"
    if star.exists():
        blocks = read_star(star)
        parts = blocks.get("particles")
        if parts is None:
            parts = next(v for v in blocks.values() if isinstance(v, pd.DataFrame) and "rlnClassNumber" in v)
        column = next(c for c in ("rlnTomoParticleName", "rlnGroupName", "rlnImageName") if c in parts)
        if "rlnClassNumber" in parts:
            by_name = dict(zip(parts[column].astype(str), parts["rlnClassNumber"].astype(int) - 1, strict=True))
            names = names or list(by_name)
            if names_from:  # latent.csv named by rlnImageName, particles.star by rlnTomoParticleName
                by_name.update({k: by_name[v] for k, v in names_from.items() if v in by_name})
            labels = np.array([by_name[n] for n in names])
    if names is None:
        raise InputError(run, "no result: neither particles.star with rlnClassNumber nor latent.csv")
    if names_from:
        names = [names_from.get(n, n) for n in names]
    maps = sorted(run.glob("class_[0-9][0-9][0-9]_map.mrc"))
    class_maps = torch.stack([read_volume(m)[0] for m in maps]) if maps else None
    return CellOutput(names, labels, latents, class_maps)


def _kmeans(z: np.ndarray, k: int, seed: int) -> np.ndarray:
    from ..methods.landscape import cluster_latents

    return cluster_latents(z, k, "kmeans", seed)


def score_output(out: CellOutput, prep, seed: int = 0) -> dict:
    """Metrics of one cell (``prep``: :class:`~tomohet.benchmark.datasets.PreparedDataset`), flat and
    JSON-ready, with the oracle's figure beside each headline number and the gap to it."""
    out = out.aligned(prep.names)
    scores: dict = {"n_particles": len(prep.names)}
    states, coord = prep.states, prep.coordinate
    oracle = prep.oracle or {}
    left_out = np.zeros(len(prep.names), bool)
    if out.labels is not None:
        left_out |= out.labels == DROPPED
    if out.latents is not None:
        left_out |= ~np.isfinite(out.latents).all(1)
    scores["n_left_out"] = int(left_out.sum())
    if states is not None:
        labels = out.labels
        if labels is None and out.latents is not None:
            labels = np.full(len(prep.names), DROPPED)
            labels[~left_out] = _kmeans(out.latents[~left_out], len(np.unique(states)), seed)
            scores["labels_from"] = "k-means on the latents"
        if labels is not None:
            rep = discrete_report(states, labels)
            scores.update({"ari": rep["ari"], "nmi": rep["nmi"], "accuracy": rep["accuracy"],
                           "population_error": rep["population_error"]["mean_abs"],
                           "rare_state_f1": rep["rarest_state_f1"], "n_classes": rep["n_classes"]})  # fmt: skip
            if "discrete" in oracle:
                o = oracle["discrete"]
                scores.update({"oracle_ari": o["ari"], "oracle_rare_state_f1": o["rarest_state_f1"],
                               "ari_gap_to_oracle": o["ari"] - rep["ari"]})  # fmt: skip
            scores.update(_class_map_scores(out, prep, rep["matching"]))
    if coord is not None and out.latents is not None and (~left_out).sum() > 2:
        z = pca_ordered(out.latents[~left_out])
        rep = continuous_report(coord[~left_out], z)
        scores.update({"spearman_abs": rep["spearman_abs"], "knn_preservation": rep["knn_preservation"]})
        if "continuous" in oracle:
            o = oracle["continuous"]["spearman_abs"]
            scores.update({"oracle_spearman_abs": o, "spearman_gap_to_oracle": o - rep["spearman_abs"]})
    return scores


def _class_map_scores(out: CellOutput, prep, matching: dict) -> dict:
    """Map-to-truth FSC AUC of each class map against the true map of the state it was matched to."""
    maps = out.class_maps
    true = prep.true_maps()
    if maps is None or true is None or maps.shape[1:] != true.shape[1:]:
        return {}
    map_states = (prep.meta or {}).get("map_states") or list(range(true.shape[0]))
    map_of_state = {s: i for i, s in enumerate(map_states)}
    match = {int(c): map_of_state[s] for c, s in matching.items() if int(c) >= 0 and s in map_of_state}
    per = per_class_fsc(maps, true, prep.pixel_size, {k: match[k] for k in range(maps.shape[0]) if k in match})
    aucs = [p["auc"] for p in per]
    return {"class_map_fsc_auc": [round(a, 4) for a in aucs], "class_map_fsc_auc_mean": float(np.mean(aucs))}

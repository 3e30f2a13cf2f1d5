"""Analysis of one finished run folder (``classify`` or ``landscape``, any method): everything the report shows,
computed from the folder's files alone (``result.json``, ``particles.star`` + its tomograms star, maps,
``latent.csv``), never from the method's internals.

Per run: the run summary and metrics (beside the oracle when the dataset has a ground truth), convergence,
a population table with 95 % Wilson intervals, every state's map (sections and projections), FSC curves,
the latent embedding coloured by cluster / tomogram / depth / tilt count / true state (continuous runs), the
states in their tomograms (per-tomogram views, spatial statistics against label shuffles, ChimeraX scenes),
and the per-state RELION 5 stars the run wrote (``subsets/``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.mrc import read_volume, write_volume
from ..data.relion5 import read_placements
from ..data.truth import find_ground_truth, load_truth
from ..errors import InputError
from ..physics.filters import fsc, resolution_at, shell_frequencies
from .distinct import pairwise_distinctness, supported_classes
from .embedding import pca_2d, umap_2d
from .insitu import StateMap, absolute_positions_A, plot_tomogram, write_chimerax_scene
from .latent_maps import load_linear_landscape, maps_along_path, parse_point
from .plots import plot_convergence, plot_embedding, plot_fsc, plot_state_gallery
from .selection import run_labels
from .spatial import neighbour_orientation, spatial_statistics

log = logging.getLogger("tomohet")

MAX_TOMOGRAM_FIGURES = 8  # per-tomogram views shown in the report (all are written)


@dataclass
class RunAnalysis:
    """What the report shows of one run: facts, tables (lists of row dicts) and figures (caption, file)."""

    name: str
    run_dir: Path
    out_dir: Path
    summary: dict
    metrics: dict = field(default_factory=dict)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    files: list[tuple[str, Path]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def wilson_interval(k: np.ndarray, n: int, z: float = 1.96) -> tuple[np.ndarray, np.ndarray]:
    """95 % Wilson score interval of proportions ``k / n`` (Wilson 1927, J. Am. Stat. Assoc. 22:209)."""
    p = np.asarray(k, dtype=float) / max(n, 1)
    den = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / den
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def _load_result(run_dir: Path) -> dict:
    path = run_dir / "result.json"
    if not path.is_file():
        raise InputError(run_dir, "not a finished tomohet run: no result.json (run classify or landscape first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, f"unreadable result.json ({e})") from e


def _state_maps(run_dir: Path, result: dict) -> dict[int, Path]:
    """Map file per class (1-based): classify's ``class_NNN_map.mrc``, landscape's ``class_NNN_centre.mrc``."""
    maps = {}
    for pattern in ("class_*_map.mrc", "class_*_centre.mrc"):
        for p in sorted(run_dir.glob(pattern)):
            maps.setdefault(int(p.name.split("_")[1]), p)
    return maps


def _truth(run_dir: Path, result: dict, names: list[str]) -> tuple[np.ndarray | None, dict[int, Path]]:
    """True state per particle and true map per state from the run's ``ground_truth.csv`` (given to the run, or
    beside its input as ``classify`` finds it), else ``(None, {})`` when there is none or it does not fit."""
    opts = result.get("options", {})
    path = Path(opts["truth"]) if opts.get("truth") else None
    if path is None and opts.get("input_path"):
        path = find_ground_truth(Path(opts["input_path"]))
    if path is None or not path.is_file():
        return None, {}
    try:
        table = load_truth(path, names)
    except InputError:
        return None, {}
    maps = {}
    if "map_file" in table.columns:
        for st, f in zip(table["state"], table["map_file"], strict=True):
            if isinstance(f, str) and (path.parent / f).is_file():
                maps.setdefault(int(st), path.parent / f)
    return table["state"].to_numpy(), maps


def analyze_run(run_dir: str | Path, out_dir: str | Path, *, n_shuffles: int = 199, seed: int = 0,
                paths: list[str] | None = None) -> RunAnalysis:  # fmt: skip
    """Analyse a finished run folder into ``out_dir`` (figures, tables, ChimeraX scenes); see the module
    docstring. ``paths``: ``"A:B"`` latent paths of a linear landscape (points as :func:`.latent_maps.parse_point`)
    along which maps are written (``path_I_SS.mrc``) and shown."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    result = _load_result(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = result.get("command", "run")
    ana = RunAnalysis(name=run_dir.name, run_dir=run_dir, out_dir=out_dir, summary={
        "command": kind, "method": result.get("method"), "seed": result.get("seed"),
        "input": result.get("options", {}).get("input_path"), "timings_s": result.get("timings_s", {}),
        "peak_memory_mb": result.get("peak_memory_mb"), "versions": result.get("versions", {}),
        "images_per_s_per_iteration": result.get("images_per_s_per_iteration"),
        "consensus_resolution_A": result.get("consensus_resolution_A"),
    })  # fmt: skip
    ana.metrics = result.get("metrics", {})
    placements = _placements(ana, run_dir, result)
    names, labels = _names_and_labels(run_dir, placements)
    truth, truth_maps = _truth(run_dir, result, names)

    iterations = result.get("iterations") or []
    if iterations and any("log_likelihood" in e for e in iterations):
        ana.figures.append(("Convergence: log-likelihood and particles moving per iteration",
                            plot_convergence(out_dir / "convergence.png", iterations)))  # fmt: skip

    if labels is not None:
        _populations(ana, labels, truth)
        _maps_and_fsc(ana, run_dir, result, labels, truth, truth_maps)
    _embedding(ana, run_dir, names, placements, labels, truth, seed)
    if paths:
        _paths(ana, run_dir, paths)
    if labels is not None and placements is not None:
        _in_situ(ana, run_dir, placements, labels, n_shuffles, seed)
    subsets = sorted((run_dir / "subsets").glob("*_optimisation_set.star")) if (run_dir / "subsets").is_dir() else []
    ana.files += [(f"RELION 5 optimisation set of {p.name.split('_optimisation')[0].replace('_', ' ')}", p)
                  for p in subsets]  # fmt: skip
    return ana


def _placements(ana: RunAnalysis, run_dir: Path, result: dict):
    """Particle positions from the run's ``particles.star`` (else its input); None, with a note, where the
    particles are not a RELION 5 project (Warp v1 image series, RELION 3.1 subtomograms): no in-situ part."""
    star = run_dir / "particles.star"
    tomos = run_dir / "tomograms.star"
    source = star if star.is_file() else Path(result.get("options", {}).get("input_path") or star)
    try:
        return read_placements(source, tomos if star.is_file() and tomos.is_file() else None)
    except (InputError, OSError, KeyError, ValueError) as e:
        ana.notes.append(f"No in-situ views: particle positions need a RELION 5 particles star ({e}).")
        return None


def _names_and_labels(run_dir: Path, placements) -> tuple[list[str], np.ndarray | None]:
    """Particle names and class numbers (1-based; None for an unclustered landscape)."""
    if placements is not None:
        table = placements.table
        labels = table["rlnClassNumber"].astype(int).to_numpy() if "rlnClassNumber" in table else None
        return placements.names, labels
    try:
        names, labels = run_labels(run_dir)
        return names, labels
    except InputError:
        latent = run_dir / "latent.csv"
        if latent.is_file():
            return pd.read_csv(latent).iloc[:, 0].astype(str).tolist(), None
        raise InputError(run_dir, "the run folder has neither particles.star, posteriors.csv nor latent.csv") from None


def _populations(ana: RunAnalysis, labels: np.ndarray, truth: np.ndarray | None) -> None:
    n = len(labels)
    classes = np.unique(labels)
    counts = np.array([(labels == k).sum() for k in classes])
    lo, hi = wilson_interval(counts, n)
    rows = [{"class": int(k), "particles": int(c), "fraction": round(c / n, 3), "95% CI": f"{lo[i]:.3f}–{hi[i]:.3f}"}
            for i, (k, c) in enumerate(zip(classes, counts, strict=True))]  # fmt: skip
    if truth is not None:  # the true state that dominates each class, and its share
        for row, k in zip(rows, classes, strict=True):
            t = truth[labels == k]
            vals, cnt = np.unique(t, return_counts=True)
            row["main true state"] = f"{vals[cnt.argmax()]} ({cnt.max() / len(t):.0%})"
    ana.tables["Populations"] = rows


def _maps_and_fsc(ana: RunAnalysis, run_dir: Path, result: dict, labels: np.ndarray, truth: np.ndarray | None,
                  truth_maps: dict[int, Path]) -> None:  # fmt: skip
    maps = _state_maps(run_dir, result)
    if not maps:
        ana.notes.append("No class maps in the run folder (run with --class-maps to reconstruct them).")
        return
    vols = {f"class {k}": read_volume(p)[0] for k, p in maps.items()}
    gallery = plot_state_gallery(ana.out_dir / "state_maps.png", {k: v.numpy() for k, v in vols.items()})
    ana.figures.append(("Map of every state: central sections and projections", gallery))
    curves, freq = {}, None
    for k in maps:
        f = run_dir / f"class_{k:03d}_fsc.csv"
        if f.is_file():
            df = pd.read_csv(f)
            freq = df.iloc[:, 0].to_numpy()
            curves[f"class {k}"] = df.iloc[:, 1].to_numpy()
    if curves and freq is not None:
        ana.figures.append(("Gold-standard FSC of each class map (half maps)",
                            plot_fsc(ana.out_dir / "fsc_classes.png", freq, curves, None)))  # fmt: skip
    halves = {k: tuple(read_volume(run_dir / f"class_{k:03d}_{h}.mrc")[0] for h in ("half1", "half2"))
              for k in maps if (run_dir / f"class_{k:03d}_half2.mrc").is_file()}  # fmt: skip
    if len(halves) >= 2:
        rows = pairwise_distinctness(halves, read_volume(next(iter(maps.values())))[1])
        ana.tables["Do the class maps differ beyond their noise? (pairwise FSC vs the same-map expectation)"] = rows
        ana.summary["classes supported by distinct maps"] = supported_classes(rows, sorted(halves))
    if truth is None or not truth_maps:
        return
    rows, curves = [], {}
    for k in maps:  # each class against the true map of the state that dominates it
        vals, cnt = np.unique(truth[labels == k], return_counts=True)
        state = int(vals[cnt.argmax()]) if len(vals) else None
        if state not in truth_maps:
            continue
        ref, apix = read_volume(truth_maps[state])
        vol = vols[f"class {k}"]
        if ref.shape != vol.shape:
            continue
        c = fsc(vol, ref).float()
        curves[f"class {k} vs state {state}"] = c.numpy()
        rows.append({"class": k, "true state": state, "FSC 0.5 (Å)": resolution_at(c, vol.shape[-1], apix, 0.5),
                     "FSC 0.143 (Å)": resolution_at(c, vol.shape[-1], apix, 0.143)})  # fmt: skip
    if rows:
        ana.tables["Class maps against the true maps"] = rows
        freq = shell_frequencies(vols[next(iter(vols))].shape[-1], apix).numpy()
        ana.figures.append(("FSC of each class map against the true map of its main state",
                            plot_fsc(ana.out_dir / "fsc_vs_truth.png", freq, curves, None)))  # fmt: skip


def _saved_umap(run_dir: Path, names: list[str]) -> np.ndarray | None:
    """The run's own UMAP coordinates ``[N, 2]`` (``latent_umap.csv``, written by ``landscape``) in the order of
    ``names``; None when the file is missing or does not list every particle (then UMAP is recomputed)."""
    path = run_dir / "latent_umap.csv"
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    lookup = {n: i for i, n in enumerate(df.iloc[:, 0].astype(str))}
    idx = np.array([lookup.get(n, -1) for n in names])
    if (idx < 0).any() or not {"umap0", "umap1"} <= set(df.columns):
        return None
    return df[["umap0", "umap1"]].to_numpy()[idx]


def _embedding(ana: RunAnalysis, run_dir: Path, names: list[str], placements, labels, truth, seed: int = 0) -> None:
    latent = run_dir / "latent.csv"
    if not latent.is_file():
        return
    df = pd.read_csv(latent)
    lookup = {n: i for i, n in enumerate(df.iloc[:, 0].astype(str))}
    idx = np.array([lookup.get(n, -1) for n in names])
    if (idx < 0).any():
        ana.notes.append("latent.csv does not list every particle of particles.star; embedding skipped.")
        return
    z = df.filter(regex=r"^z\d+$").to_numpy()[idx]
    xy = pca_2d(z)
    how = {1: "latent z0", 2: "latents z0, z1"}.get(z.shape[1], "PCA of the latents")
    col: dict[str, tuple[np.ndarray, bool]] = {}
    if labels is not None:
        col["cluster"] = (labels, True)
    if len(z) >= 20:  # density-based clusters need no K; -1 = noise (Campello et al. 2013)
        from sklearn.cluster import HDBSCAN

        hdb = HDBSCAN(min_cluster_size=max(10, len(z) // 50), copy=True).fit_predict(z[:, :8])
        col["HDBSCAN"] = (hdb, True)
        sizes = {int(k): int((hdb == k).sum()) for k in np.unique(hdb)}
        ana.tables["HDBSCAN clusters of the latents (-1: noise)"] = [{"cluster": k, "particles": n}
                                                                    for k, n in sizes.items()]  # fmt: skip
    if truth is not None:
        col["true state"] = (truth, True)
    if placements is not None:
        col["tomogram"] = (placements.tomogram, True)
        col["depth Z (Å)"] = (placements.position_A[:, 2], False)
    if placements is not None and "rlnTomoVisibleFrames" in placements.table:
        tilts = [sum(int(float(v)) for v in str(s).strip("[]").split(",") if v.strip())
                 for s in placements.table["rlnTomoVisibleFrames"]]  # fmt: skip
        col["tilt count"] = (np.array(tilts), False)
    ana.figures.append((f"Landscape ({how}), coloured by cluster, truth and nuisances (structure that follows "
                        "tomogram, depth or tilt count is not biology)",
                        plot_embedding(ana.out_dir / "embedding.png", xy, col, how)))  # fmt: skip
    umap_xy = _saved_umap(run_dir, names)
    if umap_xy is None:
        umap_xy = umap_2d(z, seed)
    if umap_xy is not None:  # neighbourhoods kept, distances between clusters not
        fig = plot_embedding(ana.out_dir / "embedding_umap.png", umap_xy, col, "UMAP of the latents")
        ana.figures.append(("Landscape (UMAP of the latents), the same colourings", fig))


def _paths(ana: RunAnalysis, run_dir: Path, paths: list[str]) -> None:
    model = load_linear_landscape(run_dir)
    if model is None:
        raise InputError(run_dir, "--path needs a linear landscape run (mean.mrc and component_NN.mrc)")
    for i, spec in enumerate(paths, start=1):
        a, sep, b = spec.partition(":")
        if not sep:
            raise InputError(run_dir, f"--path {spec!r}: give two points as A:B, e.g. c1:c3 or z0=-2:z0=2")
        maps = maps_along_path(model, parse_point(a, model, run_dir), parse_point(b, model, run_dir))
        for step, v in enumerate(maps):
            write_volume(ana.out_dir / f"path_{i}_{step:02d}.mrc", v, model.pixel_size)
        steps = np.linspace(0, 1, len(maps))
        fig = plot_state_gallery(ana.out_dir / f"path_{i}.png",
                                 {f"t={t:.2f}": v.numpy() for t, v in zip(steps, maps, strict=True)})  # fmt: skip
        ana.figures.append((f"Maps along the path {a} -> {b} (7 steps; files path_{i}_SS.mrc)", fig))


def _in_situ(ana: RunAnalysis, run_dir: Path, placements, labels: np.ndarray, n_shuffles: int, seed: int) -> None:
    pos = absolute_positions_A(placements.position_A, placements.tomogram_size_A)
    names = {int(k): f"class {k}" for k in np.unique(labels)}
    stats = spatial_statistics(placements.position_A, labels, placements.tomogram, n_shuffles=n_shuffles, seed=seed)
    orient = neighbour_orientation(placements.position_A, placements.rotation, labels, placements.tomogram,
                                   n_shuffles=n_shuffles, seed=seed)  # fmt: skip
    ana.tables["Spatial statistics (label-shuffle null within tomograms)"] = [
        {**s.row(), "state": f"class {s.state}", **orient.get(s.state, {}),
         "clustered (p<0.01)": bool(min(s.p_nn, s.p_ripley) < 0.01)}
        for s in stats
    ]  # fmt: skip
    maps = {}
    for k, p in _state_maps(run_dir, {}).items():
        v, apix = read_volume(p)
        maps[k] = StateMap(p, v.shape[-1], apix, float(np.percentile(v.numpy(), 85)))
    scenes = ana.out_dir / "chimerax"
    scenes.mkdir(exist_ok=True)
    tomos = sorted(np.unique(placements.tomogram))
    for i, t in enumerate(tomos):
        sel = placements.tomogram == t
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in t)
        if i < MAX_TOMOGRAM_FIGURES:
            fig = plot_tomogram(ana.out_dir / f"insitu_{safe}.png", pos[sel], labels[sel],
                                placements.tomogram_size_A[sel][0], t, names)  # fmt: skip
            ana.figures.append((f"Tomogram {t}: each particle's state at its position", fig))
        scene = write_chimerax_scene(scenes / f"{safe}.cxc", pos[sel], placements.rotation[sel], labels[sel], maps,
                                     names)  # fmt: skip
        ana.files.append((f"ChimeraX scene of {t} (open with ChimeraX)", scene))
    if len(tomos) > MAX_TOMOGRAM_FIGURES:
        ana.notes.append(f"{len(tomos)} tomograms: the report shows {MAX_TOMOGRAM_FIGURES}; all views are in "
                         f"{ana.out_dir}.")  # fmt: skip

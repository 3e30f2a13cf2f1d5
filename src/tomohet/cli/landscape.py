"""``tomohet landscape``: continuous landscapes (PCA family: ``ppca``, ``wmd-pca``, ``msvd``; see
:mod:`tomohet.methods.landscape`) with the outputs of DESIGN.md's contract.

Writes into ``out``: ``latent.csv`` (particle name, ``z0, z1, ...``; ``latent_sd.csv`` with posterior sds where
the method gives them), ``mean.mrc``, ``component_NN.mrc`` and ``component_NN_along_SS.mrc`` (7 maps over +-2 sd of
latent NN), ``explained_variance.csv`` + ``.png``, ``latent_scatter.png``, ``latent_embedding.png`` (PCA and UMAP
of the latents; UMAP coordinates in ``latent_umap.csv``) and, with ``clusters``: the ``xd`` clusters (``ppca``) or
k-means labels as ``rlnClassNumber`` (the others as ``tomohet*ClassNumber``) in ``particles.star`` (+ the files the
next job reads), ``clusters.csv``, ``subsets/class_NNN_*`` per cluster and gold-standard per-cluster maps
(``class_NNN_half1/half2/map.mrc``, FSC CSV/PNG, central sections) as ``classify`` writes them; ``result.json``
with timings, peak memory and, where ``ground_truth.csv`` is beside the input, the metrics next to the oracle's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..benchmark.metrics import adjusted_rand_index, continuous_report, discrete_report, map_fsc
from ..data.annotate import write_annotated
from ..data.mrc import read_volume, write_volume
from ..data.truth import find_ground_truth, has_pose_errors, load_truth, true_geometry
from ..errors import InputError
from ..methods.distributed import writes_files
from ..methods.landscape import cluster_latents, get_method, landscape_maps, maps_along_component
from ..methods.pose_refinement import refine_poses
from ..methods.registry import options_from
from ..methods.result import Result
from ..parallel import in_torchrun
from ..physics.reconstruct import reconstruct
from ..physics.rotations import mirror_z
from .classify import pose_metrics, pose_summary, posed_outputs, write_class_map
from .options import OptionError, check_landscape, check_local_search, read_focus_mask, read_input
from .runlog import Run, stage_reporter

ALONG_STEPS = 7
ALONG_SPAN_SD = 2.0


def _name_column(ds) -> str:
    if ds.kind == "3d":  # the names come from rlnTomoParticleName where the star has it (data.subtomo)
        blocks = ds.tables.get("blocks", {}).values()
        named = any(hasattr(b, "columns") and {"rlnImageName", "rlnTomoParticleName"} <= set(b.columns) for b in blocks)
        return "rlnTomoParticleName" if named else "rlnImageName"
    return "rlnGroupName" if ds.source_format == "warp_v1" else "rlnTomoParticleName"


def run_landscape(
    input_path: Path,
    out: Path,
    method: str = "ppca",
    components: int = 8,
    clusters: int | None = None,
    seed: int = 0,
    focus_mask: Path | None = None,
    resolution_limit: float | None = None,
    iterations: int | None = None,
    tomograms: Path | None = None,
    executor=None,
    max_dose: float | None = None,
    flip_hand: bool = False,
    truth: Path | None = None,
    class_maps: bool = True,
    oracle: bool = True,
    pixel_size: float | None = None,
    overwrite: bool = False,
    method_options: dict | None = None,
    local_search: tuple[float, float, float | None, float | None] = (0.0, 0.0, None, None),
) -> dict:
    """Continuous analysis of ``input_path`` into ``out`` (see the module docstring); returns result.json's
    content. ``oracle=False`` skips the oracle's figures (a pass over the data with every true map).
    ``method_options`` (``{"basis": 8, "beta": 1.0, "device": "cpu"}`` ...): fields of the method's options
    class; None values keep the defaults, a field the method does not have is a one-line error.
    ``local_search`` (range in degrees, range in pixels, prior widths or None): refine the poses first
    (:func:`~tomohet.methods.pose_refinement.refine_poses`) and fit the landscape at the refined poses."""
    input_path, out = Path(input_path), Path(out)
    spec = get_method(method)
    check_landscape(components, clusters, iterations, resolution_limit, max_dose, pixel_size)
    check_local_search(*local_search, "em")
    if (local_search[0] > 0 or local_search[1] > 0) and in_torchrun():
        flag = "--local-angles" if local_search[0] > 0 else "--local-shifts"
        raise OptionError(flag, "the pose refinement runs in one process: refine first (tomohet refine), then run "
                          "the landscape under torchrun")  # fmt: skip
    extra_opts = {k: v for k, v in (method_options or {}).items() if v is not None}
    fields = {f.name for f in dataclasses.fields(spec.options_cls)}
    for key in extra_opts:
        if key not in fields:
            raise InputError(None, f"--{key.replace('_', '-')} does not apply to --method {method}",
                             f"--{key.replace('_', '-')}")  # fmt: skip
    if not writes_files():  # a process of a torchrun job other than rank 0 (the executor started the job)
        return _follow(spec, input_path, out, method, components, clusters, seed, focus_mask, resolution_limit,
                       iterations, tomograms, executor, max_dose, flip_hand, pixel_size, overwrite,
                       extra_opts)  # fmt: skip
    options = {k: v for k, v in locals().items() if k not in ("executor", "spec", "fields", "extra_opts")}
    with Run(out, "landscape", options) as run:
        return _landscape(run, spec, input_path, run.out, method, components, clusters, seed, focus_mask,
                          resolution_limit, iterations, tomograms, executor, max_dose, flip_hand, truth, class_maps,
                          oracle, pixel_size, overwrite, extra_opts, local_search)  # fmt: skip


def _checked_input(spec, input_path: Path, method: str, clusters, tomograms, pixel_size, flip_hand):
    """The dataset, checked against the method and the options (one-line errors naming the file and option)."""
    ds = read_input(input_path, tomograms, pixel_size)
    subtomograms = ds.kind == "3d"
    if not spec.accepts(subtomograms):
        kind = "3D subtomograms" if subtomograms else "2D tilt-series stacks"
        wants = {"2d": "2D tilt-series stacks", "3d": "3D subtomograms"}.get(spec.inputs, spec.inputs)
        raise InputError(input_path, f"method {method!r} works on {wants}, but this input holds {kind}", "--method")
    if clusters is not None and clusters > ds.n_particles:
        raise InputError(None, f"cannot make {clusters} clusters of {ds.n_particles} particles", "--clusters")
    if flip_hand:
        if subtomograms:
            raise InputError(input_path, "--flip-hand applies to 2D tilt-series stacks", "--flip-hand")
        ds.rotations = ds.rotations @ mirror_z()
    return ds


def _method_options(spec, components, seed, resolution_limit, iterations, max_dose, extra_opts: dict):
    """The method's options from the command's (None keeps a default; ``extra_opts``: the method's own fields)."""
    return options_from(spec.options_cls, n_components=components, seed=seed, resolution_limit_A=resolution_limit,
                        n_iter=iterations, max_dose=max_dose, **extra_opts)  # fmt: skip


def _follow(spec, input_path: Path, out: Path, method, components, clusters, seed, focus_mask, resolution_limit,
            iterations, tomograms, executor, max_dose, flip_hand, pixel_size, overwrite,
            extra_opts) -> dict:  # fmt: skip
    """Another process than rank 0 of a ``torchrun`` job: the same fit (its share of every pass, its share of
    the networks' batches), no files, no progress; rank 0 writes everything. It resumes from rank 0's
    checkpoint, unless ``overwrite``."""
    ds = _checked_input(spec, input_path, method, clusters, tomograms, pixel_size, flip_hand)
    mask = read_focus_mask(focus_mask, ds.box)
    opts = _method_options(spec, components, seed, resolution_limit, iterations, max_dose, extra_opts)
    try:
        spec.fit(ds, opts, progress=None, focus_mask=mask, executor=executor,
                 checkpoint=None if overwrite else out / "checkpoint.pt")  # fmt: skip
    finally:
        executor.close()
    return {}


def _landscape(run: Run, spec, input_path: Path, out: Path, method, components, clusters, seed, focus_mask,
               resolution_limit, iterations, tomograms, executor, max_dose, flip_hand, truth, class_maps, oracle,
               pixel_size, overwrite, extra_opts, local_search) -> dict:  # fmt: skip
    with run.timed("read"):
        ds = _checked_input(spec, input_path, method, clusters, tomograms, pixel_size, flip_hand)
    read_ds, refined = ds, None
    run.log.info("%s", ds.summary())
    subtomograms = ds.kind == "3d"
    mask = read_focus_mask(focus_mask, ds.box)
    opts = _method_options(spec, components, seed, resolution_limit, iterations, max_dose, extra_opts)
    n_images = ds.n_particles if subtomograms else ds.n_images
    unit = "subtomograms" if subtomograms else "images"
    with run.progress() as prog:
        progress = stage_reporter(prog, ds.n_particles, n_images, unit)

        checkpoint = out / "checkpoint.pt"
        pose_checkpoint = out / "checkpoint_poses.pt"
        if overwrite:
            checkpoint.unlink(missing_ok=True)
            pose_checkpoint.unlink(missing_ok=True)
        if local_search[0] > 0 or local_search[1] > 0:  # the landscape at refined poses
            with run.timed("poses"):
                refined = refine_poses(ds, *local_search, seed=seed, max_dose=max_dose,
                                       progress=progress, checkpoint=pose_checkpoint)  # fmt: skip
            ds = posed_outputs(ds, refined, out, run)
        with run.timed("landscape"):
            try:
                if callable(executor) and not hasattr(executor, "map_partitions"):
                    executor = executor()  # a factory: the cluster starts once the data are read and checked
                result = spec.fit(ds, opts, progress=progress, focus_mask=mask, executor=executor,
                                  checkpoint=checkpoint)  # fmt: skip
            finally:
                if hasattr(executor, "close"):
                    executor.close()
    for e in result.log:
        run.log.info("iteration %s: %.1f s, %s %s/s", e.get("iteration"), e.get("seconds", 0.0),
                     e.get("images_per_s", "?"), unit)  # fmt: skip
    with run.timed("write"):
        fields = write_landscape(ds, result, out, run)
    if clusters is not None:
        with run.timed("clusters"):
            fields["clusters"] = _write_clusters(ds, result, out, clusters, seed, class_maps, run)
    with run.timed("embedding"):
        labels = fields["clusters"][f"labels_{fields['clusters']['class_number_from']}"] if clusters else None
        _write_embeddings(ds, out, np.asarray(result.latents, dtype=np.float64), labels, result.method, seed)
    if refined is not None:
        fields["poses"] = {**pose_summary(refined), "refinement_seconds": round(refined.extra["seconds"], 1),
                           "refinement": refined.log}  # fmt: skip
    truth = truth or find_ground_truth(input_path)
    if truth is not None:
        with run.timed("metrics"):
            fields["metrics"] = _metrics_against_truth(ds, truth, result, fields.get("clusters"), oracle, run)
            if refined is not None and has_pose_errors(load_truth(truth, read_ds.names), read_ds):
                fields["metrics"]["poses"] = pose_metrics(read_ds, load_truth(truth, read_ds.names), refined, run)
    for key in ("consensus_resolution_A", "e_step_limit_A", "working_box", "consensus_seconds", "init_seconds",
                "held_out_fraction", "final_gain_held_in", "final_gain_held_out", "final_kl_per_dimension",
                "best_epoch", "variability_mask_fraction", "input", "sectors"):  # fmt: skip
        if key in result.extra:
            fields[key] = result.extra[key]
    secs = [e["seconds"] for e in result.log if e.get("seconds")]
    if secs:
        fields[f"{unit}_per_s_per_iteration"] = float(np.mean([n_images / max(s, 1e-9) for s in secs]))
    fields["iterations"] = result.log
    if "clusters" in fields:  # per-particle labels are in particles.star and clusters.csv, not result.json
        fields["clusters"] = {k: v for k, v in fields["clusters"].items() if not k.startswith("labels_")}
    run.finish(result.method, seed, **fields)
    return json.loads((out / "result.json").read_text())


def write_landscape(ds, result: Result, out: Path, run: Run | None = None) -> dict:
    """The per-method outputs of a landscape ``result``: latents, maps, maps along components, spectrum, plots."""
    out = Path(out)
    z = np.asarray(result.latents, dtype=np.float64)
    n_comp = z.shape[1]
    cols = [f"z{k}" for k in range(n_comp)]
    name_col = _name_column(ds)
    df = pd.DataFrame(z, columns=cols)
    df.insert(0, name_col, list(ds.names))
    df.to_csv(out / "latent.csv", index=False, float_format="%.6g")
    sd = result.extra.get("latent_sd")
    if sd is not None:
        sdf = pd.DataFrame(np.asarray(sd), columns=[f"sd{k}" for k in range(n_comp)])
        sdf.insert(0, name_col, list(ds.names))
        sdf.to_csv(out / "latent_sd.csv", index=False, float_format="%.6g")
    apix = result.pixel_size
    write_volume(out / "mean.mrc", result.extra["mean_map"], apix)
    if result.extra.get("variability_mask") is not None:  # where the basis may differ from the mean (ppca)
        write_volume(out / "variability_mask.mrc", result.extra["variability_mask"], apix)
    decoder = result.extra.get("decoder")
    if decoder is not None:  # a non-linear landscape: its decoder, no component maps to add up
        torch.save(decoder, out / "decoder.pt")
    for k in range(n_comp):
        if decoder is None:
            write_volume(out / f"component_{k:02d}.mrc", result.volumes[k], apix)
        values, maps = maps_along_component(result, k, ALONG_STEPS, ALONG_SPAN_SD)
        for s in range(ALONG_STEPS):
            write_volume(out / f"component_{k:02d}_along_{s:02d}.mrc", maps[s], apix)
    var = np.asarray(result.extra.get("explained_variance", z.var(0)), dtype=np.float64)
    ratio = np.asarray(result.extra.get("explained_variance_ratio", var / max(var.sum(), 1e-30)))
    pd.DataFrame({"component": np.arange(n_comp), "explained_variance": var, "explained_variance_ratio": ratio}).to_csv(
        out / "explained_variance.csv", index=False, float_format="%.6g"
    )
    _plot_spectrum(out / "explained_variance.png", var, ratio, result.method)
    _plot_scatter(out / "latent_scatter.png", z, None, result.method)
    if run is not None:
        run.log.info("%d components; explained variance ratio %s", n_comp, np.round(ratio, 3).tolist())
    return {"n_components": n_comp, "explained_variance": var.tolist(), "explained_variance_ratio": ratio.tolist(),
            "ratio_of": result.extra.get("ratio_of", "components"), "latent_file": "latent.csv",
            "along_steps": ALONG_STEPS, "along_span_sd": ALONG_SPAN_SD}  # fmt: skip


def _write_clusters(ds, result: Result, out: Path, k: int, seed: int, class_maps: bool, run: Run) -> dict:
    """Clusters of the latents (k-means, GMM and, where the result carries each particle's latent likelihood,
    the deconvolved mixture ``xd``, which then gives ``rlnClassNumber``); particles.star, subsets and per-cluster
    maps as classify."""
    z = np.asarray(result.latents, dtype=np.float64)
    labels = {"kmeans": cluster_latents(z, k, "kmeans", seed), "gmm": cluster_latents(z, k, "gmm", seed)}
    information = result.extra.get("latent_information")
    if information is not None:
        labels["xd"] = cluster_latents(z, k, "xd", seed, information)
    chosen = "xd" if "xd" in labels else "kmeans"
    assigned = labels[chosen]
    column = {"kmeans": "tomohetKmeansClassNumber", "gmm": "tomohetGmmClassNumber", "xd": "tomohetXdClassNumber"}
    columns = {"rlnClassNumber": assigned + 1, **{column[m]: v + 1 for m, v in labels.items() if m != chosen}}
    next_input = write_annotated(ds, out, columns)
    pd.DataFrame({_name_column(ds): list(ds.names), **{m: v + 1 for m, v in labels.items()}}).to_csv(
        out / "clusters.csv", index=False
    )
    _plot_scatter(out / "latent_scatter.png", z, assigned, result.method)
    subtomograms = ds.kind == "3d"
    recs = None
    if subtomograms and class_maps:  # gold-standard halves from the subtomograms (as classify)
        from ..methods.em3d import EM3DClassifier, EM3DOptions

        recs = EM3DClassifier(ds, EM3DOptions(n_classes=k)).class_reconstructions(assigned, ds.half_set)
    entries = []
    for c in range(k):
        members = np.flatnonzero(assigned == c)
        entry = {"class": c + 1, "n": int(len(members)), "fraction": float(len(members) / ds.n_particles),
                 "latent_centre": z[members].mean(0).tolist() if len(members) else None}  # fmt: skip
        if len(members):  # the map at the cluster centre of the landscape
            centre = landscape_maps(result, z[members].mean(0, keepdims=True))[0]
            write_volume(out / f"class_{c + 1:03d}_centre.mrc", centre, result.pixel_size)
        if len(members) >= 2:
            entry["particles"] = str(write_annotated(ds, out / "subsets", columns, members, f"class_{c + 1:03d}"))
        if class_maps and len(members) >= 4:
            rec = recs[c] if recs is not None else reconstruct(ds, members)
            if rec is not None:
                write_class_map(out, c, rec, f"cluster {c + 1}")
                entry["resolution_A"] = rec.resolution
        entries.append(entry)
    gm = labels["gmm"]
    run.log.info("clusters (%s) sizes %s; k-means vs GMM ARI %.3f", chosen, [e["n"] for e in entries],
                 adjusted_rand_index(labels["kmeans"], gm))  # fmt: skip
    return {"k": k, "classes": entries, "next_input": str(Path(next_input).name), "class_number_from": chosen,
            "kmeans_vs_gmm_ari": adjusted_rand_index(labels["kmeans"], gm),
            **{f"labels_{m}": v for m, v in labels.items()}}  # fmt: skip


def _metrics_against_truth(ds, truth_path: Path, result: Result, clusters: dict | None, with_oracle: bool, run: Run):
    """|Spearman rho| of each top component with the true coordinate, ARI of the clusters, FSC of the maps at the
    ends of the best component against the true end states, and the oracle's figures beside them."""
    from ..benchmark.oracle import oracle

    rows = load_truth(truth_path, ds.names)  # one row per particle, in the dataset's order
    true_ds = true_geometry(ds, rows, truth_path) or ds  # what the oracle scores
    z = np.asarray(result.latents, dtype=np.float64)
    metrics: dict = {}
    meta_path = truth_path.parent / "dataset.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    coord = rows["coordinate"].to_numpy(dtype=np.float64) if "coordinate" in rows else None
    continuous = coord is not None and np.isfinite(coord).all() and np.ptp(coord) > 0
    if continuous:
        from scipy.stats import spearmanr

        rep = continuous_report(coord, z)
        per = [abs(float(spearmanr(coord, z[:, k]).statistic)) for k in range(min(3, z.shape[1]))]
        rep["spearman_abs_per_component"] = per
        metrics["method"] = rep
        if meta is not None and meta.get("map_coordinates") is not None:
            maps = torch.stack([read_volume(truth_path.parent / f)[0] for f in meta["maps"]])
            mc = np.asarray(meta["map_coordinates"], dtype=np.float64)
            best = rep["spearman_component"]
            values, along = maps_along_component(result, best, ALONG_STEPS, ALONG_SPAN_SD)
            lo, hi = (0, ALONG_STEPS - 1) if rep["spearman"] > 0 else (ALONG_STEPS - 1, 0)
            ends = {}
            for label, step, target in (("low", lo, int(np.argmin(mc))), ("high", hi, int(np.argmax(mc)))):
                f = map_fsc(along[step], maps[target], ds.pixel_size)
                ends[label] = {"coordinate": float(mc[target]), "fsc_auc": f["auc"],
                               "resolution_0.5": f["resolution_0.5"],
                               "resolution_0.143": f["resolution_0.143"]}  # fmt: skip
            metrics["end_maps_fsc"] = {"component": best, "span_sd": ALONG_SPAN_SD, **ends}
            if with_oracle and ds.kind == "2d":
                o = oracle(true_ds, maps, meta["noise_sigma"], coordinates=mc)
                metrics["oracle"] = continuous_report(coord, o.coordinate[:, None])
    if "map_file" in rows and meta is not None:
        metrics["per_particle_fsc"] = per_particle_fsc(result, rows["map_file"].astype(str).to_numpy(),
                                                       truth_path.parent, ds.pixel_size)  # fmt: skip
    states = rows["state"].to_numpy() if "state" in rows else None
    if states is not None and clusters is not None and len(np.unique(states)) > 1:
        for m in ("kmeans", "gmm", "xd"):
            if f"labels_{m}" in clusters:
                metrics[f"clusters_{m}"] = discrete_report(states, clusters[f"labels_{m}"])
        if (with_oracle and meta is not None and meta.get("map_coordinates") is None
                and ds.kind == "2d"):  # fmt: skip
            maps = torch.stack([read_volume(truth_path.parent / f)[0] for f in meta["maps"]])
            o = oracle(true_ds, maps, meta["noise_sigma"], np.array(meta["abundances"]))
            metrics["oracle_discrete"] = discrete_report(states, o.labels)
    msg = []
    if "method" in metrics:
        msg.append(f"best top-3 |rho| {metrics['method']['spearman_abs']:.3f}")
    if "oracle" in metrics:
        msg.append(f"oracle |rho| {metrics['oracle']['spearman_abs']:.3f}")
    for m, name in (("xd", "xd"), ("kmeans", "k-means")):
        if f"clusters_{m}" in metrics:
            msg.append(f"{name} ARI {metrics[f'clusters_{m}']['ari']:.3f}")
    if "oracle_discrete" in metrics:
        msg.append(f"oracle ARI {metrics['oracle_discrete']['ari']:.3f}")
    if "per_particle_fsc" in metrics:
        pp = metrics["per_particle_fsc"]
        msg.append(f"per-particle map FSC AUC {pp['fsc_auc_mean']:.3f} (mean map {pp['mean_map_fsc_auc_mean']:.3f})")
    run.log.info("against ground truth: %s", ", ".join(msg) or "no continuous coordinate or clusters to score")
    return metrics


PER_PARTICLE_FSC_SAMPLE = 300  # particles scored (seeded sample): one map each from the landscape


def per_particle_fsc(result: Result, map_files: np.ndarray, folder: Path, pixel_size: float,
                     sample: int = PER_PARTICLE_FSC_SAMPLE, seed: int = 0) -> dict:  # fmt: skip
    """Per-particle map-to-truth FSC AUC (cryoBench's per-image FSC, Jeon et al. 2024): the landscape's map at
    each particle's latent (:func:`~tomohet.methods.landscape.landscape_maps`) against the true map that particle
    was simulated from (``map_file`` of ``ground_truth.csv``, relative to ``folder``), over a seeded sample of
    ``sample`` particles; beside it the same figure for the landscape's mean map (what a homogeneous map gives)."""
    n = len(map_files)
    idx = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    truths: dict[str, torch.Tensor] = {}
    base_auc: dict[str, float] = {}
    mean_map = result.extra["mean_map"].float()
    aucs, base = [], []
    for lo in range(0, len(idx), 50):
        part = idx[lo : lo + 50]
        maps = landscape_maps(result, np.asarray(result.latents)[part])
        for k, i in enumerate(part):
            f = str(map_files[i])
            if f not in truths:
                truths[f] = read_volume(folder / f)[0]
                base_auc[f] = map_fsc(mean_map, truths[f], pixel_size)["auc"]
            aucs.append(map_fsc(maps[k], truths[f], pixel_size)["auc"])
            base.append(base_auc[f])
    return {"n": len(idx), "fsc_auc_mean": float(np.mean(aucs)), "fsc_auc_median": float(np.median(aucs)),
            "mean_map_fsc_auc_mean": float(np.mean(base))}  # fmt: skip


def _plot_spectrum(path: Path, var: np.ndarray, ratio: np.ndarray, method: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.4), dpi=120)
    ax.bar(np.arange(len(ratio)), ratio, color="tab:blue")
    ax.set_xlabel("component")
    ax.set_ylabel("explained variance (fraction)")
    ax.set_title(f"{method}: latent variance per component", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_embeddings(ds, out: Path, z: np.ndarray, labels: np.ndarray | None, method: str, seed: int) -> None:
    """``latent_embedding.png``: the PCA and (L > 2) UMAP embeddings of the latents side by side, coloured by
    cluster or, without clusters, by ``z0``; the UMAP coordinates in ``latent_umap.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..analysis.embedding import pca_2d, umap_2d

    views = [("PCA", pca_2d(z))]
    xy = umap_2d(z, seed)
    if xy is not None:
        views.append(("UMAP", xy))
        pd.DataFrame({_name_column(ds): list(ds.names), "umap0": xy[:, 0], "umap1": xy[:, 1]}).to_csv(
            out / "latent_umap.csv", index=False, float_format="%.5g"
        )
    fig, axes = plt.subplots(1, len(views), figsize=(3.8 * len(views), 3.4), dpi=120, squeeze=False)
    for ax, (name, e) in zip(axes[0], views, strict=True):
        if labels is None:
            sc = ax.scatter(e[:, 0], e[:, 1], c=z[:, 0], cmap="viridis", s=4, alpha=0.7, edgecolors="none")
        else:
            sc = ax.scatter(e[:, 0], e[:, 1], c=labels, cmap="tab10", vmin=0, vmax=9, s=4, alpha=0.7,
                            edgecolors="none")  # fmt: skip
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if labels is None:
        fig.colorbar(sc, ax=axes[0].tolist(), fraction=0.03, label="z0")
    fig.suptitle(f"{method} latents" + (" by cluster" if labels is not None else ""), fontsize=10)
    fig.savefig(out / "latent_embedding.png", bbox_inches="tight")
    plt.close(fig)


def _plot_scatter(path: Path, z: np.ndarray, labels: np.ndarray | None, method: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(0, 1), (0, 2), (1, 2)] if z.shape[1] >= 3 else [(0, 1)] if z.shape[1] == 2 else [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(3.4 * len(pairs), 3.2), dpi=120, squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        y = z[:, b] if a != b else np.zeros(len(z))
        if labels is None:
            ax.scatter(z[:, a], y, color="tab:blue", s=4, alpha=0.7)
        else:
            ax.scatter(z[:, a], y, c=labels, s=4, cmap="tab10", alpha=0.7)
        ax.set_xlabel(f"z{a}")
        ax.set_ylabel(f"z{b}" if a != b else "")
    fig.suptitle(f"{method} latents" + (" (clusters)" if labels is not None else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""``tomohet classify``: discrete classification with gold-standard class maps and RELION-ready outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.annotate import write_annotated
from ..data.mrc import read_volume, write_volume
from ..data.poses import with_refined_poses, write_pose_corrections
from ..data.truth import find_ground_truth, has_pose_errors, load_truth, true_geometry, true_pose_corrections
from ..errors import InputError
from ..methods.class_scan import parse_class_range
from ..methods.class_scan import scan_classes as scan_class_counts
from ..methods.em3d import subtomogram_class_maps
from ..methods.registry import build_options, fit, get_method
from ..physics.reconstruct import reconstruct
from ..physics.rotations import mirror_z, rotation_angle
from .options import (
    OptionError,
    check_class_scan,
    check_classes_fit,
    check_classify,
    check_local_search,
    check_max_dose,
    read_focus_mask,
    read_input,
)
from .runlog import Run, stage_reporter


def run_classify(
    input_path: Path,
    out: Path,
    n_classes: int = 4,
    n_iter: int = 12,
    init: str = "pca",
    initial_maps: list[Path] | None = None,
    seed: int = 0,
    max_dose: float | None = None,
    resolution_limit: float | None = None,
    anneal_start: float = 1.0,
    tomograms: Path | None = None,
    flip_hand: bool = False,
    truth: Path | None = None,
    class_maps: bool = True,
    executor=None,
    focus_mask: Path | None = None,
    method: str = "em",
    runs: int = 3,
    pixel_size: float | None = None,
    overwrite: bool = False,
    local_angles: float = 0.0,
    local_shifts: float = 0.0,
    sigma_angles: float | None = None,
    sigma_shifts: float | None = None,
    scan_classes: str | None = None,
    rare_starts: int | None = None,
) -> dict:
    """Classify ``input_path`` into ``out`` (see the README for the outputs); returns result.json's content.
    ``scan_classes`` (``"1-6"``, ``"2,4"``) runs EM for each number of classes and keeps the one with the highest
    two-fold cross-validated log-likelihood (``class_scan.csv`` / ``.png``).

    ``executor`` is a Dask executor or a function that makes one (called only once the data are read and
    checked); it is closed at the end, also on error."""
    input_path, out = Path(input_path), Path(out)  # strings from a script work too
    args = dict(locals())
    check_classify(n_classes, n_iter, init, method, runs, max_dose, resolution_limit, anneal_start, pixel_size,
                   has_maps=bool(initial_maps))  # fmt: skip
    check_local_search(local_angles, local_shifts, sigma_angles, sigma_shifts, method)
    check_class_scan(scan_classes, method, bool(initial_maps), local_angles > 0 or local_shifts > 0)
    if rare_starts is not None and rare_starts < 0:
        raise OptionError("--rare-starts", f"must be >= 0, got {rare_starts}")
    executors = _ExecutorSlot(executor)
    try:
        with Run(out, "classify", {k: v for k, v in args.items() if k != "executor"}) as run:
            args.update(out=run.out, executor=None)
            return _classify(run, executors, **args)
    finally:
        executors.close()


class _ExecutorSlot:
    """The run's executor: made on first use (from a factory) and closed once."""

    def __init__(self, executor):
        factory = callable(executor) and not hasattr(executor, "map_partitions")
        self._factory, self._executor = (executor, None) if factory else (None, executor)

    def get(self):
        if self._executor is None and self._factory is not None:
            self._executor, self._factory = self._factory(), None
        return self._executor

    def close(self) -> None:
        self._factory = None
        if self._executor is not None:
            ex, self._executor = self._executor, None
            ex.close()


def _classify(run: Run, executors: _ExecutorSlot, input_path: Path, out: Path, n_classes: int, n_iter: int, init: str,
              initial_maps, seed, max_dose, resolution_limit, anneal_start, tomograms, flip_hand, truth, class_maps,
              executor, focus_mask, method, runs, pixel_size, overwrite, local_angles, local_shifts, sigma_angles,
              sigma_shifts, scan_classes, rare_starts) -> dict:  # fmt: skip
    with run.timed("read"):
        ds = read_input(input_path, tomograms, pixel_size)
    run.log.info("%s", ds.summary())
    scan_ks = parse_class_range(scan_classes) if scan_classes else None
    if scan_ks:  # cross-validated: each half of the particles needs a particle per class
        check_classes_fit(max(scan_ks), ds.n_particles // 2, input_path, "--scan-classes")
    else:
        check_classes_fit(len(initial_maps) if initial_maps else n_classes, ds.n_particles, input_path)
    truth_table, truth_problem = None, None
    if truth is not None:  # given: it must fit the particles, checked before the work starts
        truth = Path(truth)
        truth_table = load_truth(truth, ds.names)
    elif (found := find_ground_truth(input_path)) is not None:  # found beside the input: used only if it fits
        try:
            truth, truth_table = found, load_truth(found, ds.names)
        except InputError as exc:
            truth_problem = f"metrics skipped: {exc}"
            run.log.warning("%s", truth_problem)
    subtomograms = ds.kind == "3d"
    if subtomograms:  # 3D input: only the 3D EM applies, on the volumes as they are
        for given, flag in ((method != "em3d", "--method"), (flip_hand, "--flip-hand"), (max_dose is not None,
                            "--max-dose"), (focus_mask is not None, "--focus-mask")):  # fmt: skip
            if given:
                raise InputError(input_path, "3D subtomograms are classified with --method em3d, without "
                                 "--flip-hand, --max-dose or --focus-mask", flag)  # fmt: skip
    if not subtomograms:
        check_max_dose(ds, max_dose)
    if flip_hand:
        ds.rotations = ds.rotations @ mirror_z()
    maps = None
    if initial_maps:
        maps = torch.stack([read_volume(p)[0] for p in initial_maps])
        if maps.shape[-1] != ds.box:
            raise InputError(initial_maps[0], f"map box {maps.shape[-1]} differs from the particles' {ds.box}")
        n_classes, init = len(initial_maps), "maps"
    mask = read_focus_mask(focus_mask, ds.box)
    spec = get_method(method, "discrete", "3d" if subtomograms else "2d")
    opts = build_options(
        spec, n_classes=n_classes, n_iter=n_iter, init=init, seed=seed, max_dose=max_dose,
        resolution_limit_A=resolution_limit, anneal_start=anneal_start, n_runs=runs, local_angles_deg=local_angles,
        local_shifts_px=local_shifts, sigma_angles_deg=sigma_angles, sigma_shifts_px=sigma_shifts,
        rare_starts=rare_starts,
    )  # fmt: skip
    checkpoint = out / "checkpoint.pt"
    if overwrite:
        checkpoint.unlink(missing_ok=True)
        run.log.info("--overwrite: starting afresh (checkpoint removed)")
    n_images = ds.n_particles if subtomograms else ds.n_images  # what one "image" is: a tilt or a subtomogram
    unit = "subtomograms" if subtomograms else "images"
    executor = executors.get()
    with run.progress() as prog:
        progress = stage_reporter(prog, ds.n_particles, n_images, unit)

        with run.timed("classify"):
            try:
                if scan_ks:  # EM on each half per K, then the best K on all (resumable: class_scan/K*.pt)
                    if overwrite:
                        for old_ck in (out / "class_scan").glob("K*.pt"):
                            old_ck.unlink()
                    scan, by_k = scan_class_counts(ds, scan_ks, opts, progress, out / "class_scan", focus_mask=mask)
                    result = by_k[scan.best]
                else:
                    result = fit(spec, ds, opts, initial_maps=maps, progress=progress, checkpoint=checkpoint,
                                 executor=executor if "executor" in spec.takes else None, focus_mask=mask)  # fmt: skip
            finally:
                executors.close()
    if scan_ks:
        scan_fields = write_class_scan(out, scan)
        run.log.info("class scan: cross-validated log-likelihood highest at K = %d (%s)", scan.top_score, ", ".join(
            f"K={r['classes']}: {r['heldout_vs_best']:+.0f}" for r in scan.table()))  # fmt: skip
        if scan.best != scan.top_score:
            run.log.info("class scan: K = %d's runs leave classes empty; K = %d chosen", scan.top_score, scan.best)
    if "e_step_limit_A" in result.extra:
        crop = f", images cropped to box {result.extra['working_box']}" if "working_box" in result.extra else ""
        run.log.info("E-step band to %.1f A (consensus %s A)%s", result.extra["e_step_limit_A"],
                     result.extra.get("consensus_resolution_A", "?"), crop)  # fmt: skip
    for e in result.log:
        run.log.info("iteration %d: sizes %s, changes %.3f, log-likelihood %.6g (%.1f s)", e["iteration"],
                     e["class_sizes"], e["changes"], e["log_likelihood"], e["seconds"])  # fmt: skip
    labels = result.labels
    post = result.posteriors
    read_ds = ds  # the poses as given (what the oracle and the pose errors are measured from)
    if "pose_rotation" in result.extra:  # refined poses: the outputs and class maps use them
        ds = posed_outputs(ds, result, out, run)
    columns = result.particle_columns()  # class, its posterior, and consistency across runs where there are runs
    next_input = write_annotated(ds, out, columns)
    pd.DataFrame(post, columns=[f"p{k + 1}" for k in range(post.shape[1])]).assign(
        particle=ds.names, rlnClassNumber=labels + 1
    )[["particle", "rlnClassNumber", *[f"p{k + 1}" for k in range(post.shape[1])]]].to_csv(
        out / "posteriors.csv", index=False
    )
    classes = []
    with run.timed("class_maps"):
        if subtomograms and class_maps:  # gold-standard halves from the subtomograms, full band
            recs = subtomogram_class_maps(ds, labels, result.n_classes, result.extra.get("prepared_spectra"))
        for k in range(result.n_classes):
            members = np.flatnonzero(labels == k)
            entry = {"class": k + 1, "n": int(len(members)), "fraction": float(len(members) / ds.n_particles)}
            write_volume(out / f"class_{k + 1:03d}_em.mrc", result.volumes[k], ds.pixel_size)
            if len(members) >= 2:
                entry["particles"] = str(write_annotated(ds, out / "subsets", columns, members, f"class_{k + 1:03d}"))
            if class_maps and len(members) >= 4:
                rec = recs[k] if subtomograms else reconstruct(ds, members)
                write_class_map(out, k, rec, f"class {k + 1}")
                entry["resolution_A"] = rec.resolution
            classes.append(entry)
    fields: dict = {"classes": classes, "iterations": result.log, "next_input": str(next_input.name),
                    f"{unit}_per_s_per_iteration": float(np.mean([n_images / max(e["seconds"], 1e-9)
                                                                 for e in result.log]))}  # fmt: skip
    diagnostics = result.diagnostics()
    for key in ("consensus_resolution_A", "e_step_limit_A", "working_box", "consensus_seconds", "init_seconds"):
        if key in diagnostics:
            fields[key] = diagnostics[key]
    fields["diagnostics"] = diagnostics
    if scan_ks:
        fields["class_scan"] = scan_fields
    if "pose_rotation" in result.extra:
        fields["poses"] = pose_summary(result)
    if truth_table is not None:
        fields["metrics"] = _metrics_against_truth(read_ds, truth, truth_table, labels, run)
        if "pose_rotation" in result.extra and has_pose_errors(truth_table, read_ds):
            fields["metrics"]["poses"] = pose_metrics(read_ds, truth_table, result, run)
    elif truth_problem:
        fields["metrics_skipped"] = truth_problem
    run.finish(result.method, seed, **fields)
    return json.loads((out / "result.json").read_text())


def posed_outputs(ds, result, out: Path, run: Run):
    """The dataset with the run's refined poses (written into the particles stars of RELION 5 input) and
    ``poses.csv`` with the corrections (any input format)."""
    rotation, offset = result.extra["pose_rotation"], result.extra["pose_offset_px"]
    write_pose_corrections(out / "poses.csv", ds.names, rotation, offset, ds.pixel_size)
    if ds.source_format not in ("relion5", "warp_v1", "relion31", "relion4"):
        run.log.warning("refined poses are in poses.csv; particles.star keeps the poses read (%s input)",
                        ds.source_format)  # fmt: skip
    return with_refined_poses(ds, rotation, offset)


def pose_summary(result) -> dict:
    """How far the refined poses moved from the ones read (``result.json``'s ``poses``)."""
    angle = np.degrees(rotation_angle(result.extra["pose_rotation"]).numpy())
    shift = result.extra["pose_offset_px"].norm(dim=-1).numpy()
    return {"median_correction_deg": float(np.median(angle)), "median_offset_px": float(np.median(shift)),
            "file": "poses.csv"}  # fmt: skip


def pose_metrics(read_ds, truth_table: pd.DataFrame, result, run: Run) -> dict:
    """Pose errors of the written and of the refined poses against the true ones."""
    from ..benchmark.metrics import pose_error_report  # lazy: scikit-learn (~80 MB) only where truth is scored

    true_rot, true_off = true_pose_corrections(read_ds, truth_table)
    report = {"written": pose_error_report(true_rot, true_off),
              "refined": pose_error_report(true_rot, true_off, result.extra["pose_rotation"],
                                           result.extra["pose_offset_px"])}  # fmt: skip
    run.log.info("pose errors (median): written %.2f deg / %.2f px, refined %.2f deg / %.2f px",
                 report["written"]["median_angle_error_deg"], report["written"]["median_centre_error_px"],
                 report["refined"]["median_angle_error_deg"], report["refined"]["median_centre_error_px"])  # fmt: skip
    return report


def write_class_map(out: Path, k: int, rec, title: str) -> None:
    """Gold-standard outputs of class ``k`` (0-based) from its :class:`~tomohet.physics.reconstruct.Reconstruction`:
    ``class_NNN_half1/half2/map.mrc``, ``class_NNN_fsc.csv/png`` and ``class_NNN_slices.png`` (central sections of
    the FSC-filtered map)."""
    from ..analysis.plots import plot_central_slices, plot_fsc  # lazy: matplotlib only once the classes are done

    stem = out / f"class_{k + 1:03d}"
    for name, vol in (("half1", rec.half1), ("half2", rec.half2), ("map", rec.full)):
        write_volume(f"{stem}_{name}.mrc", vol, rec.pixel_size)
    plot_fsc(f"{stem}_fsc.png", rec.frequencies.numpy(), {"half maps": rec.fsc.numpy()}, rec.resolution)
    np.savetxt(f"{stem}_fsc.csv", np.stack([rec.frequencies.numpy(), rec.fsc.numpy()], 1), delimiter=",",
               header="frequency_per_A,fsc", comments="")  # fmt: skip
    plot_central_slices(f"{stem}_slices.png", rec.filtered.numpy(), title)


def _metrics_against_truth(ds, truth_path: Path, truth: pd.DataFrame, labels: np.ndarray, run: Run) -> dict:
    """ARI & co. against ``ground_truth.csv`` (``truth``: :func:`load_truth`) and, where the simulation's maps
    and noise are known (its ``dataset.json``), the oracle."""
    from ..benchmark.metrics import discrete_report  # lazy: scikit-learn (~80 MB) only where truth is scored
    from ..benchmark.oracle import oracle

    states = np.array(truth["state"].tolist())
    metrics = {"method": discrete_report(states, labels)}
    meta_path = truth_path.parent / "dataset.json"
    if meta_path.exists() and ds.kind == "2d":  # the oracle scores the 2D tilt images
        try:
            meta = json.loads(meta_path.read_text())
            maps = None
            if meta.get("map_coordinates") is None:
                maps = torch.stack([read_volume(truth_path.parent / f)[0] for f in meta["maps"]])
                sigma, abundances = meta["noise_sigma"], np.array(meta["abundances"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, InputError, RuntimeError) as exc:
            maps = None
            run.log.warning("oracle skipped: %s is not a tomohet dataset.json (%s: %s)", meta_path,
                            type(exc).__name__, " ".join(str(exc).split()))  # fmt: skip
        if maps is not None:
            true_ds = true_geometry(ds, truth, truth_path)
            o = oracle(ds if true_ds is None else true_ds, maps, sigma, abundances)
            metrics["oracle"] = discrete_report(states, o.labels)
            # the limit with the geometry as written (what a method without a pose search can reach)
            if true_ds is not None:
                metrics["oracle_written_poses"] = discrete_report(states, oracle(ds, maps, sigma, abundances).labels)
    msg = f"ARI {metrics['method']['ari']:.3f}"
    if "oracle" in metrics:
        msg += f", oracle {metrics['oracle']['ari']:.3f}"
    if "oracle_written_poses" in metrics:
        msg += f" (with the written poses {metrics['oracle_written_poses']['ari']:.3f})"
    run.log.info("against ground truth: %s", msg)
    return metrics


def write_class_scan(out: Path, scan) -> dict:
    """``class_scan.csv`` (one row per K) and ``class_scan.png``; returns the fields for result.json."""
    from ..analysis.plots import plot_class_scan

    table = scan.table()
    sizes = ("class_sizes", "class_sizes_half2")
    pd.DataFrame([{**r, **{c: " ".join(map(str, r[c])) for c in sizes}} for r in table]).to_csv(
        out / "class_scan.csv", index=False
    )
    plot_class_scan(out / "class_scan.png", table, scan.best)
    return {"best_classes": scan.best, "highest_score_classes": scan.top_score, "rows": table,
            "table": "class_scan.csv", "plot": "class_scan.png"}  # fmt: skip

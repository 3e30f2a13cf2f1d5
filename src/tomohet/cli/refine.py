"""``tomohet refine``: homogeneous local pose refinement (one class, local searches; 2D tilt stacks or 3D
subtomograms), so that poses can be improved before classifying; the consensus map before and after, the refined
poses written back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..analysis.plots import plot_central_slices, plot_fsc
from ..benchmark.metrics import map_fsc
from ..data.annotate import write_annotated
from ..data.mrc import read_volume, write_volume
from ..data.poses import apply_tilt_shifts, relion5_shifted_tomograms
from ..data.truth import find_ground_truth, has_pose_errors, load_truth, true_geometry
from ..errors import InputError
from ..methods.em3d import subtomogram_class_maps
from ..methods.iteration import stage_ticker
from ..methods.pose_refinement import refine_poses
from ..methods.tilt_shifts import estimate_tilt_shifts
from ..physics.reconstruct import reconstruct
from .classify import pose_metrics, pose_summary, posed_outputs
from .options import check_local_search, check_max_dose, check_refine, positive, read_input
from .runlog import Run, stage_reporter


def run_refine(
    input_path: Path,
    out: Path,
    n_iter: int = 6,
    local_angles: float = 6.0,
    local_shifts: float = 2.0,
    sigma_angles: float | None = None,
    sigma_shifts: float | None = None,
    seed: int = 0,
    max_dose: float | None = None,
    resolution_limit: float | None = None,
    tomograms: Path | None = None,
    pixel_size: float | None = None,
    overwrite: bool = False,
    tilt_shifts: bool = False,
    tilt_shift_range: float = 3.0,
) -> dict:
    """Refine the poses of ``input_path`` into ``out`` (see the README); returns result.json's content."""
    args = dict(locals())
    check_refine(n_iter, max_dose, resolution_limit, pixel_size)
    check_local_search(local_angles, local_shifts, sigma_angles, sigma_shifts, "em")
    positive("--tilt-shift-range", tilt_shift_range, " pixels")
    if local_angles <= 0 and local_shifts <= 0:
        raise InputError(None, "nothing to refine: give --local-angles or --local-shifts above 0", "--local-angles")
    with Run(out, "refine", args) as run:
        return _refine(run, run.out, input_path, args)


def _refine(run: Run, out: Path, input_path: Path, a: dict) -> dict:
    with run.timed("read"):
        ds = read_input(input_path, a["tomograms"], a["pixel_size"])
    run.log.info("%s", ds.summary())
    subtomograms = ds.kind == "3d"
    if subtomograms and (a["tilt_shifts"] or a["max_dose"] is not None):
        flag = "--tilt-shifts" if a["tilt_shifts"] else "--max-dose"
        raise InputError(input_path, "3D subtomograms have no tilt images: refine them without --tilt-shifts or "
                         "--max-dose", flag)  # fmt: skip
    check_max_dose(ds, a["max_dose"])
    n_images = ds.n_particles if subtomograms else ds.n_images
    checkpoint = out / "checkpoint.pt"
    if a["overwrite"]:
        checkpoint.unlink(missing_ok=True)
    with run.progress() as prog:
        progress = stage_reporter(prog, ds.n_particles, n_images, "subtomograms" if subtomograms else "images")
        with run.timed("map_before"):
            before = _consensus(ds, stage_ticker(progress, "map with the poses read", ds.n_particles))
        with run.timed("refine"):
            result = refine_poses(ds, a["local_angles"], a["local_shifts"], a["sigma_angles"], a["sigma_shifts"],
                                  a["n_iter"], a["seed"], a["max_dose"], a["resolution_limit"], progress,
                                  checkpoint)  # fmt: skip
        posed = posed_outputs(ds, result, out, run)
        shifts = None
        if a["tilt_shifts"]:
            tick = stage_ticker(progress, "tilt shifts", ds.n_particles)
            with run.timed("tilt_shifts"):
                shifts = estimate_tilt_shifts(posed, result.volumes, result.posteriors,
                                              torch.as_tensor(result.extra["sigma2"]),
                                              result.options["resolution_limit_A"], a["tilt_shift_range"],
                                              progress=tick)  # fmt: skip
            posed = posed_tilt_shifts(posed, shifts, out, run)
        with run.timed("map_after"):
            after = _consensus(posed, stage_ticker(progress, "map with the refined poses", ds.n_particles))
    for e in result.log:
        run.log.info("iteration %d: grid %.2f deg / %.2f px, prior %.2f deg / %.2f px, median correction %.2f deg / "
                     "%.2f px, poses moved %.1f%% (%.1f s)", e["iteration"], e["pose_step_deg"], e["shift_step_px"],
                     e["sigma_angles_deg"], e["sigma_shifts_px"], e["median_correction_deg"], e["median_offset_px"],
                     100 * e["pose_changes"], e["seconds"])  # fmt: skip
    apix = ds.pixel_size
    for name, vol in (("half1", after.half1), ("half2", after.half2), ("map", after.full),
                      ("map_filtered", after.filtered), ("map_before", before.full)):  # fmt: skip
        write_volume(out / f"{name}.mrc", vol, apix)
    freq = after.frequencies.numpy()
    np.savetxt(out / "fsc.csv", np.stack([freq, before.fsc.numpy(), after.fsc.numpy()], 1), delimiter=",",
               header="frequency_per_A,fsc_poses_read,fsc_refined", comments="", fmt="%.6f")  # fmt: skip
    plot_fsc(out / "fsc.png", freq, {"poses read": before.fsc.numpy(), "refined": after.fsc.numpy()}, after.resolution)
    plot_central_slices(out / "map_slices.png", after.filtered.numpy(), f"{input_path.name}: refined poses")
    next_input = write_annotated(posed, out, {})
    run.log.info("resolution %.1f A -> %.1f A (FSC 0.143 of the half maps)", before.resolution, after.resolution)
    rate = np.mean([n_images * e["grid_poses"] / max(e["seconds"], 1e-9) for e in result.log])
    fields = {"resolution_before_A": before.resolution, "resolution_after_A": after.resolution,
              "poses": pose_summary(result), "iterations": result.log, "next_input": str(Path(next_input).name),
              "e_step_limit_A": result.extra.get("e_step_limit_A"), "working_box": result.extra.get("working_box"),
              f"{'subtomograms' if subtomograms else 'images'}_x_poses_per_s": round(float(rate), 1)}  # fmt: skip
    if shifts is not None:
        fields["tilt_shifts"] = {"file": "tilt_shifts.csv", "rms_px": shifts.rms_px}
    truth_path = None if subtomograms else find_ground_truth(input_path)  # truth scores the stacks it was made for
    if truth_path is not None:
        try:
            truth = load_truth(truth_path, ds.names)
        except InputError as exc:
            run.log.warning("metrics skipped: %s", exc)
        else:
            true_ds = true_geometry(ds, truth, truth_path)
            if has_pose_errors(truth, ds):
                fields["metrics"] = {"poses": pose_metrics(ds, truth, result, run)}
            if true_ds is not None and (truth_path.parent / "dataset.json").exists():
                fields.setdefault("metrics", {}).update(_maps_against_truth(truth_path, true_ds, truth, before, after,
                                                                            run))  # fmt: skip
            if shifts is not None and (truth_path.parent / "tilt_shifts_truth.csv").exists():
                fields.setdefault("metrics", {})["tilt_shifts"] = _tilt_shifts_against_truth(
                    truth_path.parent / "tilt_shifts_truth.csv", shifts, ds.pixel_size, run
                )
    return json.loads(run.finish("refine", a["seed"], **fields).read_text())


def _consensus(ds, progress):
    """The gold-standard consensus map (half maps, FSC, filtered map) of 2D stacks or subtomograms."""
    if ds.kind == "3d":
        return subtomogram_class_maps(ds, np.zeros(ds.n_particles, dtype=int), 1)[0]
    return reconstruct(ds, progress=progress)


def posed_tilt_shifts(posed, shifts, out: Path, run: Run):
    """The dataset with the per-tilt alignment corrections applied, ``tilt_shifts.csv`` and, for RELION 5 input,
    the tomograms star with the corrections in its projection matrices (for a re-extraction)."""
    n_tomo, t = shifts.shifts_px.shape[:2]
    pd.DataFrame({"rlnTomoName": np.repeat(shifts.tomograms, t), "tilt": np.tile(np.arange(t), n_tomo),
                  "shift_x_A": shifts.shifts_px[..., 0].reshape(-1).numpy() * posed.pixel_size,
                  "shift_y_A": shifts.shifts_px[..., 1].reshape(-1).numpy() * posed.pixel_size,
                  "log_likelihood_gain": shifts.gain.reshape(-1), "n_images": shifts.n_images.reshape(-1)}
                 ).to_csv(out / "tilt_shifts.csv", index=False, float_format="%.6g")  # fmt: skip
    moved = apply_tilt_shifts(posed, shifts.tomograms, shifts.shifts_px)
    if posed.source_format == "relion5":
        moved.tables = {
            **posed.tables,
            "tomograms_blocks": relion5_shifted_tomograms(posed, shifts.tomograms, shifts.shifts_px),
        }
    run.log.info("per-tilt alignment corrections: RMS %.2f px (tilt_shifts.csv)", shifts.rms_px)
    return moved


def _tilt_shifts_against_truth(path: Path, shifts, pixel_size: float, run: Run) -> dict:
    """RMS error (pixels) of the tilt images' alignment before (the simulated error) and after the correction."""
    truth = pd.read_csv(path)
    idx = [shifts.tomograms.index(str(n)) for n in truth["rlnTomoName"]]
    true = truth[["shift_x_A", "shift_y_A"]].to_numpy() / pixel_size
    est = shifts.shifts_px.numpy()[idx, truth["tilt"].to_numpy()]
    out = {"rms_error_before_px": float(np.sqrt((true**2).sum(1).mean())),
           "rms_error_after_px": float(np.sqrt(((true - est) ** 2).sum(1).mean()))}  # fmt: skip
    run.log.info("tilt alignment error (RMS): %.2f px -> %.2f px", out["rms_error_before_px"],
                 out["rms_error_after_px"])  # fmt: skip
    return out


def _maps_against_truth(truth_path: Path, true_ds, truth, before, after, run: Run) -> dict:
    """FSC of the maps with the poses read, refined and true (``true_ds``: the particles seen with the true
    geometry) against the true map (the abundance-weighted mean of the simulation's state maps, as a consensus of
    all particles is)."""
    meta = json.loads((truth_path.parent / "dataset.json").read_text())
    maps = torch.stack([read_volume(truth_path.parent / f)[0] for f in meta["maps"]])
    weights = np.bincount(truth["state"].to_numpy(), minlength=len(maps)) / len(truth)
    reference = (torch.from_numpy(weights).float()[:, None, None, None] * maps).sum(0)
    true_map = reconstruct(true_ds).full
    out = {}
    for key, vol in (("poses_read", before.full), ("refined", after.full), ("true_poses", true_map)):
        f = map_fsc(vol, reference, true_ds.pixel_size)
        out[key] = {"resolution_0.143_A": f["resolution_0.143"], "resolution_0.5_A": f["resolution_0.5"],
                    "fsc_auc": f["auc"]}  # fmt: skip
    run.log.info("map vs true map, FSC 0.143: poses read %.1f A, refined %.1f A, true poses %.1f A",
                 out["poses_read"]["resolution_0.143_A"], out["refined"]["resolution_0.143_A"],
                 out["true_poses"]["resolution_0.143_A"])  # fmt: skip
    return {"map_vs_truth": out}

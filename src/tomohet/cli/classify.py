"""``tomohet classify``: discrete classification with gold-standard class maps and RELION-ready outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..analysis.plots import plot_central_slices, plot_fsc
from ..benchmark.metrics import discrete_report
from ..data.annotate import write_annotated
from ..data.io import read_any
from ..data.mrc import read_volume, write_volume
from ..data.subtomo import Subtomograms
from ..errors import InputError
from ..methods.em2d import EMOptions, classify_em2d
from ..methods.em3d import EM3DClassifier, EM3DOptions, classify_em3d, prepare_em3d
from ..methods.hillclimb import HillClimbOptions, classify_hillclimb
from ..physics.reconstruct import reconstruct
from ..physics.rotations import mirror_z
from .runlog import Run


def find_ground_truth(input_path: Path) -> Path | None:
    """``ground_truth.csv`` of a simulated dataset beside the input (tomohet simulate's layout)."""
    for folder in (input_path.parent, input_path.parent.parent):
        if (folder / "ground_truth.csv").exists():
            return folder / "ground_truth.csv"
    return None


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
) -> dict:
    """Classify ``input_path`` into ``out`` (see the README for the outputs); returns result.json's content."""
    run = Run(out, "classify", {k: v for k, v in locals().items() if k != "executor"})
    with run.timed("read"):
        ds = read_any(input_path, tomograms)
    run.log.info("%s", ds.summary())
    subtomograms = isinstance(ds, Subtomograms)
    if subtomograms:  # 3D input: only the 3D EM applies, on the volumes as they are
        for given, flag in ((method != "em3d", "--method"), (flip_hand, "--flip-hand"), (max_dose is not None,
                            "--max-dose"), (focus_mask is not None, "--focus-mask")):  # fmt: skip
            if given:
                raise InputError(input_path, "3D subtomograms are classified with --method em3d, without "
                                 "--flip-hand, --max-dose or --focus-mask", flag)  # fmt: skip
    if flip_hand:
        ds.rotations = ds.rotations @ mirror_z()
    maps = None
    if initial_maps:
        maps = torch.stack([read_volume(p)[0] for p in initial_maps])
        if maps.shape[-1] != ds.box:
            raise InputError(initial_maps[0], f"map box {maps.shape[-1]} differs from the particles' {ds.box}")
        n_classes, init = len(initial_maps), "maps"
    mask = None
    if focus_mask is not None:
        mask, _ = read_volume(focus_mask)
        if mask.shape[-1] != ds.box:
            raise InputError(focus_mask, f"mask box {mask.shape[-1]} differs from the particles' {ds.box}")
        if mask.min() < 0 or mask.max() > 1 or mask.max() == 0:
            raise InputError(focus_mask, "a focus mask must have values in [0, 1] and not be empty")
    opts = EMOptions(
        n_classes=n_classes, n_iter=n_iter, init=init, seed=seed, max_dose=max_dose,
        resolution_limit_A=resolution_limit, anneal_start=anneal_start,
    )  # fmt: skip
    n_images = ds.n_particles if subtomograms else ds.n_images  # what one "image" is: a tilt or a subtomogram
    unit = "subtomograms" if subtomograms else "images"
    with run.progress() as prog:
        task = prog.add_task("initialising", total=ds.n_particles, rate="")
        t0 = [time.perf_counter(), ""]

        def progress(stage: str, done: int, total: int) -> None:
            if stage != t0[1]:
                t0[0], t0[1] = time.perf_counter(), stage
            rate = done * n_images / ds.n_particles / max(time.perf_counter() - t0[0], 1e-9)
            prog.update(task, description=stage, completed=done, total=total, rate=f"{rate:.0f} {unit}/s")

        with run.timed("classify"):
            try:
                if method == "em":
                    result = classify_em2d(ds, opts, maps, progress, checkpoint=out / "checkpoint.pt",
                                           executor=executor, focus_mask=mask)  # fmt: skip
                elif method == "em3d":  # subtomograms made in memory from the stacks, per-voxel CTF^2 weights
                    if mask is not None:
                        raise InputError(None, "em3d does not take --focus-mask yet", "--method")
                    e3 = EM3DOptions(n_classes=n_classes, n_iter=n_iter, init=init, seed=seed,
                                     resolution_limit_A=resolution_limit, anneal_start=anneal_start)  # fmt: skip
                    prepared = prepare_em3d(ds, e3)
                    result = classify_em3d(ds, e3, maps, progress, prepared, checkpoint=out / "checkpoint.pt")
                elif method == "hillclimb":
                    if mask is not None or maps is not None:
                        raise InputError(None, "hill climbing takes neither --focus-mask nor --map", "--method")
                    hc = HillClimbOptions(n_classes=n_classes, n_iter=n_iter, n_runs=runs, seed=seed,
                                          init="pca" if init == "pca" else "random", max_dose=max_dose,
                                          resolution_limit_A=resolution_limit)  # fmt: skip
                    result = classify_hillclimb(ds, hc, progress, executor, checkpoint=out / "checkpoint.pt")
                else:
                    raise InputError(None, f"unknown method {method!r} (em, em3d, hillclimb)", "--method")
            finally:
                if executor is not None:
                    executor.close()
    if "e_step_limit_A" in result.extra:
        run.log.info("E-step band to %.1f A (consensus %s A), images cropped to box %d", result.extra["e_step_limit_A"],
                     result.extra.get("consensus_resolution_A", "?"), result.extra["working_box"])  # fmt: skip
    for e in result.log:
        run.log.info("iteration %d: sizes %s, changes %.3f, log-likelihood %.6g (%.1f s)", e["iteration"],
                     e["class_sizes"], e["changes"], e["log_likelihood"], e["seconds"])  # fmt: skip
    labels = result.labels
    post = result.posteriors
    columns = {"rlnClassNumber": labels + 1, "rlnMaxValueProbDistribution": post.max(1)}
    if "consistency" in result.extra:  # fraction of independent runs agreeing with the consensus class
        columns["tomohetConsistency"] = np.asarray(result.extra["consistency"])
    next_input = write_annotated(ds, out, columns)
    pd.DataFrame(post, columns=[f"p{k + 1}" for k in range(post.shape[1])]).assign(
        particle=ds.names, rlnClassNumber=labels + 1
    )[["particle", "rlnClassNumber", *[f"p{k + 1}" for k in range(post.shape[1])]]].to_csv(
        out / "posteriors.csv", index=False
    )
    classes = []
    with run.timed("class_maps"):
        if subtomograms and class_maps:  # gold-standard halves from the subtomograms, full band
            full = EM3DOptions(n_classes=result.n_classes)
            em = EM3DClassifier(ds, full, prepared if resolution_limit is None else None)
            recs = em.class_reconstructions(labels, ds.half_set)
        for k in range(result.n_classes):
            members = np.flatnonzero(labels == k)
            entry = {"class": k + 1, "n": int(len(members)), "fraction": float(len(members) / ds.n_particles)}
            write_volume(out / f"class_{k + 1:03d}_em.mrc", result.volumes[k], ds.pixel_size)
            if len(members) >= 2:
                entry["particles"] = str(write_annotated(ds, out / "subsets", columns, members, f"class_{k + 1:03d}"))
            if class_maps and len(members) >= 4:
                rec = recs[k] if subtomograms else reconstruct(ds, members)
                for name, vol in (("half1", rec.half1), ("half2", rec.half2), ("map", rec.full)):
                    write_volume(out / f"class_{k + 1:03d}_{name}.mrc", vol, ds.pixel_size)
                entry["resolution_A"] = rec.resolution
                plot_fsc(out / f"class_{k + 1:03d}_fsc.png", rec.frequencies.numpy(), {"half maps": rec.fsc.numpy()},
                         rec.resolution)  # fmt: skip
                np.savetxt(out / f"class_{k + 1:03d}_fsc.csv", np.stack([rec.frequencies.numpy(), rec.fsc.numpy()], 1),
                           delimiter=",", header="frequency_per_A,fsc", comments="")  # fmt: skip
                plot_central_slices(out / f"class_{k + 1:03d}_slices.png", rec.filtered.numpy(), f"class {k + 1}")
            classes.append(entry)
    fields: dict = {"classes": classes, "iterations": result.log, "next_input": str(next_input.name),
                    f"{unit}_per_s_per_iteration": float(np.mean([n_images / max(e["seconds"], 1e-9)
                                                                 for e in result.log]))}  # fmt: skip
    for key in ("consensus_resolution_A", "e_step_limit_A", "working_box", "consensus_seconds", "init_seconds"):
        if key in result.extra:
            fields[key] = result.extra[key]
    truth = truth or find_ground_truth(input_path)
    if truth is not None:
        fields["metrics"] = _metrics_against_truth(ds, truth, labels, run)
    run.finish(result.method, seed, **fields)
    return json.loads((out / "result.json").read_text())


def _metrics_against_truth(ds, truth_path: Path, labels: np.ndarray, run: Run) -> dict:
    """ARI & co. against ``ground_truth.csv`` and, where the simulation's maps and noise are known, the oracle."""
    from ..benchmark.oracle import oracle

    truth = pd.read_csv(truth_path)
    by_name = dict(zip(truth["rlnTomoParticleName"].astype(str), truth["state"], strict=True))
    missing = [n for n in ds.names if n not in by_name]
    if missing:
        raise InputError(truth_path, f"no ground truth for particle {missing[0]!r}", "rlnTomoParticleName")
    states = np.array([by_name[n] for n in ds.names])
    metrics = {"method": discrete_report(states, labels)}
    meta_path = truth_path.parent / "dataset.json"
    if meta_path.exists() and not isinstance(ds, Subtomograms):  # the oracle scores the 2D tilt images
        meta = json.loads(meta_path.read_text())
        if meta.get("map_coordinates") is None:
            maps = torch.stack([read_volume(truth_path.parent / f)[0] for f in meta["maps"]])
            o = oracle(ds, maps, meta["noise_sigma"], np.array(meta["abundances"]))
            metrics["oracle"] = discrete_report(states, o.labels)
    msg = f"ARI {metrics['method']['ari']:.3f}"
    if "oracle" in metrics:
        msg += f", oracle {metrics['oracle']['ari']:.3f}"
    run.log.info("against ground truth: %s", msg)
    return metrics

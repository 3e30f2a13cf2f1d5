"""``tomohet demo``: the README's main job on an embedded default dataset.

Today: simulate the smoke preset (2 compositional states, ground truth known), reconstruct all particles,
reconstruct each true state, score every map against its ground-truth map (FSC), score the oracle, and
write a report. It grows as classification and landscapes land.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..analysis.plots import plot_central_slices, plot_fsc
from ..benchmark.metrics import discrete_report
from ..benchmark.oracle import oracle
from ..data.mrc import read_volume, write_volume
from ..data.relion5 import read_relion5
from ..physics.filters import fsc, resolution_at, shell_frequencies
from ..physics.reconstruct import reconstruct
from .runlog import Run
from .simulate import run_simulate


def run_demo(out: Path, preset: str = "smoke", seed: int = 0, n_particles: int | None = None) -> dict:
    out = Path(out)
    layout, truth = run_simulate(preset, out / "dataset", seed, n_particles)
    run = Run(out, "demo", {"preset": preset, "seed": seed})
    ds = read_relion5(layout.optimisation_set)
    meta = json.loads((out / "dataset" / "dataset.json").read_text())
    truth_maps = [read_volume(out / "dataset" / f)[0] for f in meta["maps"]]
    apix, box = ds.pixel_size, ds.box
    freq = shell_frequencies(box, apix).numpy()
    report: dict = {"dataset": ds.summary(), "measured_snr": layout.measured_snr}
    with run.timed("reconstruct_all"):
        rec = reconstruct(ds)
    write_volume(out / "consensus.mrc", rec.full, apix)
    report["consensus_resolution_A"] = rec.resolution
    curves = {}
    report["states"] = []
    with run.timed("reconstruct_states"):
        for k, name in enumerate(meta["states"]):
            sel = np.flatnonzero(truth["state"].to_numpy() == k)
            r = reconstruct(ds, sel)
            write_volume(out / f"state_{k:02d}_true_labels.mrc", r.full, apix)
            c = fsc(r.full, truth_maps[k]).float()
            curves[f"{name} vs truth"] = c.numpy()
            report["states"].append(
                {"state": name, "n": len(sel), "half_map_resolution_A": r.resolution,
                 "fsc_to_truth_resolution_0.5_A": resolution_at(c, box, apix, 0.5)}
            )  # fmt: skip
    plot_fsc(out / "fsc_states_vs_truth.png", freq, curves, None)
    plot_central_slices(out / "consensus_slices.png", rec.filtered.numpy(), "consensus map")
    with run.timed("oracle"):
        o = oracle(ds, torch.stack(truth_maps), layout.noise_sigma, np.array(meta["abundances"]))
    report["oracle"] = discrete_report(truth["state"].to_numpy(), o.labels)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    run.log.info("consensus %.1f A; oracle ARI %.3f", rec.resolution, report["oracle"]["ari"])
    for s in report["states"]:
        run.log.info("%s (%d particles): map vs truth FSC 0.5 at %.1f A", s["state"], s["n"],
                     s["fsc_to_truth_resolution_0.5_A"])  # fmt: skip
    run.finish("demo", seed, report=report)
    return report

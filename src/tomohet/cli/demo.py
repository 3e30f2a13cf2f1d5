"""``tomohet demo``: the README's main job on an embedded default dataset.

Simulate a benchmark dataset with ground truth (default: the smoke preset, 2 compositional states), classify
it (Bayesian EM on the 2D tilt stacks), reconstruct gold-standard class maps, map its landscape (tilt-space
PPCA, 2 components, clustered into as many classes as states), score labels and clusters against the truth
and the oracle and each class map against its ground-truth map, and write a short report (``report.md`` with
pictures, ``report.json``). It grows as the analysis and report land.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..analysis.plots import plot_fsc
from ..data.mrc import read_volume
from ..physics.filters import fsc, resolution_at, shell_frequencies
from ..simulate.datasets import get_preset
from .classify import run_classify
from .landscape import run_landscape
from .options import check_simulate
from .runlog import Run
from .simulate import run_simulate

DEMO_PPCA_ITERATIONS = 5


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def run_demo(out: Path, preset: str = "smoke", seed: int = 0, n_particles: int | None = None) -> dict:
    check_simulate(n_particles, None)
    with Run(out, "demo", {"preset": preset, "seed": seed, "n_particles": n_particles}) as run:
        out = run.out
        layout, truth = run_simulate(preset, out / "dataset", seed, n_particles)
        meta = json.loads((out / "dataset" / "dataset.json").read_text())
        n_states = len(meta["states"])
        result = run_classify(layout.optimisation_set, out / "classify", n_classes=n_states, seed=seed)
        land = run_landscape(layout.optimisation_set, out / "landscape", "ppca", components=2, clusters=n_states,
                             seed=seed, iterations=DEMO_PPCA_ITERATIONS, class_maps=False)  # fmt: skip
        lm = land.get("metrics", {})
        matching = {int(k): v for k, v in result["metrics"]["method"]["matching"].items()}
        apix = meta["acquisition"]["pixel_size"]
        box = meta["acquisition"]["box"]
        freq = shell_frequencies(box, apix).numpy()
        curves, states = {}, []
        for cls, state in sorted(matching.items()):
            vol = read_volume(out / "classify" / f"class_{cls + 1:03d}_map.mrc")[0]
            ref = read_volume(out / "dataset" / meta["maps"][state])[0]
            c = fsc(vol, ref).float()
            curves[f"class {cls + 1} vs {meta['states'][state]}"] = c.numpy()
            states.append({"class": cls + 1, "state": meta["states"][state],
                           "fsc_to_truth_0.5_A": resolution_at(c, box, apix, 0.5),
                           "fsc_to_truth_0.143_A": resolution_at(c, box, apix, 0.143)})  # fmt: skip
        plot_fsc(out / "class_maps_vs_truth.png", freq, curves, None)
        m, o = result["metrics"]["method"], result["metrics"].get("oracle", {})
        report = {
            "preset": preset, "description": get_preset(preset).description,
            "measured_snr": layout.measured_snr, "n_particles": len(truth),
            "classification": {"ari": m["ari"], "accuracy": m["accuracy"], "oracle_ari": o.get("ari"),
                               "seconds": result["timings_s"]["classify"],
                               "images_per_s_per_iteration": result["images_per_s_per_iteration"]},
            "class_maps": states,
            "landscape": {"method": "ppca", "components": 2, "seconds": land["timings_s"]["landscape"],
                          "kmeans_ari": lm.get("clusters_kmeans", {}).get("ari"),
                          "oracle_ari": lm.get("oracle_discrete", {}).get("ari"),
                          "explained_variance_ratio": land.get("explained_variance_ratio")},
        }  # fmt: skip
        (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
        lines = [
            f"# tomohet demo: {preset}", "", report["description"] + f" (measured SNR {layout.measured_snr:.3f}).", "",
            f"Classification (EM on 2D tilt stacks, K={n_states}): ARI {m['ari']:.3f} "
            f"(oracle {o.get('ari', float('nan')):.3f}), accuracy {m['accuracy']:.3f}, "
            f"{result['timings_s']['classify']:.0f} s, "
            f"{result['images_per_s_per_iteration']:.0f} images/s per iteration.",
            "", f"Landscape (tilt-space PPCA, 2 components, {land['timings_s']['landscape']:.0f} s): k-means on the "
            f"latents into {n_states} clusters, ARI {_fmt(report['landscape']['kmeans_ari'])} (oracle "
            f"{_fmt(report['landscape']['oracle_ari'])}).", "", "![latents](landscape/latent_scatter.png)",
            "", "| class | true state | FSC 0.5 to truth (Å) | FSC 0.143 to truth (Å) |", "|---|---|---|---|",
            *[f"| {s['class']} | {s['state']} | {s['fsc_to_truth_0.5_A']:.1f} | {s['fsc_to_truth_0.143_A']:.1f} |"
              for s in states],
            "", "![class maps vs truth](class_maps_vs_truth.png)", "",
            *[f"![class {s['class']}](classify/class_{s['class']:03d}_slices.png)" for s in states],
        ]  # fmt: skip
        (out / "report.md").write_text("\n".join(lines) + "\n")
        run.log.info("ARI %.3f (oracle %s); report in %s", m["ari"], o.get("ari"), out / "report.md")
        run.finish("demo", seed, report=report)
    return report


__all__ = ["run_demo"]

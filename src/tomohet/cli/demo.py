"""``tomohet demo``: the README's main job on an embedded default dataset.

Simulate a benchmark dataset with ground truth (default: the smoke preset, 2 compositional states), classify
it (Bayesian EM on the 2D tilt stacks), reconstruct gold-standard class maps, map its landscape twice (tilt-space
PPCA and the tilt-series VAE, 2 latent dimensions each, clustered into as many classes as states), score labels
and clusters against the truth
and the oracle and each class map against its ground-truth map, analyse the runs (``tomohet analyze``: maps,
states in their tomograms, spatial statistics, ChimeraX scenes) and write one self-contained HTML report
(``report.html``) and ``report.json``. It grows as the methods land.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..analysis.analyze import analyze_run
from ..analysis.report import write_report
from ..simulate.datasets import get_preset
from .classify import run_classify
from .landscape import run_landscape
from .options import check_simulate
from .runlog import Run
from .simulate import run_simulate

DEMO_PPCA_ITERATIONS = 5
DEMO_VAE = {"iterations": 8, "basis": 4, "basis_epochs": 5}  # 5 passes over the images, 3 more epochs of training
RUNS = ("classify", "landscape", "landscape_vae")


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
        vae = run_landscape(layout.optimisation_set, out / "landscape_vae", "vae", components=2, clusters=n_states,
                            seed=seed, iterations=DEMO_VAE["iterations"], class_maps=False,
                            method_options={k: v for k, v in DEMO_VAE.items() if k != "iterations"})  # fmt: skip
        lm, vm = land.get("metrics", {}), vae.get("metrics", {})
        m, o = result["metrics"]["method"], result["metrics"].get("oracle", {})
        with run.timed("analyze"):
            analyses = [analyze_run(out / name, out / "analysis" / name) for name in RUNS]
            html = write_report(out / "report.html", analyses, f"tomohet demo: {preset}", intro=(
                f"{get_preset(preset).description} (measured SNR {layout.measured_snr:.3f}, {len(truth)} "
                f"particles). Classification: EM on the 2D tilt stacks with K={n_states}; landscapes: tilt-space PPCA "
                f"with 2 components (clustered through each particle's latent likelihood, xd) and the tilt-series VAE "
                f"with 2 latent dimensions (k-means), into {n_states} clusters each. Each is scored against the "
                "ground truth, beside the oracle that knows the true maps."))  # fmt: skip
        class_maps = analyses[0].tables.get("Class maps against the true maps", [])
        report = {
            "preset": preset, "description": get_preset(preset).description,
            "measured_snr": layout.measured_snr, "n_particles": len(truth), "report": str(html),
            "classification": {"ari": m["ari"], "accuracy": m["accuracy"], "oracle_ari": o.get("ari"),
                               "seconds": result["timings_s"]["classify"],
                               "images_per_s_per_iteration": result["images_per_s_per_iteration"]},
            "class_maps": class_maps,
            "landscape": {"method": "ppca", "components": 2, "seconds": land["timings_s"]["landscape"],
                          "xd_ari": lm.get("clusters_xd", {}).get("ari"),
                          "kmeans_ari": lm.get("clusters_kmeans", {}).get("ari"),
                          "oracle_ari": lm.get("oracle_discrete", {}).get("ari"),
                          "explained_variance_ratio": land.get("explained_variance_ratio")},
            "landscape_vae": {"method": "vae", "latent_dimensions": 2, "seconds": vae["timings_s"]["landscape"],
                              "kmeans_ari": vm.get("clusters_kmeans", {}).get("ari"),
                              "oracle_ari": vm.get("oracle_discrete", {}).get("ari"),
                              "held_out_gain_per_image": vae.get("final_gain_held_out")},
        }  # fmt: skip
        (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
        run.log.info("ARI %.3f (oracle %s); report: %s", m["ari"], o.get("ari"), html)
        run.finish("demo", seed, report=report)
    return report


__all__ = ["run_demo"]

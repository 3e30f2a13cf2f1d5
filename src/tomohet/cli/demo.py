"""``tomohet demo``: the README's main job on an embedded default dataset.

Simulate a benchmark dataset with ground truth (default: the smoke preset, 2 compositional states), classify
it (Bayesian EM on the 2D tilt stacks), reconstruct gold-standard class maps, score labels against the truth
and the oracle and each class map against its ground-truth map, and write a short report (``report.md`` with
pictures, ``report.json``). It grows as the landscape methods land.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..analysis.plots import plot_fsc
from ..data.mrc import read_volume
from ..physics.filters import fsc, resolution_at, shell_frequencies
from ..simulate.datasets import get_preset
from .classify import run_classify
from .runlog import Run
from .simulate import run_simulate


def run_demo(out: Path, preset: str = "smoke", seed: int = 0, n_particles: int | None = None) -> dict:
    out = Path(out)
    layout, truth = run_simulate(preset, out / "dataset", seed, n_particles)
    meta = json.loads((out / "dataset" / "dataset.json").read_text())
    n_states = len(meta["states"])
    result = run_classify(layout.optimisation_set, out / "classify", n_classes=n_states, seed=seed)
    run = Run(out, "demo", {"preset": preset, "seed": seed, "n_particles": n_particles})
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
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    lines = [
        f"# tomohet demo: {preset}", "", report["description"] + f" (measured SNR {layout.measured_snr:.3f}).", "",
        f"Classification (EM on 2D tilt stacks, K={n_states}): ARI {m['ari']:.3f} "
        f"(oracle {o.get('ari', float('nan')):.3f}), accuracy {m['accuracy']:.3f}, "
        f"{result['timings_s']['classify']:.0f} s, {result['images_per_s_per_iteration']:.0f} images/s per iteration.",
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

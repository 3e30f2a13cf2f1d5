"""``tomohet simulate``: benchmark datasets with per-particle ground truth."""

from __future__ import annotations

import time
from pathlib import Path

from ..simulate.datasets import get_preset, simulate_preset
from .runlog import Run


def run_simulate(preset: str, out: Path, seed: int = 0, n_particles: int | None = None, snr: float | None = None):
    """Simulate ``preset`` into ``out`` with a progress bar; returns (layout, ground truth)."""
    p = get_preset(preset)
    run = Run(out, "simulate", {"preset": preset, "seed": seed, "n_particles": n_particles, "snr": snr})
    n = n_particles or p.n_particles
    run.log.info("%s: %s", preset, p.description)
    with run.progress() as prog:
        task = prog.add_task("simulating", total=n, rate="")
        t0 = time.perf_counter()
        done = [0]

        def tick(k: int) -> None:
            done[0] += k
            rate = done[0] / max(time.perf_counter() - t0, 1e-9)
            prog.update(task, advance=k, rate=f"{rate:.0f} particles/s")

        with run.timed("simulate"):
            layout, truth = simulate_preset(preset, out, seed, n_particles, snr, tick)
    run.log.info("measured SNR %.4f (requested %.4f)", layout.measured_snr, snr or p.acquisition.snr)
    run.finish(
        "simulate", seed, preset=preset, n_particles=n, optimisation_set=layout.optimisation_set.name,
        measured_snr=layout.measured_snr, noise_sigma=layout.noise_sigma,
        state_counts=truth["state"].value_counts().sort_index().to_dict(),
    )  # fmt: skip
    return layout, truth

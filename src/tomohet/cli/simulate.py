"""``tomohet simulate``: benchmark datasets with per-particle ground truth."""

from __future__ import annotations

import time
from pathlib import Path

from ..simulate.datasets import get_preset, simulate_preset
from .options import check_simulate
from .runlog import Run


def run_simulate(
    preset: str,
    out: Path,
    seed: int = 0,
    n_particles: int | None = None,
    snr: float | None = None,
    acquisition: dict | None = None,
    warp_v1: bool = False,
    subtomograms: bool = False,
):
    """Simulate ``preset`` into ``out`` with a progress bar (``acquisition`` overrides fields of the preset's
    :class:`~tomohet.simulate.acquisition.Acquisition`); optionally also a Warp v1 star and RELION 3.1
    subtomograms. Returns (layout, ground truth)."""
    acq = acquisition or {}
    check_simulate(n_particles, snr, acq.get("structured_noise", 0.0), acq.get("missing_high_tilt_fraction", 0.0),
                   acq.get("pose_error_deg", 0.0), acq.get("shift_error_px", 0.0),
                   acq.get("tilt_shift_error_px", 0.0))  # fmt: skip
    options = dict(locals())
    options.pop("acq")
    p = get_preset(preset)
    with Run(out, "simulate", options) as run:
        out = run.out
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
                layout, truth = simulate_preset(preset, out, seed, n_particles, snr, tick, acquisition)
        if warp_v1 or subtomograms:
            from ..data.relion5 import read_relion5

            ds = read_relion5(layout.optimisation_set)
            if warp_v1:
                from ..data.warp_v1 import write_warp_v1

                run.log.info("wrote %s", write_warp_v1(ds, out / f"{preset}_warp_v1.star"))
            if subtomograms:
                from ..data.subtomo import write_relion31_subtomograms

                with run.timed("subtomograms"):
                    run.log.info("wrote %s", write_relion31_subtomograms(ds, out / "subtomograms"))
        run.log.info("measured SNR %.4f (requested %.4f)", layout.measured_snr, snr or p.acquisition.snr)
        run.finish(
            "simulate", seed, preset=preset, n_particles=n, optimisation_set=layout.optimisation_set.name,
            measured_snr=layout.measured_snr, noise_sigma=layout.noise_sigma,
            state_counts=truth["state"].value_counts().sort_index().to_dict(),
        )  # fmt: skip
    return layout, truth

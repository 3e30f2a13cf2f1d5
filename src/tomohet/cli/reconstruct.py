"""``tomohet reconstruct``: homogeneous reconstruction with gold-standard half maps and FSC."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..analysis.plots import plot_central_slices, plot_fsc
from ..data.mrc import write_volume
from ..physics.reconstruct import reconstruct
from .options import check_reconstruct, read_input
from .runlog import Run


def run_reconstruct(
    input_path: Path,
    out: Path,
    tomograms: Path | None = None,
    oversampling: int = 2,
    batch_size: int = 8,
    flip_hand: bool = False,
    invert_contrast: bool = False,
    pixel_size: float | None = None,
) -> Path:
    """Reconstruct all particles of ``input_path`` into ``out``; returns the path of ``result.json``."""
    options = dict(locals())
    check_reconstruct(oversampling, batch_size, pixel_size)
    with Run(out, "reconstruct", options) as run:
        return _reconstruct(run, input_path, run.out, tomograms, oversampling, batch_size, flip_hand, invert_contrast,
                            pixel_size)  # fmt: skip


def _reconstruct(run, input_path, out, tomograms, oversampling, batch_size, flip_hand, invert_contrast, pixel_size):
    with run.timed("read"):
        ds = read_input(input_path, tomograms, pixel_size, stacks_only=True)
    run.log.info("%s", ds.summary())
    if flip_hand:
        from ..physics.rotations import mirror_z

        ds.rotations = ds.rotations @ mirror_z()
    with run.progress() as prog:
        task = prog.add_task("back-projecting", total=ds.n_particles, rate="")
        t0 = time.perf_counter()
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            rate = done[0] * ds.n_images / ds.n_particles / max(time.perf_counter() - t0, 1e-9)
            prog.update(task, advance=n, rate=f"{rate:.0f} images/s")

        with run.timed("reconstruct"):
            rec = reconstruct(ds, oversampling=oversampling, batch_size=batch_size,
                              invert_contrast=invert_contrast, progress=tick)  # fmt: skip
    apix = ds.pixel_size
    for name, vol in (
        ("half1", rec.half1),
        ("half2", rec.half2),
        ("map", rec.full),
        ("map_filtered", rec.filtered),
    ):
        write_volume(out / f"{name}.mrc", vol, apix)
    freq = rec.frequencies.numpy()
    curve = rec.fsc.numpy()
    with np.errstate(divide="ignore"):
        res = np.where(freq > 0, 1 / np.maximum(freq, 1e-12), np.inf)
    np.savetxt(
        out / "fsc.csv",
        np.stack([np.arange(len(freq)), freq, res, curve], 1),
        delimiter=",",
        header="shell,frequency_per_A,resolution_A,fsc",
        comments="",
        fmt=["%d", "%.6f", "%.3f", "%.5f"],
    )
    plot_fsc(out / "fsc.png", freq, {"half maps": curve}, rec.resolution)
    plot_central_slices(out / "map_slices.png", rec.filtered.numpy(), f"{input_path.name}: filtered map")
    run.log.info("resolution %.1f A at FSC 0.143", rec.resolution)
    return run.finish(
        "reconstruct",
        None,
        n_particles=ds.n_particles,
        n_images=ds.n_images,
        box=ds.box,
        pixel_size=apix,
        resolution_A=rec.resolution,
        images_per_s=round(ds.n_images / run.timings["reconstruct"], 1),
        outputs=[
            "half1.mrc",
            "half2.mrc",
            "map.mrc",
            "map_filtered.mrc",
            "fsc.csv",
            "fsc.png",
            "map_slices.png",
        ],
    )

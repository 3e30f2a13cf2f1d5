"""``tomohet benchmark --suite perf``: the core operations at box 32 / 64 / 128, images/s and peak memory, each
in a process of its own (so its peak memory is its own), beside a well-kept library where one exists.

Operations: ``project`` (Fourier slice extraction, :class:`~tomohet.physics.projector.VolumeProjector`,
oversampling 2) and ``insert`` (:class:`~tomohet.physics.projector.FourierAccumulator`), each also with
torch-fourier-slice 0.6.0 (``extract_central_slices_rfft_3d`` / ``insert_central_slices_rfft_3d``) when it is
installed (``pip install -e '.[bench]'``; reported as skipped otherwise); ``em_iteration`` (one iteration of the
2D EM, K = 2), ``ppca_pass`` (one tilt-space PPCA iteration) and ``vae_epoch`` (one VAE epoch that passes over
the images and trains the networks; the cheaper network-only epochs are not counted) on a simulated
``discrete_easy`` dataset at that box (200 / 100 / 40 particles x 41 tilts). Throughput: the best of 3 timed
calls after a warm-up (projection, insertion), or the method's own per-iteration time from its log (mean of the
iterations after the first); peak memory: the process tree (:mod:`tomohet.benchmark.measure`), data preparation
included.

Run one operation by hand: ``python -m tomohet.benchmark.perf OP BOX [DATA_FOLDER]`` prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

BOXES = (32, 64, 128)
BATCH = {32: 256, 64: 128, 128: 32}  # images per projection / insertion call
PARTICLES = {32: 200, 64: 100, 128: 40}  # particles of the dataset the methods run on
OPERATIONS = ("project", "project_tfs", "insert", "insert_tfs", "em_iteration", "ppca_pass", "vae_epoch")
MARK = "PERF "


def _rotations(n: int, seed: int = 0):
    import torch

    from ..physics.rotations import euler_to_matrix

    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([360.0, 180.0, 360.0])
    return euler_to_matrix(angles[:, 0], angles[:, 1], angles[:, 2]).float()


def _best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _volume(box: int):
    import torch

    g = torch.Generator().manual_seed(1)
    vol = torch.randn(box, box, box, generator=g)  # low-passed below: a smooth random volume
    k = torch.fft.fftfreq(box)
    kx = torch.fft.rfftfreq(box)
    r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
    kernel = torch.fft.rfftn(vol) * torch.exp(-r2 / (2 * 0.08**2))
    return torch.fft.irfftn(kernel, s=(box, box, box)).float()


def _projection(op: str, box: int) -> dict:
    import torch

    from ..physics.fourier import pad_to
    from ..physics.projector import FourierAccumulator, VolumeProjector, gridding_correction

    n, g = BATCH[box], 2 * box
    rot = _rotations(n)
    if op == "project":
        proj = VolumeProjector(_volume(box), oversampling=2)
        seconds = _best_of(lambda: proj.project_ft(rot))
    elif op == "project_tfs":
        from torch_fourier_slice import extract_central_slices_rfft_3d

        v = pad_to(_volume(box), g, 3) / gridding_correction(g)
        vft = torch.fft.fftshift(torch.fft.rfftn(torch.fft.ifftshift(v)), dim=(-3, -2))
        seconds = _best_of(lambda: extract_central_slices_rfft_3d(vft, rot.transpose(-1, -2)))
    elif op == "insert":
        spectra = torch.randn(n, g, g // 2 + 1, dtype=torch.complex64)
        weights = torch.rand(n, g, g // 2 + 1)

        def insert() -> None:
            FourierAccumulator(g).insert(spectra, weights, rot)

        seconds = _best_of(insert)
    else:  # insert_tfs
        from torch_fourier_slice import insert_central_slices_rfft_3d

        spectra = torch.randn(n, g, g // 2 + 1, dtype=torch.complex64)
        seconds = _best_of(lambda: insert_central_slices_rfft_3d(spectra, (g, g, g), rot.transpose(-1, -2)))
    return {"images": n, "seconds": seconds, "images_per_s": n / seconds}


def _method(op: str, box: int, data: Path) -> dict:
    import numpy as np

    from ..data.io import read_any

    ds = read_any(sorted(Path(data).glob("*_optimisation_set.star"))[0])
    if op == "em_iteration":
        from ..methods.em2d import EMOptions, classify_em2d

        log = classify_em2d(ds, EMOptions(n_classes=2, n_iter=3)).log
    else:  # through the registry (importing a method module first would be circular)
        from ..methods.landscape import get_method

        m = get_method("ppca" if op == "ppca_pass" else "vae")
        if op == "ppca_pass":
            log = m.fit(ds, m.options_cls(n_iter=3)).log
        else:  # the epochs that pass over the images (stage "vae"), not the PPCA start or network-only epochs
            log = [e for e in m.fit(ds, m.options_cls(n_iter=4, basis_epochs=4, ppca_start=1)).log
                   if e.get("stage") == "vae"]  # fmt: skip
    seconds = [float(e["seconds"]) for e in log if "seconds" in e]
    per = float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))
    images = int(ds.visible.sum())
    return {"images": images, "seconds": per, "images_per_s": images / per}


def measure_operation(op: str, box: int, data: Path | None = None) -> dict:
    """One operation at one box in this process (what the child process of :func:`run_perf` runs)."""
    if op in ("project", "project_tfs", "insert", "insert_tfs"):
        return _projection(op, box)
    return _method(op, box, data)


def perf_dataset(folder: Path, box: int) -> Path:
    """The simulated ``discrete_easy`` dataset at ``box`` (pixel size scaled to keep the particle's size)."""
    folder = Path(folder)
    if not (folder / "dataset.json").exists():
        from ..simulate.datasets import get_preset, simulate_preset

        apix = get_preset("discrete_easy").acquisition.pixel_size * 32 / box
        simulate_preset("discrete_easy", folder, n_particles=PARTICLES[box], acquisition={"box": box,
                        "pixel_size": apix})  # fmt: skip
    return folder


def run_perf(out: Path, threads: int, log: Callable[[str], None] = print, boxes=BOXES, operations=OPERATIONS) -> dict:
    """Every operation at every box, each in a child process; ``out/perf.json`` and ``out/perf.md``; a finished
    (operation, box) is not measured again."""
    import os

    from .measure import run_measured

    out = Path(out)
    result_path = out / "perf.json"
    records = json.loads(result_path.read_text())["records"] if result_path.exists() else []
    done = {(r["operation"], r["box"]) for r in records if r["status"] == "ok"}
    records = [r for r in records if (r["operation"], r["box"]) in done]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for box in boxes:
        for op in operations:
            if (op, box) in done:
                continue
            if op.endswith("_tfs"):
                try:
                    import torch_fourier_slice  # noqa: F401
                except ImportError:
                    records.append({"operation": op, "box": box, "status": "skipped",
                                    "reason": "torch-fourier-slice not installed (pip install "
                                              "torch-fourier-slice==0.6.0)"})  # fmt: skip
                    continue
            data = perf_dataset(out / "perf_data" / f"box{box}", box) if op in OPERATIONS[4:] else None
            cmd = [sys.executable, "-m", "tomohet.benchmark.perf", op, str(box)] + ([str(data)] if data else [])
            logf = out / "perf_logs" / f"{op}_box{box}.log"
            m = run_measured(cmd, logf, env=env)
            line = next((x for x in reversed(logf.read_text().splitlines()) if x.startswith(MARK)), None)
            rec = {"operation": op, "box": box, "threads": threads, "command": " ".join(cmd), **m.as_dict()}
            if m.returncode == 0 and line:
                rec.update(status="ok", **json.loads(line[len(MARK) :]))
            else:
                from .measure import log_tail

                rec.update(status="failed", reason=log_tail(logf, 5))
            records.append(rec)
            log(f"perf {op} box {box}: " + (f"{rec['images_per_s']:.0f} images/s, {rec['peak_rss_mb']:.0f} MB"
                                            if rec["status"] == "ok" else rec["status"]))  # fmt: skip
            result_path.write_text(json.dumps({"records": records}, indent=1))
    lines = ["| operation | box | images/s | s per call / iteration | images | peak MB (process) | status |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in sorted(records, key=lambda r: (r["box"], OPERATIONS.index(r["operation"]))):
        if r["status"] == "ok":
            lines.append(f"| {r['operation']} | {r['box']} | {r['images_per_s']:.0f} | {r['seconds']:.3f} | "
                         f"{r['images']} | {r['peak_rss_mb']:.0f} | ok |")  # fmt: skip
        else:
            lines.append(f"| {r['operation']} | {r['box']} | - | - | - | - | {r['status']}: "
                         f"{r.get('reason', '')[:100]} |")  # fmt: skip
    (out / "perf.md").write_text("\n".join(lines) + "\n")
    log("\n".join(lines))
    return {"json": result_path, "markdown": out / "perf.md", "html": out / "perf.md"}


if __name__ == "__main__":
    op_, box_ = sys.argv[1], int(sys.argv[2])
    data_ = Path(sys.argv[3]) if len(sys.argv) > 3 else None
    print(MARK + json.dumps(measure_operation(op_, box_, data_)), flush=True)

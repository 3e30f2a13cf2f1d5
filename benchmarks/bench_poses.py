"""Classification with pose errors (issue 19): EM with and without local pose searches, and refine-then-classify,
next to the oracle with the true and with the written poses.

The dataset is a ``ladder`` preset (4 map-like states) simulated with ``--pose-error-deg`` / ``--shift-error-px``:
the images are made with the true poses, the stars carry perturbed ones. Each arm runs the ``tomohet`` command in
a subprocess with one torch thread (two arms at a time on the 2-core machine) and reads its ``result.json``:

- ``plain``: ``classify`` with the defaults (poses as written);
- ``local``: ``classify --local-angles A --local-shifts S``;
- ``refine_then_classify``: ``refine --local-angles A --local-shifts S``, then ``classify`` (defaults) of the refined
  particles;
- ``true_poses``: ``classify`` (defaults) of the same particles written with their true poses: what the EM reaches
  when the poses are exact (the reference for the search).

Simulated data and runs go under ``--data`` (default ``/tmp/tomohet_bench_poses``), never into the repository.
Writes ``benchmarks/results/poses.json``.

Run: ``.venv/bin/python benchmarks/bench_poses.py [--snr 0.008] [--seeds 0] [--angles 10 --shifts 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TOMOHET = [sys.executable, "-m", "tomohet"]


def _run(args: list[str], log: Path) -> float:
    """Run ``tomohet args`` with one thread; returns the wall time (s). A run whose ``--out`` already holds a
    ``result.json`` is not repeated (its recorded total time is returned)."""
    if "--out" in args:
        done = Path(args[args.index("--out") + 1]) / "result.json"
        if done.exists():
            return json.loads(done.read_text())["timings_s"]["total"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        subprocess.run([*TOMOHET, *args], check=True, stdout=fh, stderr=subprocess.STDOUT, env=env)
    return time.perf_counter() - t0


def dataset(data: Path, snr: float, seed: int, pose_deg: float, shift_px: float, n: int) -> Path:
    folder = data / f"ladder_n{n}_snr{snr}_pose{pose_deg}_shift{shift_px}_seed{seed}"
    if not (folder / "ground_truth.csv").exists():
        _run(["simulate", "--preset", "ladder", "--n-particles", str(n), "--snr", str(snr), "--seed", str(seed),
              "--pose-error-deg", str(pose_deg), "--shift-error-px", str(shift_px), "--out", str(folder)],
             data / f"{folder.name}.log")  # fmt: skip
    return folder


def arm(name: str, folder: Path, angles: float, shifts: float) -> dict:
    oset = str(next(folder.glob("*_optimisation_set.star")))
    runs = folder / "runs"
    runs.mkdir(exist_ok=True)
    search = ["--local-angles", str(angles), "--local-shifts", str(shifts)]
    out = runs / name
    wall = {}
    if name == "true_poses":
        exact = runs / "true_poses_input"
        if not (exact / "optimisation_set.star").exists():
            _write_true_poses(Path(oset), folder / "ground_truth.csv", exact)
        truth = str(folder / "ground_truth.csv")
        wall["classify"] = _run(["classify", str(exact / "optimisation_set.star"), "-K", "4", "--truth", truth,
                                 "--out", str(out)], runs / f"{name}.log")  # fmt: skip
        refined = None
    elif name == "refine_then_classify":
        wall["refine"] = _run(["refine", oset, "--out", str(runs / "refine"), *search], runs / "refine.log")
        refined = json.loads((runs / "refine" / "result.json").read_text())
        refined_set = str(runs / "refine" / "optimisation_set.star")
        truth = str(folder / "ground_truth.csv")
        wall["classify"] = _run(["classify", refined_set, "-K", "4", "--truth", truth, "--out", str(out)],
                                runs / f"{name}.log")  # fmt: skip
    else:
        wall["classify"] = _run(["classify", oset, "-K", "4", "--out", str(out), *(search if name == "local" else [])],
                                runs / f"{name}.log")  # fmt: skip
        refined = None
    result = json.loads((out / "result.json").read_text())
    m = result["metrics"]
    row = {"arm": name, "ari": m["method"]["ari"], "oracle_true_poses_ari": m["oracle"]["ari"],
           "wall_s": {k: round(v, 1) for k, v in wall.items()}, "peak_memory_mb": result["peak_memory_mb"],
           "iterations": len(result["iterations"]), "class_sizes": [c["n"] for c in result["classes"]]}  # fmt: skip
    if "oracle_written_poses" in m:
        row["oracle_poses_given_ari"] = m["oracle_written_poses"]["ari"]
    if "poses" in m:
        row["pose_errors"] = m["poses"]
    if refined is not None:
        row["refine"] = {k: refined[k] for k in ("resolution_before_A", "resolution_after_A", "images_x_poses_per_s",
                                                 "peak_memory_mb")}  # fmt: skip
        row["refine"]["metrics"] = refined.get("metrics")
    if name == "local":
        row["images_x_poses_per_s"] = [round(e["images_per_s"] * e["grid_poses"], 1) for e in result["iterations"]]
    return row


def _write_true_poses(oset: Path, truth_csv: Path, out: Path) -> None:
    """The particles of ``oset`` written with their true poses (from ``ground_truth.csv``) into ``out``."""
    sys.path.insert(0, str(HERE.parent / "src"))
    from tomohet.data.annotate import write_annotated
    from tomohet.data.poses import with_refined_poses
    from tomohet.data.relion5 import read_relion5
    from tomohet.data.truth import load_truth, true_pose_corrections

    ds = read_relion5(oset)
    write_annotated(with_refined_poses(ds, *true_pose_corrections(ds, load_truth(truth_csv, ds.names))), out, {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/tmp/tomohet_bench_poses"))
    ap.add_argument("--snr", type=float, default=0.008)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--n-particles", type=int, default=1000)
    ap.add_argument("--pose-error-deg", type=float, default=6.0)
    ap.add_argument("--shift-error-px", type=float, default=1.0)
    ap.add_argument("--angles", type=float, default=10.0)
    ap.add_argument("--shifts", type=float, default=2.0)
    ap.add_argument("--arms", nargs="+", default=["local", "plain", "refine_then_classify", "true_poses"])
    a = ap.parse_args()
    a.data.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in a.seeds:
        folder = dataset(a.data, a.snr, seed, a.pose_error_deg, a.shift_error_px, a.n_particles)
        with ThreadPoolExecutor(2) as pool:
            for row in pool.map(
                arm, a.arms, [folder] * len(a.arms), [a.angles] * len(a.arms), [a.shifts] * len(a.arms)
            ):
                row.update(seed=seed, snr=a.snr, pose_error_deg=a.pose_error_deg, shift_error_px=a.shift_error_px)
                print(json.dumps(row), flush=True)
                rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "poses.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    key = {(r["arm"], r["seed"], r["snr"]) for r in rows}
    results["rows"] = [r for r in results.get("rows", []) if (r["arm"], r["seed"], r["snr"]) not in key] + rows
    results["search"] = {"angles_deg": a.angles, "shifts_px": a.shifts}
    path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

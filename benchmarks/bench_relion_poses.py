"""RELION 3.1 3D classification with local searches on the pose-error dataset of ``bench_poses.py`` (issue 19).

The same particles as tomohet's arms, written as RELION 3.1 subtomograms with the written (perturbed) poses
(:func:`tomohet.data.subtomo.write_relion31_subtomograms`; the tomohet consensus as ``--ref``), classified by
``relion_refine`` K=4 twice: with given poses (``--skip_align``) and with local searches (``--healpix_order``, 4
= 3.75 degree sampling, 3 = 7.5; ``--sigma_ang``, ``--offset_range`` / ``--offset_step`` in pixels), as
``bench_relion.py`` otherwise; and tomohet's 3D EM on the same subtomogram files, without and with local searches
(``classify --method em3d --local-angles 10 --local-shifts 2``). Reports ARI, wall time and the median angular
error of each arm's poses against the true ones (also after removing the rotation common to all particles).
RELION is a benchmark-only peer (Debian ``relion`` 3.1.3).

Run: ``.venv/bin/python benchmarks/bench_relion_poses.py DATASET_FOLDER``; adds a ``relion`` entry to
``benchmarks/results/poses.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import starfile
import torch

from tomohet.benchmark.metrics import adjusted_rand_index
from tomohet.data.mrc import write_volume
from tomohet.data.relion5 import read_relion5
from tomohet.data.subtomo import write_relion31_subtomograms
from tomohet.data.truth import TRUE_POSE_COLUMNS, load_truth
from tomohet.physics.reconstruct import reconstruct
from tomohet.physics.rotations import euler_to_matrix, mirror_z, rotation_angle

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from bench_relion import run_relion  # noqa: E402  (the same relion_refine command as bench_relion.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--iter", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sigma-ang", type=float, default=3.5, help="degrees (6 deg RMS error: ~3.5 per axis)")
    ap.add_argument("--offset-range", type=float, default=2.0)
    ap.add_argument("--offset-step", type=float, default=1.0)
    ap.add_argument("--healpix-order", type=int, default=4, help="4: 3.75 deg sampling; 3: 7.5 deg")
    ap.add_argument(
        "--arms",
        nargs="+",
        default=["given", "local", "em3d", "em3d_local"],
        help="RELION given (--skip_align) / local, tomohet em3d without / with local searches",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    folder = a.folder
    ds = read_relion5(next(folder.glob("*_optimisation_set.star")))
    truth = load_truth(folder / "ground_truth.csv", ds.names)
    states = truth["state"].to_numpy()
    rel = folder / "relion31"
    star = rel / "subtomo_particles.star"
    if not star.exists():
        write_relion31_subtomograms(ds, rel, oversampling=2, batch_size=16)
    ref = rel / "consensus.mrc"
    if not ref.exists():
        write_volume(ref, reconstruct(ds).full, ds.pixel_size)
    order = {Path(v).name: i for i, v in enumerate(starfile.read(star)["particles"]["rlnImageName"].astype(str))}
    true = euler_to_matrix(*(truth[c].to_numpy(float) for c in TRUE_POSE_COLUMNS[:3]))

    def score(data_star: Path, arm: str, **fields) -> dict:
        """ARI and pose errors of a particles star written by RELION or tomohet for the subtomograms."""
        p = starfile.read(data_star)["particles"]
        idx = np.array([order[Path(v).name] for v in p["rlnImageName"].astype(str)])
        labels = np.zeros(ds.n_particles, int)
        labels[idx] = p["rlnClassNumber"].astype(int).to_numpy() - 1
        row = {"arm": arm, "ari": adjusted_rand_index(states, labels), **fields,
               "class_sizes": np.bincount(labels, minlength=4).tolist()}  # fmt: skip
        # the subtomograms' poses are M A M of the 2D particles' (data.subtomo)
        est = torch.zeros(ds.n_particles, 3, 3, dtype=torch.float64)
        angles = (p[c].to_numpy(float) for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
        est[torch.from_numpy(idx)] = mirror_z() @ euler_to_matrix(*angles) @ mirror_z()
        rel = est.transpose(-1, -2) @ true
        u, _, vt = torch.linalg.svd(rel.mean(0))  # the rotation common to all particles, free to a refined map
        row["median_angle_error_deg"] = float(np.median(np.degrees(rotation_angle(rel).numpy())))
        row["median_angle_error_aligned_deg"] = float(np.median(np.degrees(rotation_angle((u @ vt).T @ rel).numpy())))
        print(json.dumps(row), flush=True)
        return row

    rows = []
    for name, local in (("given poses (--skip_align)", None),
                        ("local searches", {"sigma_ang": a.sigma_ang, "offset_range": a.offset_range,
                                            "offset_step": a.offset_step})):  # fmt: skip
        if ("local" if local else "given") not in a.arms:
            continue
        align = None if local is None else ["--healpix_order", str(a.healpix_order), "--sigma_ang",
                                            str(local["sigma_ang"]), "--offset_range", str(local["offset_range"]),
                                            "--offset_step", str(local["offset_step"])]  # fmt: skip
        folder = rel / (f"local_hp{a.healpix_order}" if local else "given")
        r = run_relion(star, folder, ref, 4, 0.9 * ds.box * ds.pixel_size, a.iter, a.threads, align)
        if "error" in r:
            print(name, r["error"])
            rows.append({"arm": f"RELION 3.1 {name}", **r})
            continue
        rows.append(score(Path(r["data_star"]), f"RELION 3.1 {name}", wall_s=round(r["wall_s"], 1),
                          iterations=r["iterations"], command=" ".join(r["command"])))  # fmt: skip
    for name, search in (("em3d", []), ("em3d_local", ["--local-angles", "10", "--local-shifts", "2"])):
        if name not in a.arms:
            continue
        out = rel / "tomohet" / name
        cmd = [str(ROOT.parent / ".venv" / "bin" / "tomohet"), "classify", str(star), "--method", "em3d", "-K", "4",
               *search, "--out", str(out)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
        t0, ran = time.perf_counter(), not (out / "result.json").exists()
        if ran:
            subprocess.run(cmd, check=True, env=env, capture_output=True)
        result = json.loads((out / "result.json").read_text())
        rows.append(score(out / "particles.star", f"tomohet {name} {' '.join(search)}".strip(),
                          wall_s=round(result["timings_s"]["total"], 1), peak_rss_mb=result.get("peak_memory_mb"),
                          measured_wall_s=round(time.perf_counter() - t0, 1) if ran else None,
                          command=" ".join(cmd[1:])))  # fmt: skip
    path = ROOT / "results" / "poses.json"
    results = json.loads(path.read_text()) if path.exists() else {"rows": []}
    results["relion"] = [r for r in results.get("relion", []) if r["arm"] not in {x["arm"] for x in rows}] + rows
    path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

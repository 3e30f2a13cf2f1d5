"""Linear landscapes from wedge-masked differences: ``wmd-pca`` and ``msvd`` on the hinge preset, next to the oracle.

The ``hinge`` preset (a domain of ~20% of the mass hinging 0-30 degrees, box 32 at 12 A/px, 41 tilts) with 1000
particles at per-image SNR 0.05 and 30% of the particles missing their high tilts (issue 15's benchmark set;
``--quick``: 300 particles) is simulated once with a fixed seed under ``--data`` (default
``/tmp/tomohet_bench_linear3d``; reused when present). Then, each in a fresh subprocess (so that its peak memory is
its own: ``resource.getrusage(RUSAGE_SELF).ru_maxrss``):

- ``oracle``: the Bayes-optimal coordinate estimate given the 11 true maps along the hinge and the true noise
  sigma (:func:`tomohet.benchmark.oracle.oracle` with ``coordinates``), |Spearman rho| with the true angle;
- ``wmd-pca`` (default options, 8 components) and ``msvd`` (default scales 10/20/40 A, clamped to what the data
  hold; 3 components per scale): |Spearman rho| of each of the top 3 latent columns with the true angle (the
  best is the number DESIGN.md calls "best of the top 3"), wall and CPU seconds, peak memory, tilt images per
  second, and the maps at the two ends of the best component (5% and 95% quantiles of its latent) against the
  true end states: correlation in the mask and the FSC = 0.5 resolution.

Writes ``benchmarks/results/linear3d[_quick].json``; ``benchmarks/LANDSCAPE.md`` quotes it.
Run: ``.venv/bin/python benchmarks/bench_linear3d.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import numpy as np  # noqa: E402

THREADS = 2
SEED = 0
SNR = 0.05
MISSING_HIGH_TILTS = 0.3
RESULTS = HERE / "results"


def dataset_dir(root: Path, n: int) -> Path:
    return root / f"hinge_n{n}_snr{SNR:g}_seed{SEED}"


def simulate(root: Path, n: int) -> Path:
    from tomohet.simulate.datasets import simulate_preset

    out = dataset_dir(root, n)
    if not (out / "dataset.json").exists():
        t0 = time.perf_counter()
        simulate_preset("hinge", out, seed=SEED, n_particles=n, snr=SNR,
                        acquisition={"missing_high_tilt_fraction": MISSING_HIGH_TILTS})  # fmt: skip
        print(f"simulated {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(abs(spearmanr(x, y)[0]))


def run_case(case: str, data: Path) -> dict:
    """One case in this (fresh) process; returns its numbers."""
    import resource

    import pandas as pd
    import torch

    torch.set_num_threads(THREADS)
    from tomohet.data.io import read_any
    from tomohet.data.mrc import read_volume

    meta = json.loads((data / "dataset.json").read_text())
    angle = pd.read_csv(data / "ground_truth.csv")["coordinate"].to_numpy()
    ds = read_any(data / meta["optimisation_set"])
    maps = torch.stack([read_volume(data / m)[0] for m in meta["maps"]])
    t0, c0 = time.perf_counter(), time.process_time()
    out: dict = {"case": case}
    if case == "oracle":
        from tomohet.benchmark.oracle import oracle

        res = oracle(ds, maps, meta["noise_sigma"], coordinates=np.asarray(meta["map_coordinates"]))
        out["rho"] = _rho(res.coordinate, angle)
    else:
        from tomohet.methods import msvd, wmd_pca

        res = wmd_pca.fit(ds) if case == "wmd-pca" else msvd.fit(ds)
        out.update(_landscape_numbers(res, angle, maps))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    out["cpu_s"] = round(time.process_time() - c0, 1)
    out["images_per_s"] = round(ds.n_images / max(out["wall_s"], 1e-9), 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _landscape_numbers(res, angle: np.ndarray, maps) -> dict:
    from tomohet.physics.filters import fsc, masked_correlation, resolution_at, soft_sphere

    z = res.latents
    rhos = [_rho(z[:, i], angle) for i in range(min(3, z.shape[1]))]
    best = int(np.argmax(rhos))
    d, apix = maps.shape[-1], res.pixel_size
    sphere = soft_sphere(d, 0.45 * d)
    zb = z[:, best]
    increasing = np.corrcoef(zb, angle)[0, 1] >= 0  # the component's sign is arbitrary
    ends = {}
    for name, q, k in (("start", 0.05, 0), ("end", 0.95, -1)):
        qq = q if increasing else 1 - q
        m = res.extra["mean_map"] + float(np.quantile(zb, qq)) * res.volumes[best]
        truth, other = maps[k], maps[-1 - k]
        ends[name] = {
            "cc_true": round(masked_correlation(m, truth, sphere), 4),
            "cc_other_end": round(masked_correlation(m, other, sphere), 4),
            "fsc05_A": round(resolution_at(fsc(m * sphere, truth * sphere).float(), d, apix, 0.5), 1),
        }
    log = res.log[-1]
    return {
        "rho_top3": [round(r, 4) for r in rhos], "best_of_top3": round(max(rhos), 4), "best_component": best,
        "explained_variance_ratio": np.round(np.asarray(res.extra["explained_variance_ratio"]), 4).tolist(),
        "ends_of_best_component": ends, "feature_box": res.extra.get("feature_box"),
        "consensus_resolution_A": round(float(res.extra["consensus_resolution_A"]), 2),
        "scales_A": res.extra.get("scales_A"), "component_scale_A": np.asarray(
            res.extra.get("component_scale_A", [])).tolist(), "notes": res.extra.get("notes", []),
        "stage_seconds": {k: log.get(k) for k in ("consensus_seconds", "difference_seconds", "svd_seconds")},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 particles instead of 1000")
    ap.add_argument("--data", type=Path, default=Path("/tmp/tomohet_bench_linear3d"))
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    ap.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.dataset)), flush=True)
        return
    n = 300 if args.quick else 1000
    data = simulate(args.data, n)
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    for case in ("oracle", "wmd-pca", "msvd"):
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--dataset", str(data)], env=env,
                              capture_output=True, text=True)  # fmt: skip
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            raise SystemExit(f"{case} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(line[-1][7:]))
        print(json.dumps(rows[-1]), flush=True)
    summary = {
        "dataset": {"preset": "hinge", "n_particles": n, "snr": SNR, "seed": SEED,
                    "missing_high_tilt_fraction": MISSING_HIGH_TILTS, "path": str(data)},
        "machine": {"cpus": os.cpu_count(), "threads": THREADS, "platform": platform.platform(),
                    "load_average": os.getloadavg()},
        "results": rows,
    }  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"linear3d{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(summary, indent=2))
    print(f"wrote {path}")
    print("| method | best of top 3 abs(rho) | top-3 abs(rho) | wall s | CPU s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        top = r.get("rho_top3", [r.get("rho")])
        print(f"| {r['case']} | {r.get('best_of_top3', r.get('rho')):.3f} | {top} | {r['wall_s']} | {r['cpu_s']} | "
              f"{r['peak_rss_mb']} |")  # fmt: skip


if __name__ == "__main__":
    main()

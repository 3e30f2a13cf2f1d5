"""Benchmark of the landscape methods (issue 15): accuracy against ground truth and the oracle, wall time, peak
memory and images/s, on the ``hinge`` preset (0-30 degree hinge of a ~20%-mass domain, SNR 0.05, 41 tilts, 30% of
the particles missing their high tilts) and the 4-state ``discrete_default`` preset (k-means on the latents); for
the VAE (issue 17) also the hinge with every tilt or a unidirectional tilt scheme, the 2-state ``discrete_easy``
and the ``ladder`` preset at the physical limit.

Each case runs ``tomohet landscape`` (:func:`tomohet.cli.landscape.run_landscape`) in its own process, so its
``result.json`` holds that case's own peak memory (``getrusage``). Results go to ``--out`` (datasets and runs)
and a summary JSON; the table printed at the end is what ``benchmarks/LANDSCAPE.md`` quotes.

    .venv/bin/python benchmarks/bench_landscape.py --out /tmp/bench_landscape            # all cases
    .venv/bin/python benchmarks/bench_landscape.py --out /tmp/bl --cases hinge --n-particles 300
    .venv/bin/python benchmarks/bench_landscape.py --out /tmp/bv --methods vae --cases hinge hinge_all_tilts \
        hinge_unidirectional discrete_easy
    .venv/bin/python benchmarks/bench_landscape.py --out /tmp/big --cases hinge --n-particles 10000 --box 64 \
        --iterations 3 --no-oracle                                                       # scale: memory, images/s
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    # name: (preset, acquisition overrides, run_landscape keywords)
    "hinge": ("hinge", {"missing_high_tilt_fraction": 0.3}, {"components": 8, "clusters": None}),
    "discrete_default": ("discrete_default", {}, {"components": 8, "clusters": 4}),
    # the VAE's robustness cases (issue 17): the hinge with every tilt, and recorded in one sweep
    "hinge_all_tilts": ("hinge", {}, {"components": 8, "clusters": None}),
    "hinge_unidirectional": ("hinge", {"scheme": "unidirectional"}, {"components": 8, "clusters": None}),
    "discrete_easy": ("discrete_easy", {}, {"components": 8, "clusters": 2}),
    "ladder": ("ladder", {}, {"components": 8, "clusters": 4}),
}


def simulate(case: str, out: Path, n: int, snr: float | None, box: int | None) -> Path:
    from tomohet.simulate.datasets import simulate_preset

    preset, acq, _ = CASES[case]
    acq = dict(acq)
    if box is not None and box != 32:
        acq.update(box=box, pixel_size=12.0 * 32 / box)
    folder = out / f"{case}_n{n}_box{box or 32}"
    oset = next(folder.glob("*_optimisation_set.star"), None) if folder.exists() else None
    if oset is None:
        t = time.perf_counter()
        layout, _ = simulate_preset(preset, folder, seed=0, n_particles=n, snr=snr, acquisition=acq)
        oset = layout.optimisation_set
        print(f"simulated {case} ({n} particles) in {time.perf_counter() - t:.0f} s", flush=True)
    return oset


def run_case(case: str, oset: Path, run_out: Path, method: str, iterations: int | None, oracle: bool = True) -> dict:
    from tomohet.cli.landscape import run_landscape

    _, _, kw = CASES[case]
    return run_landscape(oset, run_out, method=method, iterations=iterations, seed=0, oracle=oracle, **kw)


def summarise(case: str, method: str, res: dict) -> dict:
    m = res.get("metrics", {})
    row = {"case": case, "method": method, "wall_s": res["timings_s"]["total"],
           "fit_s": res["timings_s"].get("landscape"), "peak_memory_mb": res["peak_memory_mb"],
           "peak_anonymous_memory_mb": res.get("peak_anonymous_memory_mb"), "timings_s": res["timings_s"],
           "images_per_s_per_pass": res.get("images_per_s_per_iteration"), "working_box": res.get("working_box"),
           "e_step_limit_A": res.get("e_step_limit_A"), "iterations": len(res.get("iterations", []))}  # fmt: skip
    if "method" in m:
        row["best_top3_abs_rho"] = m["method"]["spearman_abs"]
        row["abs_rho_per_component"] = m["method"].get("spearman_abs_per_component")
        row["best_component"] = m["method"]["spearman_component"]
    if "oracle" in m:
        row["oracle_abs_rho"] = m["oracle"]["spearman_abs"]
    if "end_maps_fsc" in m:
        row["end_maps_fsc_auc"] = {k: m["end_maps_fsc"][k]["fsc_auc"] for k in ("low", "high")}
        row["end_maps_res_0.5_A"] = {k: m["end_maps_fsc"][k]["resolution_0.5"] for k in ("low", "high")}
    if "per_particle_fsc" in m:
        row["per_particle_fsc_auc"] = m["per_particle_fsc"]["fsc_auc_mean"]
        row["mean_map_fsc_auc"] = m["per_particle_fsc"]["mean_map_fsc_auc_mean"]
    for how in ("kmeans", "gmm", "xd"):
        if f"clusters_{how}" in m:
            row[f"{how}_ari"] = m[f"clusters_{how}"]["ari"]
    if "oracle_discrete" in m:
        row["oracle_ari"] = m["oracle_discrete"]["ari"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--methods", nargs="+", default=["ppca"])
    ap.add_argument("--n-particles", type=int, default=1000)
    ap.add_argument("--snr", type=float, default=None, help="default: the preset's (0.05)")
    ap.add_argument("--box", type=int, default=None, help="32 (the presets') or 64 (pixel size halved)")
    ap.add_argument("--iterations", type=int, default=None, help="default: the method's")
    ap.add_argument("--no-oracle", action="store_true", help="skip the oracle (a pass with every true map)")
    ap.add_argument("--one", nargs=3, metavar=("CASE", "METHOD", "OSET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.one:  # a single case in this process (peak memory of that case alone)
        case, method, oset = args.one
        run_out = args.out / f"run_{case}_{method}_n{args.n_particles}_box{args.box or 32}"
        res = run_case(case, Path(oset), run_out, method, args.iterations, not args.no_oracle)
        print(json.dumps(summarise(case, method, res)))
        return
    rows = []
    for case in args.cases:
        oset = simulate(case, args.out, args.n_particles, args.snr, args.box)
        for method in args.methods:
            cmd = [sys.executable, __file__, "--out", str(args.out), "--n-particles", str(args.n_particles),
                   "--one", case, method, str(oset)]  # fmt: skip
            if args.box:
                cmd += ["--box", str(args.box)]
            if args.iterations:
                cmd += ["--iterations", str(args.iterations)]
            if args.no_oracle:
                cmd += ["--no-oracle"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                rows.append({"case": case, "method": method, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = args.out / f"landscape_summary_n{args.n_particles}_box{args.box or 32}.json"
    summary.write_text(json.dumps(rows, indent=2))
    print(f"wrote {summary}")


if __name__ == "__main__":
    main()

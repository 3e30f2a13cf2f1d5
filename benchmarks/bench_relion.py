"""RELION 3.1 3D classification of subtomograms next to tomohet's 2D EM, 3D EM and the oracle, on the same data.

For each preset: simulate (tomohet.simulate), write RELION 3.1 subtomograms (data + 3D CTF volume, tomogram
frame, :func:`tomohet.data.subtomo.write_relion31_subtomograms`), write the consensus map (tomohet's Wiener
reconstruction from the 2D stacks) as RELION's ``--ref``, run ``relion_refine`` (K classes, ``--skip_align``,
``--tau2_fudge 4``, ``--iter 25``, ``--j 2``, ``--ctf``), read ``rlnClassNumber`` from its last ``_data.star``,
and run on the same particles: tomohet's 2D EM (tilt stacks), 3D EM on the very RELION 3.1 files, 3D EM on
pseudo-subtomograms made in memory with the CTF^2-weighted noise model and with the white one (what RELION
assumes), and the oracle (true maps, true noise). Every method is timed on the same machine with 2 threads.

RELION is a benchmark-only peer (Debian ``relion`` 3.1.3: ``apt-get install relion``), never a dependency.

Run: ``.venv/bin/python benchmarks/bench_relion.py [--presets discrete_easy discrete_hard] [--out DIR]``;
writes ``benchmarks/results/relion.json`` and prints a Markdown table (copied into ``benchmarks/RELION.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import starfile
import torch

from tomohet.benchmark.metrics import adjusted_rand_index
from tomohet.benchmark.oracle import oracle
from tomohet.benchmark.peers.relion31 import relion_command
from tomohet.data.mrc import read_volume, write_volume
from tomohet.data.relion5 import read_relion5
from tomohet.data.subtomo import read_subtomograms, write_relion31_subtomograms
from tomohet.methods.em2d import EMOptions, classify_em2d
from tomohet.methods.em3d import EM3DOptions, classify_em3d
from tomohet.methods.hillclimb import HillClimbOptions, classify_hillclimb
from tomohet.physics.reconstruct import reconstruct
from tomohet.simulate.datasets import simulate_preset

# case -> (tomohet preset, particles, classes, SNR or None for the preset's)
PRESETS = {
    "discrete_easy": ("discrete_easy", 600, 2, None),
    "discrete_hard": ("discrete_hard", 1000, 4, None),
    "discrete_default_snr0.005": ("discrete_default", 1000, 4, 0.005),  # where the oracle drops below 1
}
ROOT = Path(__file__).resolve().parent


def run_relion(
    star: Path, out: Path, ref: Path, k: int, diameter_A: float, iters: int, threads: int, align: list | None = None
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = relion_command(star, out, ref, k, diameter_A, iters, threads, align)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=star.parent, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out / "relion_stdout.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        return {"error": f"relion_refine exited {proc.returncode}: {proc.stderr.strip()[-800:]}", "command": cmd}
    data = sorted(out.glob("run_it*_data.star"))[-1]
    parts = starfile.read(data)["particles"]
    return {"command": cmd, "wall_s": wall, "data_star": str(data), "iterations": int(data.stem[6:9]),
            "image_names": parts["rlnImageName"].astype(str).tolist(),
            "classes": parts["rlnClassNumber"].astype(int).to_numpy()}  # fmt: skip


def bench_preset(
    name: str, preset: str, n: int, k: int, snr: float | None, out: Path, iters: int, threads: int, write_os: int
) -> dict:
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    sim = out / "data"
    if not (sim / "dataset.json").exists():
        simulate_preset(preset, sim, seed=0, n_particles=n, snr=snr)
    meta = json.loads((sim / "dataset.json").read_text())
    truth = __import__("pandas").read_csv(sim / "ground_truth.csv")["state"].to_numpy()
    ds = read_relion5(sim / meta["optimisation_set"])
    maps = torch.stack([read_volume(sim / f)[0] for f in meta["maps"]])
    rows: list[dict] = []

    def add(method: str, labels: np.ndarray, wall: float, n_iter: int, note: str = "", log: list | None = None) -> None:
        """``s_per_iter``: mean seconds of one EM iteration from the method's log when it has one (tomohet), else
        wall time / iterations (RELION: includes its start-up and reading of the subtomograms)."""
        ari = adjusted_rand_index(truth, labels)
        per = np.mean([e["seconds"] for e in log]) if log else wall / max(n_iter, 1)
        rows.append({"method": method, "ari": round(ari, 3), "wall_s": round(wall, 1), "iterations": n_iter,
                     "s_per_iter": round(float(per), 3), "class_sizes": np.bincount(labels).tolist(),
                     "note": note})  # fmt: skip
        print(f"{name:14s} {method:34s} ARI {ari:.3f} {wall:8.1f} s", flush=True)

    t0 = time.perf_counter()
    orc = oracle(ds, maps, meta["noise_sigma"], np.asarray(meta["abundances"]))
    add("oracle (true maps)", orc.labels, time.perf_counter() - t0, 1)

    rel = out / "relion31"
    star = rel / "subtomo_particles.star"
    if not star.exists():
        t0 = time.perf_counter()
        write_relion31_subtomograms(ds, rel, oversampling=write_os, batch_size=16)
        print(f"wrote RELION 3.1 subtomograms in {time.perf_counter() - t0:.0f} s", flush=True)
    ref = rel / "consensus.mrc"
    if not ref.exists():
        write_volume(ref, reconstruct(ds).full, ds.pixel_size)
    relion = {"error": "relion_refine not found on PATH"}
    if shutil.which("relion_refine"):
        relion = run_relion(star, rel / f"class_K{k}", ref, k, 0.9 * ds.box * ds.pixel_size, iters, threads)
    if "error" in relion:
        print("RELION:", relion["error"], flush=True)
    else:
        order = {Path(v).name: i for i, v in enumerate(starfile.read(star)["particles"]["rlnImageName"].astype(str))}
        labels = np.zeros(n, int)
        for name_, c in zip(relion["image_names"], relion["classes"], strict=True):
            labels[order[Path(name_).name]] = c - 1
        add(f"RELION 3.1 relion_refine (K={k})", labels, relion["wall_s"], relion["iterations"],
            "wall time includes reading the subtomograms")  # fmt: skip

    t0 = time.perf_counter()
    r2 = classify_em2d(ds, EMOptions(n_classes=k, n_iter=12))
    add("tomohet em2d (2D tilt stacks)", r2.labels, time.perf_counter() - t0, len(r2.log), log=r2.log)
    for init in ("random", "pca"):  # STOPGAP's scheme (random starts) and the same from the PCA start
        t0 = time.perf_counter()
        hc = classify_hillclimb(ds, HillClimbOptions(n_classes=k, init=init, n_runs=3))
        cons = np.asarray(hc.extra["consistency"])
        keep = cons >= 1.0
        ari_keep = adjusted_rand_index(truth[keep], hc.labels[keep]) if keep.sum() > 1 else float("nan")
        add(f"tomohet hillclimb x3 runs, {init} starts", hc.labels, time.perf_counter() - t0, len(hc.log),
            f"consistent in all runs: {keep.mean():.0%} of particles, ARI {ari_keep:.3f} on them", hc.log)  # fmt: skip
    sub = read_subtomograms(star)
    t0 = time.perf_counter()
    r3 = classify_em3d(sub, EM3DOptions(n_classes=k, n_iter=12))
    add("tomohet em3d (the RELION 3.1 files)", r3.labels, time.perf_counter() - t0, len(r3.log),
        f"prepare {r3.extra['prepare_seconds']:.1f} s", r3.log)  # fmt: skip
    for model in ("weighted", "white"):
        t0 = time.perf_counter()
        r = classify_em3d(ds, EM3DOptions(n_classes=k, n_iter=12, noise_model=model))
        add(f"tomohet em3d in memory, {model} noise", r.labels, time.perf_counter() - t0, len(r.log),
            f"prepare {r.extra['prepare_seconds']:.1f} s", r.log)  # fmt: skip
    return {"preset": name, "n_particles": n, "n_classes": k, "measured_snr": meta["measured_snr"], "rows": rows,
            "relion_command": " ".join(relion.get("command", [])), "relion_error": relion.get("error")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--particles", type=int, nargs="+", default=None, help="override the particle counts")
    ap.add_argument("--out", type=Path, default=Path("/tmp/tomohet_bench_relion"))
    ap.add_argument("--iter", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write-oversampling", type=int, default=2)
    args = ap.parse_args()
    results = []
    for i, p in enumerate(args.presets):
        preset, n, k, snr = PRESETS[p]
        if args.particles:
            n = args.particles[i]
        results.append(bench_preset(p, preset, n, k, snr, args.out / f"{p}_{n}", args.iter, args.threads,
                                    args.write_oversampling))  # fmt: skip
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "machine": platform.platform(),
           "cpus": os.cpu_count(), "load_average": os.getloadavg(), "threads": args.threads}  # fmt: skip
    res_dir = ROOT / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "relion.json").write_text(json.dumps({"environment": env, "results": results}, indent=2))
    print(f"\nload average at the end: {env['load_average']}")
    print("\n| preset | method | ARI | wall time (s) | iterations | s / iteration | note |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        for row in r["rows"]:
            print(f"| {r['preset']} ({r['n_particles']}) | {row['method']} | {row['ari']:.3f} | {row['wall_s']} | "
                  f"{row['iterations']} | {row['s_per_iter']} | {row['note']} |")  # fmt: skip


if __name__ == "__main__":
    main()

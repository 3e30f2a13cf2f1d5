"""Discrete classification: accuracy of ``classify_em2d`` against the oracle along an SNR curve, and EM speed.

Two parts (``--only snr|speed``; both by default):

- ``snr``: the ``discrete_default`` preset (assembly phantom, 4 states, ~7% mass steps, 1000 particles x 41
  tilts; ``--quick``: 300) simulated with a fixed seed at SNRs from 0.05 down to 0.002; on each, the oracle (true
  maps, true noise sigma and abundances from ``dataset.json``) and ``classify_em2d`` (default options, K = 4):
  ARI, matched accuracy, population error and wall time. Plus the ``rare`` preset (2 states, one at 5%, SNR
  0.05; rare-state F1 of EM and oracle with K = 2, the number of states, as DESIGN.md defines "found") and
  ``discrete_easy`` (2 states, 600 particles, SNR 0.05, K = 2) for DESIGN.md's peer numbers. Wall and CPU
  seconds are recorded with the load average (the machine is shared).
  Writes ``benchmarks/results/classify_snr[_quick][_TAG].json``.
- ``speed``: images/s of single EM iterations (``EMClassifier.iterate``; the references are the true maps and
  sigma2 the true white noise power, so no initialisation pass is timed) at box 32 (assembly phantom) and box
  64 (the ``large`` preset), with images streamed from the memory-mapped float16 stacks every iteration
  (``EMOptions(cache_gb=0)``) and, where it fits, with the prepared spectra cached in memory (first iteration
  fills the cache, the second reads it). Each case runs in a fresh subprocess that reports VmHWM (peak RSS) from
  ``/proc/self/status`` and the RSS before the first iteration.
  Writes ``benchmarks/results/classify_speed[_quick].json``.

Simulated data go under ``--data`` (default ``/tmp/tomohet_bench_classify``), never into the repository, and
are reused when a dataset with the same preset, size, SNR and seed already exists there.

Run: ``.venv/bin/python benchmarks/bench_classify.py [--quick] [--only snr|speed]``.
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
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from tomohet.benchmark.metrics import discrete_report  # noqa: E402
from tomohet.benchmark.oracle import oracle  # noqa: E402
from tomohet.data.mrc import read_volume  # noqa: E402
from tomohet.data.relion5 import read_relion5  # noqa: E402
from tomohet.methods.em2d import EMClassifier, EMOptions, classify_em2d  # noqa: E402
from tomohet.simulate import phantoms  # noqa: E402
from tomohet.simulate.datasets import PRESETS, simulate_dataset, simulate_preset  # noqa: E402

THREADS = 2
SEED = 0
SNRS = (0.05, 0.02, 0.01, 0.005, 0.003, 0.002)
RESULTS = HERE / "results"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> dict:
    return {
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor(),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------- datasets
def dataset_dir(root: Path, tag: str) -> Path:
    return root / tag


def ensure_preset(root: Path, preset: str, n: int, snr: float, seed: int = SEED) -> tuple[Path, float]:
    """Simulate ``preset`` (size ``n``, SNR ``snr``) into ``root`` unless it exists; returns (folder, seconds)."""
    out = dataset_dir(root, f"{preset}_n{n}_snr{snr:g}_seed{seed}")
    if (out / "dataset.json").exists():
        return out, 0.0
    t0 = time.perf_counter()
    simulate_preset(preset, out, seed=seed, n_particles=n, snr=snr)
    return out, time.perf_counter() - t0


def ensure_box32(root: Path, n: int, seed: int = SEED) -> tuple[Path, float]:
    """The discrete_default phantom and acquisition (box 32) at ``n`` particles."""
    out = dataset_dir(root, f"box32_n{n}_seed{seed}")
    if (out / "dataset.json").exists():
        return out, 0.0
    p = PRESETS["discrete_default"]
    acq = p.acquisition
    ph = phantoms.preset(p.phantom, box=acq.box, pixel_size=acq.pixel_size, seed=seed, **p.phantom_options)
    t0 = time.perf_counter()
    simulate_dataset(ph, n, acq, out, "box32", seed)
    return out, time.perf_counter() - t0


def open_dataset(folder: Path):
    meta = json.loads((folder / "dataset.json").read_text())
    ds = read_relion5(folder / meta["optimisation_set"])
    maps = torch.stack([read_volume(folder / f)[0] for f in meta["maps"]]).float()
    truth = pd.read_csv(folder / "ground_truth.csv")
    by_name = dict(zip(truth["rlnTomoParticleName"].astype(str), truth["state"], strict=True))
    states = np.array([by_name[n] for n in ds.names])
    return ds, maps, states, meta


# ------------------------------------------------------------------------------------------------ accuracy
def summary(rep: dict, true: np.ndarray, pred: np.ndarray, rare_state: int | None) -> dict:
    from tomohet.benchmark.metrics import rare_state_f1

    out = {"ari": rep["ari"], "accuracy": rep["accuracy"], "nmi": rep["nmi"],
           "population_max_abs_error": rep["population_error"]["max_abs"],
           "class_sizes": np.bincount(pred, minlength=int(pred.max()) + 1).tolist()}  # fmt: skip
    if rare_state is not None:
        out["rare_state_f1"] = rare_state_f1(true, pred, rare_state)
    return out


def accuracy_case(folder: Path, n_classes: int, rare: bool = False) -> dict:
    ds, maps, states, meta = open_dataset(folder)
    rare_state = int(np.argmin(meta["abundances"])) if rare else None
    t0, c0 = time.perf_counter(), time.process_time()
    o = oracle(ds, maps, meta["noise_sigma"], np.asarray(meta["abundances"]))
    t_oracle, c_oracle = time.perf_counter() - t0, time.process_time() - c0
    load_oracle = load()
    t0, c0 = time.perf_counter(), time.process_time()
    res = classify_em2d(ds, EMOptions(n_classes=n_classes, seed=SEED))
    t_em, c_em = time.perf_counter() - t0, time.process_time() - c0
    return {
        "preset": meta["name"], "n_particles": ds.n_particles, "n_images": ds.n_images, "box": ds.box,
        "requested_snr": meta["requested_snr"], "measured_snr": meta["measured_snr"],
        "noise_sigma": meta["noise_sigma"], "abundances": meta["abundances"], "n_classes": n_classes,
        "oracle": {**summary(discrete_report(states, o.labels), states, o.labels, rare_state),
                   "seconds": t_oracle, "cpu_seconds": c_oracle, "load": load_oracle},
        "em": {**summary(discrete_report(states, res.labels), states, res.labels, rare_state),
               "seconds": t_em, "cpu_seconds": c_em, "load": load(), "iterations": len(res.log),
               "init_class_sizes": res.extra.get("init_class_sizes"),
               "images_per_s_per_iteration": [e["images_per_s"] for e in res.log]},
    }  # fmt: skip


def run_snr(args) -> dict:
    root = Path(args.data)
    n = 300 if args.quick else 1000
    cases = []

    def record(label: str, folder: Path, sim_s: float, k: int, rare: bool = False) -> None:
        c = accuracy_case(folder, k, rare)
        c.update(case=label, simulate_seconds=sim_s)
        cases.append(c)
        o, e = c["oracle"], c["em"]
        extra = ""
        if rare:
            extra = f"  rare F1 oracle {o['rare_state_f1']['f1']:.3f} EM {e['rare_state_f1']['f1']:.3f}"
        print(f"{label:>16} snr {c['requested_snr']:<6g} oracle ARI {o['ari']:.3f} acc {o['accuracy']:.3f} "
              f"({o['seconds']:.0f} s, cpu {o['cpu_seconds']:.0f} s) | EM ARI {e['ari']:.3f} "
              f"acc {e['accuracy']:.3f} ({e['seconds']:.0f} s, cpu {e['cpu_seconds']:.0f} s, "
              f"{e['iterations']} it){extra}  [load {e['load']}]", flush=True)  # fmt: skip
        write(args, "snr", {"machine": machine(), "quick": args.quick, "seed": SEED, "cases": cases})

    for snr in args.snrs if "curve" in args.cases else ():
        folder, sim_s = ensure_preset(root, "discrete_default", n, snr)
        record("discrete_default", folder, sim_s, 4)
    if "rare" in args.cases:
        folder, sim_s = ensure_preset(root, "rare", n, 0.05)
        record("rare", folder, sim_s, 2, rare=True)  # DESIGN.md: "found" is judged with K = number of states
    if "easy" in args.cases:
        folder, sim_s = ensure_preset(root, "discrete_easy", 200 if args.quick else 600, 0.05)
        record("discrete_easy", folder, sim_s, 2)
    return {"cases": cases}


# --------------------------------------------------------------------------------------------------- speed
def vm_status() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmHWM", "VmRSS")):
            key, val = line.split(":")
            out[key] = int(val.split()[0]) / 1024  # MiB
    return out


def speed_worker(folder: Path, cache_gb: float, iters: int, limit: float | None = None) -> dict:
    """One case in this (fresh) process: ``iters`` EM iterations from the true maps, E-step band to ``limit``
    (Angstrom; None: Nyquist, images not cropped); prints JSON."""
    ds, maps, _, meta = open_dataset(folder)
    opt = EMOptions(n_classes=maps.shape[0], cache_gb=cache_gb, seed=SEED, resolution_limit_A=limit)
    em = EMClassifier(ds, opt)
    em.volumes = maps.clone()
    em.tau2 = torch.ones(em.n_shells)
    em.sigma2 = torch.full((em.n_shells,), ds.box**2 * meta["noise_sigma"] ** 2)  # white noise, unnormalised FFT
    rss_before = vm_status()["VmRSS"]
    its = []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        em.iterate(1.0)
        s, c = time.perf_counter() - t0, time.process_time() - c0
        its.append({"seconds": s, "images_per_s": ds.n_images / s, "cpu_seconds": c,
                    "images_per_cpu_s": ds.n_images / c, "load": load()})  # fmt: skip
    st = vm_status()
    return {"n_particles": ds.n_particles, "n_images": ds.n_images, "box": ds.box, "cache_gb": cache_gb,
            "resolution_limit_A": limit, "working_box": em.m, "cached": em._cache is not None, "iterations": its,
            "rss_before_mib": rss_before,
            "peak_rss_mib": st["VmHWM"]}  # fmt: skip


def stack_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.mrcs"))


def run_speed(args) -> dict:
    root = Path(args.data)
    n32 = args.n32 or (500 if args.quick else 3000)
    n64 = args.n64 or (200 if args.quick else 1500)
    cases = []
    sims = []
    for box, n in ((32, n32), (64, n64)):
        if box == 32:
            folder, sim_s = ensure_box32(root, n)
        else:
            folder, sim_s = ensure_preset(root, "large", n, 0.05)
        sims.append({"box": box, "n_particles": n, "seconds": sim_s, "load": load(), "folder": str(folder),
                     "bytes_on_disk": stack_bytes(folder)})  # fmt: skip
        print(f"simulated box {box}: {n} particles in {sim_s:.0f} s [load {load()}]", flush=True)
        per_particle = 41 * box * (box // 2 + 1) * 4 * 6
        limits = [None] + (args.limits if box == 64 else [])
        for cache_gb, limit in [(c, None) for c in (0.0, 3.0)] + [(0.0, lim) for lim in limits[1:]]:
            if cache_gb > 0 and per_particle * n >= cache_gb * 1e9:
                print(f"box {box}: prepared spectra ({per_particle * n / 1e9:.1f} GB) exceed the default cache")
                continue
            cmd = [sys.executable, __file__, "--worker", str(folder), "--cache-gb", str(cache_gb),
                   "--iters", str(args.iters)] + ([] if limit is None else ["--limit", str(limit)])  # fmt: skip
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, check=True)
            c = json.loads(r.stdout.strip().splitlines()[-1])
            c["subprocess_seconds"] = time.perf_counter() - t0
            cases.append(c)
            rates = ", ".join(f"{i['images_per_s']:.0f} ({i['images_per_cpu_s']:.0f}/cpu-s)" for i in c["iterations"])
            print(f"box {box} (working box {c['working_box']}) n {n} cache_gb {cache_gb}: images/s per iteration "
                  f"{rates}; peak RSS "
                  f"{c['peak_rss_mib']:.0f} MiB (before iterating {c['rss_before_mib']:.0f}) [load {load()}]",
                  flush=True)  # fmt: skip
            write(args, "speed", {"machine": machine(), "quick": args.quick, "simulations": sims, "cases": cases})
    return {"simulations": sims, "cases": cases}


def write(args, part: str, payload: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    name = f"classify_{part}{'_quick' if args.quick else ''}{'_' + args.tag if args.tag else ''}.json"
    (RESULTS / name).write_text(json.dumps(payload, indent=1, default=float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller datasets (300 particles, speed on a few hundred)")
    ap.add_argument("--only", choices=("snr", "speed"))
    ap.add_argument("--data", default="/tmp/tomohet_bench_classify", help="where simulated datasets go")
    ap.add_argument("--iters", type=int, default=2, help="EM iterations per speed case")
    ap.add_argument("--n32", type=int, help="particles of the box-32 speed dataset (default 3000; quick 500)")
    ap.add_argument("--n64", type=int, help="particles of the box-64 speed dataset (default 1500; quick 200)")
    ap.add_argument(
        "--snrs",
        type=lambda v: [float(x) for x in v.split(",")],
        default=list(SNRS),
        help="SNRs of the curve, comma-separated (default %(default)s)",
    )
    ap.add_argument(
        "--cases",
        type=lambda v: v.split(","),
        default=["curve", "rare", "easy"],
        help="which accuracy cases: curve,rare,easy (default all)",
    )
    ap.add_argument(
        "--limits",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[],
        help="E-step band limits (A) of extra box-64 speed cases, images Fourier-cropped (e.g. 18,24)",
    )
    ap.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="", help="suffix of the JSON file (to run parts side by side)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--cache-gb", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    if args.worker:
        print(json.dumps(speed_worker(Path(args.worker), args.cache_gb, args.iters, args.limit)))
        return
    print(f"machine: {os.cpu_count()} cores, load {load()}", flush=True)
    if args.only in (None, "snr"):
        run_snr(args)
    if args.only in (None, "speed"):
        run_speed(args)


if __name__ == "__main__":
    main()

"""Discrete classification at the physical limit (issue 16): ``classify_em2d`` next to the oracle on the presets
whose oracle is 0.91-0.95 (``ladder``: 4 map-like states, K = 4) or finds a 5% state almost perfectly
(``rare_spread``: K = 2), over dataset seeds.

Each case (preset, dataset seed, EM variant) runs in a fresh subprocess, one torch thread, and reports its wall
time, CPU time and peak RSS (VmHWM); two cases run at a time on the 2-core machine. Variants:

- ``default``: today's defaults (``EMOptions()``);
- ``no_patterns``: the defaults of 2026-12-01, before the class differences were put on one pattern per voxel
  (``difference_patterns``; identical at K = 2);
- ``filtered``: the defaults of session 10 (no rare-state starts beside the PCA start);
- ``unfiltered``: the defaults of session 9 (no half-set filter of the class differences);
- ``pooled``: the defaults of session 8 (class maps shrunk toward the pooled map, ``tau2_fudge`` 4);
- ``before``: the defaults before issue 16: PCA features at a fixed band (2.5 x Nyquist = 60 A at 12 A/px)
  instead of the consensus resolution, class maps regularised toward zero with ``tau2_fudge`` 4, no variability
  mask.

Simulated data go under ``--data`` (default ``/tmp/tomohet_bench_limit``), never into the repository.
Writes ``benchmarks/results/classify_limit.json``.

Run: ``.venv/bin/python benchmarks/bench_limit.py [--seeds 0 1 2] [--variants default before] [--snrs ...]``
(``--snrs`` gives the SNR curve: every preset at each SNR); ``--method em3d --variants default filtered3d masked3d
plain3d``: the 3D EM (``results/classify_limit_em3d.json``; ``plain3d``: before em2d's search; ``masked3d``: band
and mask; ``filtered3d``: band, mask and half-set filter without the rare-state starts); ``--method ppca --variants
default kappa_updated``: ``landscape --method ppca`` (8 components, the CLI's 15 iterations) and the ``xd`` clusters
of its latents with K = the preset's states (``results/landscape_limit_ppca.json``, the clusters' ARI under
``em_ari``; ``kappa_updated``: the prior's scale re-estimated every iteration, as before the eighth session of
2026-12-01, but for the expanded basis).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PRESETS = {"ladder": 4, "rare_spread": 2}
VARIANTS = {
    "default": {},
    # the defaults of 2026-12-01 (before class differences were put on one pattern per voxel; the same at K = 2)
    "no_patterns": {"difference_patterns": False},
    # the defaults of session 10: the PCA start alone (no coherent groups tried as rare-state classes)
    "filtered": {"rare_starts": 0},
    # the defaults of session 9: as today without the half-set filter of class differences
    "unfiltered": {"filter_differences": False},
    # the defaults of session 8: class maps shrunk toward the pooled map, tau2_fudge 4, variability mask
    "pooled": {"shrink_to_mean": True, "tau2_fudge": 4.0, "filter_differences": False},
    # em3d only: the 3D EM before it got em2d's search (full band, features at 2.5 x Nyquist, no mask, no groups)
    "plain3d": {"auto_band": False, "confine_differences": False, "filter_differences": False, "rare_starts": 0},
    # em3d only: em2d's band and mask, no half-set filter, no rare-state starts
    "masked3d": {"filter_differences": False, "rare_starts": 0},
    # em3d only: band, mask and half-set filter, no rare-state starts
    "filtered3d": {"rare_starts": 0},
    # em3d only: the class maps' prior 4x wider (em2d's tau2_fudge), without the filter, with and without starts
    "fudge16_3d": {"tau2_fudge": 16.0, "filter_differences": False},
    "masked_fudge16_3d": {"rare_starts": 0, "tau2_fudge": 16.0, "filter_differences": False},
    # ppca only: kappa re-estimated every iteration (for the expanded basis), the default until 2026-12-01
    "kappa_updated": {"update_kappa": True},
    # the defaults before issue 16: 60 A features, maps regularised toward zero with tau2_fudge 4, no mask
    "before": {
        "init_resolution_A": 60.0,
        "shrink_to_mean": False,
        "tau2_fudge": 4.0,
        "confine_differences": False,
        "filter_differences": False,
    },
}


def run_case(preset: str, seed: int, variant: str, data: str, snr: float | None = None, method: str = "em2d") -> dict:
    """One case in this process (the worker): simulate if needed, oracle, EM (``em2d``, or ``em3d`` on the stacks
    made into subtomograms); peak RSS from /proc."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent / "src"))
    from types import SimpleNamespace

    import numpy as np
    import torch

    from bench_classify import ensure_preset, open_dataset
    from tomohet.benchmark.metrics import discrete_report, rare_state_f1
    from tomohet.benchmark.oracle import oracle
    from tomohet.methods.em2d import EMOptions, classify_em2d
    from tomohet.methods.em3d import EM3DOptions, classify_em3d

    torch.set_num_threads(1)
    folder, _ = ensure_preset(Path(data), preset, 1000, snr or _preset_snr(preset), seed)
    ds, maps, states, meta = open_dataset(folder)
    o = oracle(ds, maps, meta["noise_sigma"], np.asarray(meta["abundances"]))
    k = PRESETS[preset]
    t0, c0 = time.perf_counter(), time.process_time()
    if method == "ppca":
        from tomohet.methods.landscape import cluster_latents
        from tomohet.methods.ppca import PPCAOptions, fit_ppca

        fitted = fit_ppca(ds, PPCAOptions(seed=0, **VARIANTS[variant]))
        res = SimpleNamespace(labels=cluster_latents(fitted.latents, k, "xd", 0, fitted.extra["latent_information"]),
                              log=fitted.log, options=fitted.options, extra=fitted.extra)  # fmt: skip
    elif method == "em3d":
        res = classify_em3d(ds, EM3DOptions(n_classes=k, seed=0, **VARIANTS[variant]))
    else:
        res = classify_em2d(ds, EMOptions(n_classes=k, seed=0, **VARIANTS[variant]))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"preset": preset, "seed": seed, "variant": variant, "method": method, "snr": meta["requested_snr"],
           "n_classes": k,
           "oracle_ari": discrete_report(states, o.labels)["ari"], "em_ari": discrete_report(states, res.labels)["ari"],
           "em_class_sizes": np.bincount(res.labels, minlength=k).tolist(), "em_iterations": len(res.log),
           "em_final_log_likelihood": res.log[-1]["log_likelihood"],
           "feature_band_A": res.options.get("init_resolution_A"),
           "e_step_band_A": res.options["resolution_limit_A"], "start": res.extra.get("start"),
           "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}  # fmt: skip
    if preset.startswith("rare"):
        out["oracle_rare_f1"] = rare_state_f1(states, o.labels, 1)["f1"]
        out["em_rare_f1"] = rare_state_f1(states, res.labels, 1)["f1"]
    status = Path("/proc/self/status").read_text()
    out["peak_rss_mib"] = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1]) // 1024
    return out


def _preset_snr(preset: str) -> float:
    sys.path.insert(0, str(HERE.parent / "src"))
    from tomohet.simulate.datasets import PRESETS as DATASETS

    return DATASETS[preset].acquisition.snr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--data", default="/tmp/tomohet_bench_limit")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--snrs", type=float, nargs="+", help="SNRs (default: each preset's own)")
    ap.add_argument(
        "--method",
        default="em2d",
        choices=["em2d", "em3d", "ppca"],
        help="em3d variants: default, filtered3d, masked3d, plain3d; ppca: default, kappa_updated",
    )
    ap.add_argument("--worker", nargs=4, metavar=("PRESET", "SEED", "VARIANT", "SNR"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="default: results/classify_limit.json (em3d: classify_limit_em3d.json)")
    args = ap.parse_args()
    if args.worker:
        w = args.worker
        print(json.dumps(run_case(w[0], int(w[1]), w[2], args.data, float(w[3]), args.method)))
        return
    if args.out is None:
        name = {"em2d": "classify_limit.json", "em3d": "classify_limit_em3d.json", "ppca": "landscape_limit_ppca.json"}
        args.out = str(RESULTS / name[args.method])
    snrs = {p: args.snrs or [_preset_snr(p)] for p in args.presets}
    cases = [(p, s, v, q) for p in args.presets for s in args.seeds for v in args.variants for q in snrs[p]]
    # simulate first, serially (two workers simulating the same set would race)
    for p, s, q in sorted({(p, s, q) for p, s, _, q in cases}):
        subprocess.run([sys.executable, "-c", (
            f"import sys; sys.path[:0] = [{str(HERE)!r}, {str(HERE.parent / 'src')!r}]; "
            f"from bench_classify import ensure_preset; from pathlib import "
            f"Path; ensure_preset(Path({args.data!r}), {p!r}, 1000, {q}, {s})")],
            check=True)  # fmt: skip
    out = Path(args.out)
    keep = json.loads(out.read_text())["cases"] if out.exists() else []  # other cases already measured stay
    results: list[dict] = [c for c in keep if (c["preset"], c["seed"], c["variant"], c["snr"]) not in set(cases)]

    def launch(case: tuple[str, int, str, float]) -> dict:
        p, s, v, q = case
        r = subprocess.run([sys.executable, __file__, "--worker", p, str(s), v, str(q), "--data", args.data,
                            "--method", args.method],
                           capture_output=True, text=True, check=True)  # fmt: skip
        return json.loads(r.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(args.parallel) as pool:
        for r in pool.map(launch, cases):
            results.append(r)
            extra = f" rare F1 oracle {r['oracle_rare_f1']:.3f} EM {r['em_rare_f1']:.3f}" if "em_rare_f1" in r else ""
            print(f"{r['preset']:>12} SNR {r['snr']} seed {r['seed']} {r['variant']:>10}: oracle ARI "
                  f"{r['oracle_ari']:.3f} {args.method} ARI "
                  f"{r['em_ari']:.3f}{extra} ({r['wall_s']:.0f} s, {r['peak_rss_mib']} MiB)", flush=True)  # fmt: skip
            out.write_text(json.dumps({"cases": results}, indent=1))


if __name__ == "__main__":
    main()

"""PPCA pass throughput (tilt images/s per EM pass: E-step + M-step sums) and peak memory, box 32 and 64.

Each case runs in its own process (``--case``) so that its peak RSS is its own. A pass is timed with random
maps of realistic power on the working grid the automatic band would choose (full box here: the worst case),
once with the prepared spectra cached in memory (what PPCA does when they fit, ``cache_gb``) and once streamed
from the memory-mapped stacks (what it does at 10^4 particles x box 64). Memory in the streamed pass does not
grow with the particle count beyond the per-particle latents (``L^2`` doubles each), which the two sizes show.

    .venv/bin/python benchmarks/bench_ppca_speed.py --root /tmp/bench_ppca            # all cases
    .venv/bin/python benchmarks/bench_ppca_speed.py --root /tmp/bench_ppca --case 64:500:stream
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_classify import ensure_preset, load, machine, open_dataset  # noqa: E402
from tomohet.methods.ppca import pass_batch  # noqa: E402
from tomohet.methods.ppca_pass import PassState, ppca_pass  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ppca_speed.json"
CASES = ["32:1000:cached", "32:1000:stream", "64:500:stream", "64:1000:stream", "64:500:cached"]
PRESET = {32: "ladder", 64: "large"}


def run_case(root: Path, case: str, components: int, threads: int) -> dict:
    box, n, mode = case.split(":")
    box, n = int(box), int(n)
    torch.set_num_threads(threads)
    folder, sim_s = ensure_preset(root, PRESET[box], n, 0.01)
    ds, _, _, _ = open_dataset(folder)
    rng = torch.Generator().manual_seed(0)
    maps = torch.randn(components + 1, box, box, box, generator=rng) * 0.01
    state = PassState(maps, torch.ones(box // 2 + 1), box, None, None, pass_batch(32, box), None)
    idx = np.arange(n)
    cache = {} if mode == "cached" else None
    if cache is not None:
        ppca_pass(ds, idx, state, cache)  # fills the cache (the first pass prepares the images)
    t0 = time.perf_counter()
    ppca_pass(ds, idx, state, cache)
    dt = time.perf_counter() - t0
    images = int(ds.visible[:n].sum())
    return {"case": case, "box": box, "particles": n, "batch": state.batch_size, "images": images, "mode": mode,
            "components": components,
            "threads": threads, "pass_seconds": round(dt, 2), "images_per_s": round(images / dt, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "simulation_seconds": round(sim_s, 1), "load": load()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/bench_ppca"))
    ap.add_argument("--case", default=None, help="box:particles:cached|stream (default: all, each in a process)")
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", type=int, default=None, help="run only the cases of this box (merged into the file)")
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(a.root, a.case, a.components, a.threads)), flush=True)
        return
    old = json.loads(RESULTS.read_text())["rows"] if RESULTS.is_file() else []
    rows = [r for r in old if a.only is not None and r["box"] != a.only]
    for case in [c for c in CASES if a.only is None or c.startswith(f"{a.only}:")]:
        cmd = [sys.executable, __file__, "--root", str(a.root), "--case", case, "--components", str(a.components),
               "--threads", str(a.threads)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

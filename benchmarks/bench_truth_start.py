"""EM (``classify_em2d`` defaults) started from the true labels against EM from its own search, on ``ladder``
(1000 particles, SNR 0.005): which partition does the likelihood prefer? (``benchmarks/CLASSIFY.md`` section 13.)

Run: ``.venv/bin/python benchmarks/bench_truth_start.py SEED {truth,default}`` (one JSON line; one torch thread).
The truth-started run keeps everything of the default run but the start: the variability mask still comes from
the PCA start's difference features (its labels are replaced by the true ones, no rare-state starts are tried).
Data are simulated into ``/tmp/tomohet_bench_limit`` as ``bench_limit.py`` does.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))


def main() -> None:
    import numpy as np
    import torch

    import tomohet.methods.em2d as em2d
    from bench_classify import ensure_preset, open_dataset
    from tomohet.benchmark.metrics import discrete_report

    torch.set_num_threads(1)
    seed, mode = int(sys.argv[1]), sys.argv[2]
    folder, _ = ensure_preset(Path("/tmp/tomohet_bench_limit"), "ladder", 1000, 0.005, seed)
    ds, _, states, _ = open_dataset(folder)
    pca_starts = em2d._pca_starts

    def truth_start(dataset, consensus, opt, em, focus_mask, progress, init_info):
        pca_starts(dataset, consensus, replace(opt, rare_starts=0), em, focus_mask, progress, init_info)  # the mask
        return np.asarray(states).copy(), {}

    if mode == "truth":
        em2d._pca_starts = truth_start
    t0 = time.perf_counter()
    res = em2d.classify_em2d(ds, em2d.EMOptions(n_classes=4, seed=0))
    print(json.dumps({"seed": seed, "mode": mode, "ari": discrete_report(states, res.labels)["ari"],
                      "log_likelihood": res.log[-1]["log_likelihood"], "iterations": len(res.log),
                      "sizes": np.bincount(res.labels, minlength=4).tolist(), "start": res.extra.get("start"),
                      "wall_s": round(time.perf_counter() - t0, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()

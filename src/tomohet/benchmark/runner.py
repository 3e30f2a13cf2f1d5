"""The benchmark runner: every (dataset, method) and (dataset, peer) cell of a suite, run as its own process,
timed the same way (:func:`tomohet.benchmark.measure.run_measured`), scored by one path
(:func:`tomohet.benchmark.scoring.score_output`), recorded as ``OUT/cells/DATASET__METHOD.json`` with the exact
command, versions and machine. A finished cell is never recomputed, so an interrupted run resumes and runs of
several suites merge into one leaderboard (:mod:`tomohet.benchmark.leaderboard`)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .datasets import PreparedDataset, prepare_dataset
from .measure import log_tail, run_measured
from .peers import get_peer
from .scoring import read_run_folder, score_output
from .suites import METHODS, DatasetSpec, MethodSpec, Suite

CELL_SCHEMA = 1


def machine() -> dict:
    """Where a cell ran: platform, CPU model and count, memory, Python and torch versions."""
    import torch

    from .. import __version__

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(),
            "memory_gb": round(mem, 1) if mem else None, "python": sys.version.split()[0],
            "torch": torch.__version__, "tomohet": __version__}  # fmt: skip


def cell_path(out: Path, dataset: str, method: str) -> Path:
    return Path(out) / "cells" / f"{dataset}__{method}.json"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)


def _base_record(prep: PreparedDataset, method: str, kind: str, suite: str, threads: int) -> dict:
    return {"schema": CELL_SCHEMA, "dataset": prep.summary(), "method": method, "kind": kind, "suite": suite,
            "threads": threads, "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "load_average_before": list(os.getloadavg())}  # fmt: skip


def _finish(record: dict, measured, prep: PreparedDataset, scores: dict | None, error: str | None) -> dict:
    record.update(measured.as_dict())
    record["load_average_after"] = list(os.getloadavg())
    record["images_per_s"] = round(prep.n_images / measured.wall_s, 1) if measured.wall_s > 0 else None
    if error:
        record.update({"status": "failed", "reason": error})
    else:
        record.update({"status": "ok", "scores": scores})
    return record


def _run_and_score(record: dict, cmd: list[str], log: Path, env: dict | None, cwd: Path | None,
                   timeout_s: float | None, read: Callable, prep: PreparedDataset) -> dict:  # fmt: skip
    """Run a cell's command measured, then score what ``read()`` returns; a time-out, a non-zero exit or an
    output that cannot be read is a failed cell (with the reason), not a crash of the benchmark."""
    measured = run_measured(cmd, log, env=env, cwd=cwd, timeout_s=timeout_s)
    error = scores = None
    if measured.timed_out:
        error = f"stopped after {timeout_s:.0f} s (--timeout)"
    elif measured.returncode != 0:
        error = f"exit {measured.returncode}: {log_tail(log, 5)}"
    else:
        try:
            scores = score_output(read(), prep)
        except Exception as exc:
            error = f"reading its output: {type(exc).__name__}: {exc}"
    return _finish(record, measured, prep, scores, error)


def _fresh(work: Path) -> None:
    """An empty run folder: what an interrupted attempt left is removed, so no run resumes from it (a resumed
    run would be timed as faster than it is)."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)


def run_method_cell(m: MethodSpec, prep: PreparedDataset, out: Path, suite: str, threads: int,
                    timeout_s: float | None) -> dict:  # fmt: skip
    """One tomohet method on one dataset: ``python -m tomohet ...`` on the blind input, scored from its run
    folder."""
    work = Path(out) / "runs" / prep.spec.name / m.name
    names_from = None
    if m.input == "3d":
        star = prep.subtomograms()
        from ..data.star import read_star

        sub = read_star(star)["particles"]
        names_from = dict(zip(sub["rlnImageName"].astype(str), sub["rlnTomoParticleName"].astype(str), strict=True))
    else:
        star = prep.input
    _fresh(work)
    cmd = m.command(star, work, prep.spec.classes, suite)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    record = _base_record(prep, m.name, "tomohet", suite, threads)
    record["command"] = shlex.join(cmd)
    log = work.parent / f"{m.name}.log"
    return _run_and_score(record, cmd, log, env, None, timeout_s, lambda: read_run_folder(work, names_from), prep)


def run_peer_cell(peer, prep: PreparedDataset, out: Path, suite: str, threads: int, timeout_s: float | None) -> dict:
    """One peer on one dataset: export, run, read back, score; skipped (with the reason and the install
    command) when the peer is not installed."""
    record = _base_record(prep, peer.name, "peer", suite, threads)
    record["title"] = peer.title
    reason = peer.unavailable()
    if reason:
        record.update({"status": "skipped", "reason": reason, "install": peer.install_command()})
        return record
    work = Path(out) / "runs" / prep.spec.name / peer.name
    _fresh(work)
    record["version"] = peer.version()
    try:
        run = peer.prepare(prep, work, threads)
    except Exception as exc:  # an export the peer cannot take is a result, not a crash of the benchmark
        record.update({"status": "failed", "reason": f"export: {type(exc).__name__}: {exc}"})
        return record
    record.update({"command": shlex.join(run.command), "settings": run.settings,
                   "prepare_s": round(run.prepare_s, 1)})  # fmt: skip
    log = work.parent / f"{peer.name}.log"
    return _run_and_score(record, run.command, log, run.env, run.cwd, timeout_s, lambda: peer.read(work, prep), prep)


def run_suite(
    suite: Suite,
    out: Path,
    datasets: list[DatasetSpec] | None = None,
    methods: list[str] | None = None,
    peers: list[str] | None = None,
    peer_paths: dict[str, str] | None = None,
    threads: int = 2,
    timeout_s: float | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run every cell of ``suite`` not yet in ``out/cells`` (``datasets``/``methods``/``peers`` override the
    suite's lists); returns the records of all its cells, old and new."""
    out = Path(out)
    datasets = list(datasets if datasets is not None else suite.datasets)
    methods = list(methods if methods is not None else suite.methods)
    peer_list = [get_peer(n, (peer_paths or {}).get(n), suite.peer_options.get(n))
                 for n in (peers if peers is not None else suite.peers)]  # fmt: skip
    plan = [(spec, [METHODS[n] for n in methods if spec.kind in METHODS[n].kinds and spec.runs(n)],
             [p for p in peer_list if spec.kind in p.kinds and spec.runs(p.name)]) for spec in datasets]  # fmt: skip
    total, done = sum(len(m) + len(p) for _, m, p in plan), 0
    records = []
    for spec, spec_methods, spec_peers in plan:
        prep = prepare_dataset(spec, out / "datasets" / spec.name, log)
        _write_json(out / "datasets" / spec.name / "dataset_summary.json", {**prep.summary(), "oracle": prep.oracle})
        cells = [(m.name, lambda m=m, d=prep: run_method_cell(m, d, out, suite.name, threads, timeout_s))
                 for m in spec_methods]  # fmt: skip
        cells += [(p.name, lambda p=p, d=prep: run_peer_cell(p, d, out, suite.name, threads, timeout_s))
                  for p in spec_peers]  # fmt: skip
        for name, run in cells:
            done += 1
            tag = f"[{done}/{total}] {spec.name} / {name}"
            path = cell_path(out, spec.name, name)
            if path.exists():
                record = json.loads(path.read_text())
                if record.get("status") in ("ok", "failed"):
                    records.append(record)
                    log(f"{tag}: done before ({record['status']})")
                    continue
            log(f"{tag}: running")
            record = run()
            _write_json(path, record)
            records.append(record)
            log(f"{tag}: {_one_line(record)}")
    return records


def _one_line(record: dict) -> str:
    if record["status"] != "ok":
        return f"{record['status']}: {record.get('reason', '')}"
    s = record["scores"]
    if "ari" in s:
        fig = f"ARI {s['ari']:.3f} (oracle {s.get('oracle_ari', float('nan')):.3f})"
    elif "spearman_abs" in s:
        fig = f"|rho| {s['spearman_abs']:.3f} (oracle {s.get('oracle_spearman_abs', float('nan')):.3f})"
    else:
        fig = "no score"
    return f"{fig}, {record['wall_s']:.0f} s, {record['peak_rss_mb']:.0f} MB"

"""Run cryoDRGN-ET (``cryodrgn train_vae --encode-mode tilt``) on a tomohet simulated tilt-series dataset.

cryoDRGN is a benchmark-only peer, never a tomohet dependency: it lives in its own virtualenv outside the repo
(``CRYODRGN_VENV``, overridable with the ``TOMOHET_CRYODRGN_VENV`` environment variable), made with::

    python3.11 -m venv /work/cryodrgn_venv
    echo "torch==2.13.0" > constraints.txt   # the local CPU wheel; an unpinned torch pulls CUDA wheels
    /work/cryodrgn_venv/bin/pip install -c constraints.txt cryodrgn torch==2.13.0   # cryodrgn 4.3.1

Input: tomohet writes its Warp v1 image-series star (:func:`tomohet.data.warp_v1.write_warp_v1`), then the
runner converts it for cryoDRGN-ET, which differs from what tomohet writes in three ways:

- row order: cryoDRGN-ET encodes the *first* ``--ntilts`` rows of each particle (``rlnGroupName``), so the rows
  of a particle must be in acquisition (dose) order, as Warp/M export them; tomohet writes them in stack order
  (by tilt angle). The runner sorts each particle's rows by cumulative dose (``-rlnCtfBfactor / 4``).
- image paths: cryoDRGN resolves ``N@stack`` against the working folder or ``--datadir``; the runner writes
  absolute paths.
- particles with fewer than ``--ntilts`` images make cryoDRGN-ET stop, so the runner leaves them out of the
  star (their latents are NaN rows).

The pixel size and box are passed explicitly (``-D``, ``--Apix``) to ``parse_pose_star`` / ``parse_ctf_star``:
cryoDRGN reads only ``rlnImagePixelSize``, while Warp v1 files carry ``rlnDetectorPixelSize``. Data sign: cryoDRGN's
CTF is the negative of RELION's (tomohet's), and its default ``invert_data`` flips the images back, so the
default (no ``--uninvert-data``) is the consistent choice. ``--dose-per-tilt`` / ``--angle-per-tilt`` come from
the dataset's doses and tilt angles.

Run: ``.venv/bin/python benchmarks/cryodrgn_runner.py DATASET_FOLDER WORK --epochs 2 --zdim 2 [--ntilts 10]``
prints the timing (and the k-means ARI of the latents when ``ground_truth.csv`` has states) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tomohet.data.io import read_any
from tomohet.data.model import TiltSeriesParticles
from tomohet.data.star import read_star, write_star
from tomohet.data.warp_v1 import SIGNED_TILT_COLUMNS, write_warp_v1

CRYODRGN_VENV = Path(os.environ.get("TOMOHET_CRYODRGN_VENV", "/work/cryodrgn_venv"))
INSTALL_HINT = (
    "python3.11 -m venv {venv} && echo 'torch==2.13.0' > constraints.txt && "
    "{venv}/bin/pip install -c constraints.txt cryodrgn torch==2.13.0"
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def cryodrgn_executable(venv: Path | None = None) -> Path:
    """The ``cryodrgn`` command of the peer virtualenv; a clear error saying how to make it if it is missing."""
    venv = Path(venv or CRYODRGN_VENV)
    exe = venv / "bin" / "cryodrgn"
    if not exe.exists():
        raise FileNotFoundError(
            f"cryoDRGN not found at {exe}. Create its virtualenv (outside the repo) with:\n  "
            + INSTALL_HINT.format(venv=venv)
            + "\nor point TOMOHET_CRYODRGN_VENV at an existing one."
        )
    return exe


def cryodrgn_version(venv: Path | None = None) -> str:
    """The installed cryoDRGN version (``cryodrgn --version``), e.g. ``4.3.1``."""
    out = subprocess.run([str(cryodrgn_executable(venv)), "--version"], capture_output=True, text=True, check=True)
    text = (out.stdout + out.stderr).strip()
    match = re.search(r"\d+(\.\d+)+\S*", text)
    return match.group(0) if match else text


def _optimisation_set(folder: Path) -> Path:
    found = sorted(folder.glob("*_optimisation_set.star"))
    if len(found) != 1:
        raise FileNotFoundError(f"{folder}: expected one *_optimisation_set.star, found {len(found)}")
    return found[0]


def _step(values: list[np.ndarray]) -> float:
    """Median positive step between sorted values (per particle), e.g. the dose per tilt or the tilt increment."""
    steps = np.concatenate([np.diff(np.sort(v)) for v in values if len(v) > 1] or [np.zeros(0)])
    steps = steps[steps > 1e-6]
    return float(np.median(steps)) if len(steps) else 0.0


def _run_logged(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}); last lines of {log}:\n{tail}")


def _image_loop(blocks: dict[str, Any], path: Path) -> tuple[str, pd.DataFrame]:
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if len(loops) != 1:
        raise ValueError(f"{path}: expected one image loop (no optics block), found {list(loops)}")
    return next(iter(loops.items()))


def prepare_cryodrgn_input(dataset_folder: Path, work: Path, min_tilts: int = 1, venv: Path | None = None) -> dict:
    """Write cryoDRGN-ET's inputs for a tomohet dataset folder (one ``*_optimisation_set.star``) into ``work``.

    Writes tomohet's Warp v1 star (``tomohet_warp_v1.star``), the cryoDRGN star (``particles.star``: rows in dose
    order per particle, absolute image paths, only particles with at least ``min_tilts`` images) and
    ``pose.pkl`` / ``ctf.pkl`` made by the venv's ``cryodrgn parse_pose_star`` / ``parse_ctf_star``. Returns the
    paths, ``names`` (tomohet's particle order), ``kept`` (the star's particle order), the tilts per kept
    particle, box, pixel size, dose per tilt and tilt increment."""
    dataset_folder, work = Path(dataset_folder), Path(work)
    exe = cryodrgn_executable(venv)
    work.mkdir(parents=True, exist_ok=True)
    ds = read_any(_optimisation_set(dataset_folder))
    if not isinstance(ds, TiltSeriesParticles):
        raise TypeError(f"{dataset_folder}: cryoDRGN-ET needs 2D tilt-series images, got {type(ds).__name__}")
    if ds.ctf_premultiplied:
        raise ValueError(f"{dataset_folder}: CTF-premultiplied images are not supported by cryoDRGN-ET")

    raw = write_warp_v1(ds, work / "tomohet_warp_v1.star")
    block, df = _image_loop(read_star(raw), raw)
    codes, groups = pd.factorize(df["rlnGroupName"].astype(str), sort=False)
    dose = -pd.to_numeric(df["rlnCtfBfactor"]).to_numpy() / 4
    tilt_column = next((c for c in SIGNED_TILT_COLUMNS if c in df.columns), None)
    tilt = np.abs(pd.to_numeric(df[tilt_column]).to_numpy()) if tilt_column else np.zeros(len(df))
    order = np.lexsort((np.arange(len(df)), tilt, dose, codes))  # per particle (file order): dose, |tilt|, row
    df = df.iloc[order].reset_index(drop=True)
    counts = df.groupby("rlnGroupName", sort=False).size()
    keep_names = [str(g) for g in groups if counts[g] >= min_tilts]
    df = df[df["rlnGroupName"].astype(str).isin(set(keep_names))].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{dataset_folder}: no particle has {min_tilts} or more tilt images")
    parts = df["rlnImageName"].astype(str).str.partition("@")
    stacks = {s: str((raw.parent / s).resolve()) for s in parts[2].unique()}
    df["rlnImageName"] = parts[0] + "@" + parts[2].map(stacks)
    star = work / "particles.star"
    write_star({block: df}, star)

    box, apix = int(ds.box), float(ds.pixel_size)
    pose, ctf = work / "pose.pkl", work / "ctf.pkl"
    size = ["-D", str(box), "--Apix", f"{apix:g}"]
    _run_logged([str(exe), "parse_pose_star", str(star), "-o", str(pose), *size], work / "parse_pose_star.log")
    _run_logged([str(exe), "parse_ctf_star", str(star), "-o", str(ctf), *size], work / "parse_ctf_star.log")

    vis = ds.visible.numpy()
    doses = [ds.dose[i][vis[i]].double().numpy() for i in range(ds.n_particles)]
    tilts = [ds.tilt_angle[i][vis[i]].double().numpy() for i in range(ds.n_particles)]
    return {
        "raw_star": raw,
        "star": star,
        "pose": pose,
        "ctf": ctf,
        "names": list(ds.names),
        "kept": keep_names,
        "tilts_per_particle": [int(counts[g]) for g in keep_names],
        "box": box,
        "pixel_size": apix,
        "dose_per_tilt": _step(doses),
        "angle_per_tilt": _step(tilts),
    }


def _timed(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` (output to ``log``); wall seconds and peak RSS (MB) from ``/usr/bin/time -v``, else psutil."""
    time_bin = Path("/usr/bin/time")
    if time_bin.exists():
        report = log.with_suffix(".time")
        t0 = time.perf_counter()
        _run_logged([str(time_bin), "-v", "-o", str(report), *cmd], log, env)
        wall = time.perf_counter() - t0
        match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.read_text())
        return wall, (int(match.group(1)) / 1024 if match else float("nan"))
    import psutil

    peak = 0
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            rss = 0
            try:
                for p in [proc, *proc.children(recursive=True)]:
                    rss += p.memory_info().rss
            except psutil.Error:
                pass
            peak = max(peak, rss)
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return wall, peak / 2**20


def _epoch_seconds(log_text: str) -> list[float]:
    """Per-epoch training times from cryoDRGN's ``# =====> Epoch: k ... Finished in H:MM:SS.ffffff`` lines."""
    out = []
    for h, m, s in re.findall(r"=====> Epoch: \d+ .*Finished in (\d+):(\d+):([\d.]+)", log_text):
        out.append(int(h) * 3600 + int(m) * 60 + float(s))
    return out


def run_cryodrgn_et(
    dataset_folder: Path,
    work: Path,
    epochs: int,
    zdim: int,
    ntilts: int = 10,
    threads: int = 1,
    seed: int = 0,
    extra_args: list[str] | None = None,
    venv: Path | None = None,
) -> dict:
    """Train cryoDRGN-ET (``train_vae --encode-mode tilt``) on a tomohet dataset folder; timing and latents.

    Returns ``wall_s`` and ``peak_rss_mb`` of the ``train_vae`` process (data loading and the final latent pass
    included, ``--no-analysis``), ``epoch_s`` (cryoDRGN's own per-epoch times), ``images_per_epoch`` (particles
    used x ``ntilts``), ``images_per_s`` (images seen per second of wall time), ``latents`` (``z_mu``,
    ``[N, zdim]`` in the dataset's particle order, NaN rows for particles left out for having fewer than
    ``ntilts`` images), the command and cryoDRGN's version. Defaults otherwise (batch 16, beta 1/zdim)."""
    work = Path(work)
    exe = cryodrgn_executable(venv)
    prep = prepare_cryodrgn_input(dataset_folder, work / "input", min_tilts=ntilts, venv=venv)
    out = work / "train_vae"
    if out.exists():
        shutil.rmtree(out)  # a stale z.pkl must not be read back
    out.mkdir(parents=True)
    cmd = [
        str(exe), "train_vae", str(prep["star"]), "--encode-mode", "tilt",
        "--poses", str(prep["pose"]), "--ctf", str(prep["ctf"]),
        "--zdim", str(zdim), "-n", str(epochs), "--ntilts", str(ntilts),
        "--dose-per-tilt", f"{prep['dose_per_tilt']:g}", "--angle-per-tilt", f"{prep['angle_per_tilt']:g}",
        "--seed", str(seed), "--max-threads", str(threads), "--num-workers", "0",
        "--checkpoint", "0", "--no-analysis", "-o", str(out), *(extra_args or []),
    ]  # fmt: skip
    env = dict(os.environ, **{v: str(threads) for v in THREAD_VARIABLES})
    wall, peak = _timed(cmd, env, work / "train_vae.log")

    with open(out / "z.pkl", "rb") as fh:
        z_mu = np.asarray(pickle.load(fh), dtype=np.float64)
    if z_mu.shape != (len(prep["kept"]), zdim):
        raise RuntimeError(f"{out / 'z.pkl'}: shape {z_mu.shape}, expected ({len(prep['kept'])}, {zdim})")
    row = {name: i for i, name in enumerate(prep["names"])}
    latents = np.full((len(prep["names"]), zdim), np.nan)
    latents[[row[n] for n in prep["kept"]]] = z_mu
    run_log = out / "run.log"
    images_per_epoch = len(prep["kept"]) * ntilts
    return {
        "wall_s": wall,
        "peak_rss_mb": peak,
        "epoch_s": _epoch_seconds(run_log.read_text()) if run_log.exists() else [],
        "epochs": epochs,
        "zdim": zdim,
        "ntilts": ntilts,
        "threads": threads,
        "names": prep["names"],
        "n_particles": len(prep["names"]),
        "n_particles_used": len(prep["kept"]),
        "images_per_epoch": images_per_epoch,
        "images_per_s": images_per_epoch * epochs / wall,
        "latents": latents,
        "command": cmd,
        "version": cryodrgn_version(venv),
        "dose_per_tilt": prep["dose_per_tilt"],
        "angle_per_tilt": prep["angle_per_tilt"],
    }


def kmeans_ari(latents: np.ndarray, states: np.ndarray, seed: int = 0) -> float:
    """Adjusted Rand index of k-means (k = number of true states) on the latents of the particles cryoDRGN kept."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    ok = np.isfinite(latents).all(axis=1)
    k = len(np.unique(states[ok]))
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(latents[ok])
    return float(adjusted_rand_score(states[ok], labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path, help="tomohet simulated dataset folder")
    parser.add_argument("work", type=Path, help="working folder (inputs, cryoDRGN output, latents.npy)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--zdim", type=int, default=2)
    parser.add_argument("--ntilts", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    res = run_cryodrgn_et(args.dataset, args.work, args.epochs, args.zdim, args.ntilts, args.threads, args.seed)
    np.save(args.work / "latents.npy", res["latents"])
    summary = {k: v for k, v in res.items() if k not in ("latents", "names")}
    truth = args.dataset / "ground_truth.csv"
    if truth.exists():
        gt = pd.read_csv(truth).set_index("rlnTomoParticleName")
        names = [str(n) for n in res["names"]]
        if "state" in gt.columns and set(names) <= set(gt.index.astype(str)):
            states = gt.loc[names, "state"].to_numpy()
            summary["kmeans_ari"] = kmeans_ari(res["latents"], states, args.seed)
    json.dump(summary, sys.stdout, indent=1, default=str)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

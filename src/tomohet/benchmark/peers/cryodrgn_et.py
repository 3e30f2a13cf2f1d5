"""cryoDRGN-ET (``cryodrgn train_vae --encode-mode tilt``, PyPI ``cryodrgn``) in its own virtualenv.

Install (outside the repo; ``TOMOHET_CRYODRGN_VENV`` or ``--peer-path cryodrgn_et=VENV`` points at it)::

    python3.11 -m venv VENV && echo 'torch==2.13.0' > c.txt && VENV/bin/pip install -c c.txt cryodrgn torch==2.13.0

Export: tomohet's Warp v1 image-series star (:func:`tomohet.data.warp_v1.write_warp_v1`), converted where
cryoDRGN-ET reads differently: each particle's rows sorted by dose (it encodes the *first* ``--ntilts`` rows, as
Warp/M export them), absolute image paths, particles with fewer than ``--ntilts`` images left out (it stops on
them; they are scored as left out); ``pose.pkl`` / ``ctf.pkl`` from its own ``parse_pose_star`` /
``parse_ctf_star`` with ``-D`` and ``--Apix`` given (it reads only ``rlnImagePixelSize``). Data sign: cryoDRGN's
CTF is the negative of RELION's and its default ``invert_data`` flips the images back, so the default is the
consistent choice. ``--dose-per-tilt`` / ``--angle-per-tilt`` from the dataset. Run: ``train_vae`` with its
defaults otherwise (batch 16, beta 1/zdim), ``--no-analysis``. Read: ``z.pkl`` (the latent means).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...data.io import read_any
from ...data.star import read_star, write_star
from ...data.warp_v1 import SIGNED_TILT_COLUMNS, write_warp_v1
from ...errors import InputError
from ..suites import BOTH
from .base import PeerRun, VirtualenvPeer, thread_env, version_from


def _step(values: list[np.ndarray]) -> float:
    """Median positive step between sorted values (per particle), e.g. the dose per tilt or the tilt increment."""
    steps = np.concatenate([np.diff(np.sort(v)) for v in values if len(v) > 1] or [np.zeros(0)])
    steps = steps[steps > 1e-6]
    return float(np.median(steps)) if len(steps) else 0.0


def _image_loop(blocks: dict[str, Any], path: Path) -> tuple[str, pd.DataFrame]:
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if len(loops) != 1:
        raise InputError(path, f"expected one image loop (no optics block), found {list(loops)}")
    return next(iter(loops.items()))


def _run_logged(cmd: list[str], log: Path) -> None:
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}); last lines of {log}:\n{tail}")


def export_warp_star(input_star: Path, work: Path, min_tilts: int = 1) -> dict:
    """tomohet's Warp v1 image-series star of a 2D-stack dataset, as the cryoDRGN family reads it, in
    ``work/particles.star``: each particle's rows in dose order, absolute image paths, only particles with at
    least ``min_tilts`` images. Returns the star, ``kept`` (its particle names in order), box, pixel size, dose
    per tilt and tilt increment."""
    work.mkdir(parents=True, exist_ok=True)
    ds = read_any(input_star)
    if ds.kind != "2d":
        raise InputError(input_star, "the cryoDRGN family needs 2D tilt-series images")
    if ds.ctf_premultiplied:
        raise InputError(input_star, "CTF-premultiplied images are not supported by the cryoDRGN family")
    raw = write_warp_v1(ds, work / "tomohet_warp_v1.star")
    block, df = _image_loop(read_star(raw), raw)
    codes, groups = pd.factorize(df["rlnGroupName"].astype(str), sort=False)
    dose = -pd.to_numeric(df["rlnCtfBfactor"]).to_numpy() / 4
    tilt_column = next((c for c in SIGNED_TILT_COLUMNS if c in df.columns), None)
    tilt = np.abs(pd.to_numeric(df[tilt_column]).to_numpy()) if tilt_column else np.zeros(len(df))
    df = df.iloc[np.lexsort((np.arange(len(df)), tilt, dose, codes))].reset_index(drop=True)
    counts = df.groupby("rlnGroupName", sort=False).size()
    kept = [str(g) for g in groups if counts[g] >= min_tilts]
    df = df[df["rlnGroupName"].astype(str).isin(set(kept))].reset_index(drop=True)
    if df.empty:
        raise InputError(input_star, f"no particle has {min_tilts} or more tilt images (--ntilts)")
    parts = df["rlnImageName"].astype(str).str.partition("@")
    stacks = {s: str((raw.parent / s).resolve()) for s in parts[2].unique()}
    df["rlnImageName"] = parts[0] + "@" + parts[2].map(stacks)
    for col in ("rlnCoordinateX", "rlnCoordinateY"):  # tomoDRGN recognises Warp's star by these (unused in training)
        if col not in df:
            df[col] = 0.0
    star = work / "particles.star"
    write_star({block: df}, star)
    vis = ds.visible.numpy()
    doses = [ds.dose[i][vis[i]].double().numpy() for i in range(ds.n_particles)]
    tilts = [ds.tilt_angle[i][vis[i]].double().numpy() for i in range(ds.n_particles)]
    return {"star": star, "kept": kept, "box": int(ds.box), "pixel_size": float(ds.pixel_size),
            "dose_per_tilt": _step(doses), "angle_per_tilt": _step(tilts)}  # fmt: skip


def export_cryodrgn_input(input_star: Path, work: Path, exe: Path, min_tilts: int = 1) -> dict:
    """:func:`export_warp_star` plus ``pose.pkl`` / ``ctf.pkl`` from cryoDRGN's ``parse_pose_star`` /
    ``parse_ctf_star`` (``exe``: its ``cryodrgn`` command)."""
    inp = export_warp_star(input_star, work, min_tilts)
    pose, ctf = work / "pose.pkl", work / "ctf.pkl"
    size = ["-D", str(inp["box"]), "--Apix", f"{inp['pixel_size']:g}"]
    _run_logged([str(exe), "parse_pose_star", str(inp["star"]), "-o", str(pose), *size], work / "parse_pose_star.log")
    _run_logged([str(exe), "parse_ctf_star", str(inp["star"]), "-o", str(ctf), *size], work / "parse_ctf_star.log")
    return {**inp, "pose": pose, "ctf": ctf}


class CryoDrgnEt(VirtualenvPeer):
    name = "cryodrgn_et"
    title = "cryoDRGN-ET train_vae --encode-mode tilt"
    kinds = BOTH
    env_var = "TOMOHET_CRYODRGN_VENV"
    default = "/work/cryodrgn_venv"
    command = "cryodrgn"
    latents_file = "z.pkl"

    def install_command(self) -> str:
        v = self.path
        return (f"python3.11 -m venv {v} && echo 'torch==2.13.0' > {v}.constraints.txt && "
                f"{v}/bin/pip install -q -c {v}.constraints.txt cryodrgn torch==2.13.0")  # fmt: skip

    def version(self) -> str:
        return version_from([str(self.executable()), "--version"])

    def prepare(self, prep, work: Path, threads: int) -> PeerRun:
        t0 = time.perf_counter()
        ntilts, epochs = int(self.options.get("ntilts", 10)), int(self.options.get("epochs", 20))
        zdim = int(self.options.get("zdim", 8))
        exe = self.executable()
        inp = export_cryodrgn_input(prep.input, work / "input", exe, min_tilts=ntilts)
        (work / "kept.txt").write_text("\n".join(inp["kept"]) + "\n")
        out = work / "train_vae"
        cmd = [
            str(exe), "train_vae", str(inp["star"]), "--encode-mode", "tilt",
            "--poses", str(inp["pose"]), "--ctf", str(inp["ctf"]), "--zdim", str(zdim), "-n", str(epochs),
            "--ntilts", str(ntilts), "--dose-per-tilt", f"{inp['dose_per_tilt']:g}",
            "--angle-per-tilt", f"{inp['angle_per_tilt']:g}", "--seed", "0", "--max-threads", str(threads),
            "--num-workers", "0", "--checkpoint", "0", "--no-analysis", "-o", str(out),
        ]  # fmt: skip
        return PeerRun(cmd, env=thread_env(threads), prepare_s=time.perf_counter() - t0,
                       settings={"epochs": epochs, "zdim": zdim, "ntilts": ntilts,
                                 "particles_used": len(inp["kept"])})  # fmt: skip

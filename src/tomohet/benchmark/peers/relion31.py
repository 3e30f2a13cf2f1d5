"""RELION 3.1 ``relion_refine`` 3D classification of RELION 3.1 subtomograms (Debian package ``relion``).

Export: the dataset's 2D stacks made into RELION 3.1 subtomograms (data + 3D CTF, tomogram frame,
:func:`tomohet.data.subtomo.write_relion31_subtomograms`) and tomohet's consensus map as ``--ref``. Run: K classes
with the poses given (``--skip_align``), ``--tau2_fudge``, ``--iter``, ``--j`` threads, ``--ctf``, mask diameter
0.9 x box. Read: ``rlnClassNumber`` of the last ``run_itNNN_data.star`` (particles by ``rlnTomoParticleName``,
which RELION carries through) and the class maps ``run_itNNN_classKKK.mrc`` of that iteration.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ...data.mrc import read_volume
from ...data.star import read_star
from ...errors import InputError
from ..scoring import CellOutput
from .base import Peer, PeerRun, version_from


def relion_command(
    star: Path, out: Path, ref: Path, k: int, diameter_A: float, iters: int, threads: int,
    align: list | None = None, tau2_fudge: float = 4.0,
) -> list[str]:  # fmt: skip
    """The ``relion_refine`` 3D classification command: given poses (``--skip_align``) unless ``align`` gives the
    sampling options (e.g. local searches)."""
    return [
        "relion_refine", "--i", str(star), "--o", str(out / "run"), "--ref", str(ref), "--ini_high", "60",
        "--K", str(k), *(align or ["--skip_align"]), "--tau2_fudge", f"{tau2_fudge:g}", "--iter", str(iters),
        "--j", str(threads), "--ctf", "--particle_diameter", f"{diameter_A:.0f}", "--zero_mask", "--flatten_solvent",
        "--pad", "2", "--dont_combine_weights_via_disc", "--pool", "10", "--random_seed", "1", "--sym", "C1",
        "--dont_check_norm",
    ]  # fmt: skip


def last_iteration(out: Path) -> tuple[Path, int]:
    """The last ``run_itNNN_data.star`` RELION wrote in ``out`` and its iteration number."""
    found = sorted(Path(out).glob("run_it[0-9][0-9][0-9]_data.star"))
    if not found:
        raise InputError(out, "no run_itNNN_data.star: relion_refine wrote no iteration")
    return found[-1], int(found[-1].stem[6:9])


class Relion31(Peer):
    name = "relion31"
    title = "RELION 3.1 relion_refine"
    env_var = "TOMOHET_RELION_REFINE"
    default = "relion_refine"

    def install_command(self) -> str:
        return "apt-get install -y relion  # Debian's RELION 3.1.3 (root)"

    def version(self) -> str:
        return version_from([str(self.executable() or self.path), "--version"])

    def prepare(self, prep, work: Path, threads: int) -> PeerRun:
        t0 = time.perf_counter()
        star = prep.subtomograms()
        work.mkdir(parents=True, exist_ok=True)
        iters = int(self.options.get("iterations", 25))
        tau = float(self.options.get("tau2_fudge", 4.0))
        cmd = relion_command(
            star.resolve(),
            work.resolve(),
            (star.parent / "consensus.mrc").resolve(),
            prep.spec.classes,
            0.9 * prep.box * prep.pixel_size,
            iters,
            threads,
            tau2_fudge=tau,
        )
        cmd[0] = str(self.executable() or cmd[0])  # fmt: skip
        return PeerRun(cmd, cwd=star.parent, prepare_s=time.perf_counter() - t0,
                       settings={"K": prep.spec.classes, "iterations": iters, "tau2_fudge": tau, "skip_align": True,
                                 "input": "RELION 3.1 subtomograms written by tomohet"})  # fmt: skip

    def read(self, work: Path, prep) -> CellOutput:
        data, it = last_iteration(work)
        blocks = read_star(data)
        parts = blocks.get("particles")
        if parts is None or "rlnClassNumber" not in parts:
            raise InputError(data, "no particles block with rlnClassNumber", "rlnClassNumber")
        if "rlnTomoParticleName" in parts:
            names = parts["rlnTomoParticleName"].astype(str).tolist()
        else:  # map the subtomogram files back to the particles through the star RELION read
            sub = read_star(Path(prep.subtomograms()))["particles"]
            by_file = dict(zip(sub["rlnImageName"].astype(str).map(lambda s: Path(s).name),
                               sub["rlnTomoParticleName"].astype(str), strict=True))  # fmt: skip
            names = [by_file[Path(s).name] for s in parts["rlnImageName"].astype(str)]
        labels = parts["rlnClassNumber"].astype(int).to_numpy() - 1
        k = int(labels.max()) + 1 if len(labels) else 0
        maps = [Path(work) / f"run_it{it:03d}_class{c + 1:03d}.mrc" for c in range(k)]
        class_maps = torch.stack([read_volume(m)[0] for m in maps]) if all(m.exists() for m in maps) else None
        return CellOutput(names, np.asarray(labels), class_maps=class_maps)

"""What every peer adapter provides (:class:`Peer`): where the peer is, whether it is installed (and how to
install it), the export of a dataset into its input format plus the command to run (:meth:`Peer.prepare`),
and the reader of its output (:meth:`Peer.read`)."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import InputError
from ..scoring import CellOutput
from ..suites import DISCRETE

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass
class PeerRun:
    """The measured part of a peer's run: ``command`` (run in ``cwd`` with ``env``); ``prepare_s``: seconds
    spent exporting the data for it (not part of its timing); ``settings``: what the cell records."""

    command: list[str]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    prepare_s: float = 0.0
    settings: dict | None = None


def thread_env(threads: int) -> dict[str, str]:
    """The environment with the BLAS/OpenMP thread counts set to ``threads``."""
    return dict(os.environ, **{v: str(threads) for v in THREAD_VARIABLES})


class Peer:
    """Base of the adapters. Subclasses set ``name``, ``title``, ``kinds`` (datasets it is run on),
    ``env_var`` (environment variable naming its executable or virtualenv) and ``default``; and implement
    :meth:`install_command`, :meth:`prepare`, :meth:`read`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    kinds: ClassVar[frozenset[str]] = frozenset({DISCRETE})
    env_var: ClassVar[str] = ""
    default: ClassVar[str] = ""  # default executable (a name on PATH or a path)

    def __init__(self, path: str | Path | None = None, **options) -> None:
        self.path = str(path or os.environ.get(self.env_var) or self.default)
        self.options = options

    def executable(self) -> Path | None:
        """The peer's main executable, or None when it is not installed."""
        found = shutil.which(self.path) if os.sep not in self.path else self.path
        return Path(found) if found and Path(found).exists() else None

    def unavailable(self) -> str | None:
        """Why the peer cannot run here (None: it can)."""
        if self.executable() is None:
            return f"{self.title} not found ({self.path}; set {self.env_var} or --peer-path {self.name}=PATH)"
        return None

    def install_command(self) -> str:
        raise NotImplementedError

    def install(self) -> str:
        """Run :meth:`install_command` (its output is returned); raises with the output's tail if it fails."""
        cmd = self.install_command()
        proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-10:])
            raise RuntimeError(f"installing {self.title} failed ({cmd}):\n{tail}")
        return proc.stdout

    def version(self) -> str:
        return "unknown"

    def prepare(self, prep, work: Path, threads: int) -> PeerRun:
        raise NotImplementedError

    def read(self, work: Path, prep) -> CellOutput:
        raise NotImplementedError


class VirtualenvPeer(Peer):
    """A peer living in a virtualenv of its own (``path``), run as ``path/bin/<command>``, that writes its latent
    means as a pickle ``work/train_vae/<latents_file>`` (the cryoDRGN family); the adapter writes the particle
    names in the peer's star order to ``work/kept.txt`` when it exports the data."""

    command: ClassVar[str] = ""
    latents_file: ClassVar[str] = ""

    def executable(self) -> Path | None:
        exe = Path(self.path) / "bin" / self.command
        return exe if exe.exists() else None

    def read(self, work: Path, prep=None) -> CellOutput:
        z_path = Path(work) / "train_vae" / self.latents_file
        if not z_path.exists():
            raise InputError(z_path, f"{self.title} wrote no latents")
        with open(z_path, "rb") as fh:
            z = np.asarray(pickle.load(fh), dtype=np.float64)
        kept = (Path(work) / "kept.txt").read_text().split()
        if z.ndim != 2 or z.shape[0] != len(kept):
            raise InputError(z_path, f"latents of shape {z.shape}, expected ({len(kept)}, zdim)")
        return CellOutput(kept, latents=z)


def version_from(cmd: list[str]) -> str:
    """The first dotted version number a command prints, or ``unknown``."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"\d+(\.\d+)+\S*", proc.stdout + proc.stderr)
    return match.group(0) if match else "unknown"

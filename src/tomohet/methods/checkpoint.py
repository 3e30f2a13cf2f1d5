"""Checkpoints every iterative method shares: written atomically, resumed only by the run that wrote them.

A checkpoint is a ``torch.save`` file holding the method's state plus a fingerprint of the run (method,
options, tomohet version, and the input: particle count, box, pixel size and a hash of the particle names).
It is written to a temporary file beside the target, flushed to disk and renamed over it, so an interrupted
write (a killed process, a full disk) never leaves a half-written checkpoint. A checkpoint whose fingerprint
differs, or that cannot be read, stops the run with a one-line error naming the file; the user removes it or
reruns with ``--overwrite``. A finished run records ``finished = True``: rerunning it changes nothing.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import InputError
from .distributed import writes_files

# options that may differ between a run and its resumption: more iterations continue the run
RESUMABLE_CHANGES = frozenset({"n_iter"})


def run_fingerprint(method: str, options: dict[str, Any], dataset) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: method, options (except ``n_iter``), version, input."""
    names = hashlib.sha256("\n".join(map(str, dataset.names)).encode()).hexdigest()[:16]
    opts = {k: v for k, v in sorted(options.items()) if k not in RESUMABLE_CHANGES}
    return {
        "method": method, "options": repr(opts), "version": __version__,
        "input": {"n_particles": int(dataset.n_particles), "box": int(dataset.box),
                  "pixel_size": round(float(dataset.pixel_size), 6), "names": names},
    }  # fmt: skip


def save_checkpoint(path: str | Path, state: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Write ``state`` with its run ``fingerprint`` atomically (temporary file, fsync, rename). In a distributed
    job only rank 0 writes (every process holds the same state; they all read it on resume)."""
    if not writes_files():
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save({"fingerprint": fingerprint, "state": state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise InputError(path, f"cannot write the checkpoint ({err.strerror or err})", "checkpoint") from err


def load_checkpoint(path: str | Path | None, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The state saved by :func:`save_checkpoint` for this run, or None when there is no checkpoint.

    Raises :class:`InputError` naming the file when it cannot be read (truncated, not a checkpoint) or was
    written by another run (other method, options, version or input)."""
    if path is None or not Path(path).exists():
        return None
    try:
        saved = torch.load(path, weights_only=False)
    except Exception as err:  # a truncated or foreign file: torch raises several kinds
        raise InputError(path, f"unreadable checkpoint ({type(err).__name__}); remove it or rerun with "
                         "--overwrite", "checkpoint") from err  # fmt: skip
    if not isinstance(saved, dict) or "fingerprint" not in saved:
        raise InputError(path, "not a checkpoint of this tomohet version; remove it or rerun with --overwrite",
                         "checkpoint")  # fmt: skip
    theirs = saved["fingerprint"]
    for key in ("method", "version", "input", "options"):
        if theirs.get(key) != fingerprint[key]:
            raise InputError(path, f"checkpoint of another run ({key} differs: {_short(theirs.get(key))} vs "
                             f"{_short(fingerprint[key])}); remove it, choose another --out or rerun with "
                             "--overwrite", "checkpoint")  # fmt: skip
    return saved["state"]


def _short(value: Any, n: int = 80) -> str:
    s = str(value)
    return s if len(s) <= n else s[: n - 3] + "..."

"""Run bookkeeping shared by all subcommands: output folder, log file, progress bars, ``result.json``."""

from __future__ import annotations

import json
import logging
import platform
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .. import __version__

console = Console(stderr=True)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (MB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"tomohet": __version__, "python": platform.python_version()}
    for pkg in ("torch", "numpy", "mrcfile", "starfile", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class Run:
    """One command's run in ``out``: a log file ``tomohet.log`` and a ``result.json`` written at the end."""

    def __init__(self, out: Path, command: str, options: dict[str, Any]):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.command = command
        self.options = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.log = logging.getLogger(f"tomohet.{command}")
        self.log.setLevel(logging.INFO)
        self.log.handlers.clear()
        fh = logging.FileHandler(self.out / "tomohet.log", mode="a")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(fh)
        self.log.addHandler(RichHandler(console=console, show_path=False, show_time=False))
        self.log.info("tomohet %s %s -> %s", __version__, command, self.out)

    @contextmanager
    def timed(self, name: str):
        t = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t, 3)

    def progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False,
        )  # fmt: skip

    def finish(self, method: str, seed: int | None = None, **fields: Any) -> Path:
        self.timings["total"] = round(time.perf_counter() - self.t0, 3)
        result = {
            "command": self.command, "method": method, "options": self.options, "seed": seed,
            "versions": versions(), "timings_s": self.timings, "peak_memory_mb": round(peak_memory_mb(), 1),
            **fields,
        }  # fmt: skip
        path = self.out / "result.json"
        path.write_text(json.dumps(result, indent=2, default=_jsonable))
        self.log.info("wrote %s (%.1f s, peak %.0f MB)", path, self.timings["total"], result["peak_memory_mb"])
        return path


def _jsonable(x: Any):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)

"""Run bookkeeping shared by all subcommands: output folder, log file, progress bars, ``result.json``."""

from __future__ import annotations

import json
import logging
import os
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
from .runfolder import RunFolderError, RunLock, prepare_out

console = Console(stderr=True)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (MB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class AnonymousMemoryPeak:
    """Peak anonymous resident memory (``RssAnon``: heap, tensors; not the pages of memory-mapped stacks, which
    the peak RSS counts and the kernel reclaims at will), sampled every ``interval_s`` seconds in a daemon thread
    (Linux; ``peak_mb`` None elsewhere)."""

    def __init__(self, interval_s: float = 0.5):
        import threading

        self.peak_kb = _status_kb("RssAnon")
        self._stop = threading.Event()
        self._thread = None
        if self.peak_kb is not None:
            self._thread = threading.Thread(target=self._sample, args=(interval_s,), daemon=True)
            self._thread.start()

    def _sample(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon") or 0)

    @property
    def peak_mb(self) -> float | None:
        kb = _status_kb("RssAnon")
        if kb is not None and self.peak_kb is not None:
            self.peak_kb = max(self.peak_kb, kb)
        return None if self.peak_kb is None else round(self.peak_kb / 1024, 1)

    def stop(self) -> None:
        self._stop.set()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"tomohet": __version__, "python": platform.python_version()}
    for pkg in ("torch", "numpy", "mrcfile", "starfile", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class _LogFile(logging.FileHandler):
    """The run's log file; a write that fails (a full disk) is dropped instead of printing a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


class Run:
    """One command's run in ``out``: a log file ``tomohet.log`` and a ``result.json`` written at the end.

    ``out`` is checked (a folder, creatable, writable) and locked against a second run into it
    (:mod:`tomohet.cli.runfolder`) before anything is written. The lock is released by :meth:`finish`; use the run
    as a context manager (``with Run(...) as run:``) so that it is released on error too and the log says why the
    run stopped."""

    def __init__(self, out: Path, command: str, options: dict[str, Any]):
        self.out = prepare_out(out)
        self.lock = RunLock(self.out, command)
        stale = self.lock.acquire()
        self.command = command
        self.options = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.anonymous = AnonymousMemoryPeak()
        self.log = logging.getLogger(f"tomohet.{command}")
        self.log.setLevel(logging.INFO)
        for h in list(self.log.handlers):
            self.log.removeHandler(h)
            h.close()
        try:
            self._file = _LogFile(self.out / "tomohet.log", mode="a")
        except OSError as exc:
            self.lock.release()
            why = f"cannot write the log file ({exc.strerror or exc})"
            raise RunFolderError(self.out / "tomohet.log", why) from exc
        self._file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.log.addHandler(self._file)
        self._console = RichHandler(console=console, show_path=False, show_time=False)
        self.log.addHandler(self._console)
        self.log.info("tomohet %s %s -> %s", __version__, command, self.out)
        if stale:
            self.log.warning("%s", stale)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:  # why the run stopped, in its log (the console gets the error line from the CLI)
            self.log.removeHandler(self._console)
            self.log.error("stopped: %s: %s", exc_type.__name__, " ".join(str(exc).split()))
        self.close()

    def close(self) -> None:
        """Release the folder's lock, stop the memory sampler and close the log file (idempotent)."""
        self.anonymous.stop()
        self.lock.release()
        for h in (self._file, self._console):
            self.log.removeHandler(h)
        self._file.close()

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
            "peak_anonymous_memory_mb": self.anonymous.peak_mb, **fields,
        }  # fmt: skip
        path = self.out / "result.json"
        text = json.dumps(result, indent=2, default=_jsonable)
        tmp = path.with_name(path.name + ".tmp")
        try:  # atomic: a full disk leaves the previous result.json (or none), never a truncated one
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        anon = result["peak_anonymous_memory_mb"]
        self.log.info("wrote %s (%.1f s, peak %.0f MB%s)", path, self.timings["total"], result["peak_memory_mb"],
                      "" if anon is None else f", anonymous peak {anon:.0f} MB")  # fmt: skip
        self.lock.release()  # the run is over (also for callers that do not use ``with``)
        return path


def _jsonable(x: Any):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def stage_reporter(prog, n_particles: int, n_images: int, unit: str):
    """A ``progress(stage, done, total)`` callback for the methods that drives one task of ``prog`` (a
    :meth:`Run.progress` bar): the stage as its description and the rate in ``unit``/s (``n_images`` per
    ``n_particles``), timed from the stage's start."""
    import time

    task = prog.add_task("initialising", total=n_particles, rate="")
    t0 = [time.perf_counter(), ""]

    def progress(stage: str, done: int, total: int) -> None:
        if stage != t0[1]:
            t0[0], t0[1] = time.perf_counter(), stage
        rate = done * n_images / n_particles / max(time.perf_counter() - t0[0], 1e-9)
        prog.update(task, description=stage, completed=done, total=total, rate=f"{rate:.0f} {unit}/s")

    return progress

"""A command run as one measured benchmark cell: wall time, CPU time and peak memory of the process and its
children, its output in a log file, an optional time limit.

Peak memory is sampled (every 100 ms) as the summed resident set of the process tree, not read from
``ru_maxrss``: a child forked from a large process (this runner holds torch and the datasets) starts with the
parent's high-water mark, which survives ``exec``, so ``ru_maxrss`` would report the runner's memory."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Measured:
    """``returncode`` (-N: killed by signal N; ``timed_out`` when the limit killed it), ``wall_s`` seconds of
    wall-clock time, ``cpu_s`` user + system seconds of the process and its waited-for children, ``peak_rss_mb``
    the largest summed resident set of the process tree (MiB, sampled every 100 ms)."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    timed_out: bool = False

    def as_dict(self) -> dict:
        return {"wall_s": round(self.wall_s, 2), "cpu_s": round(self.cpu_s, 2),
                "peak_rss_mb": round(self.peak_rss_mb, 1)}  # fmt: skip


def run_measured(
    cmd: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout_s: float | None = None,
) -> Measured:
    """Run ``cmd`` (stdout and stderr into ``log``, the command line first) in its own process group and
    measure it with ``os.wait4``; past ``timeout_s`` the whole group is terminated (then killed)."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    timed_out = threading.Event()
    with open(log, "w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)

        def stop() -> None:
            timed_out.set()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    return
                time.sleep(5)

        sampler = _PeakSampler(proc.pid)
        sampler.start()
        timer = threading.Timer(timeout_s, stop) if timeout_s else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: take the cell's processes down with us
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        finally:
            if timer:
                timer.cancel()
            sampler.stop()
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    return Measured(proc.returncode, wall, usage.ru_utime + usage.ru_stime, sampler.peak / 2**20, timed_out.is_set())


class _PeakSampler(threading.Thread):
    """Largest summed RSS (bytes) of a process and its descendants, sampled until :meth:`stop`."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak = pid, interval, 0
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._done.is_set():
            total = 0
            try:
                for p in (root, *root.children(recursive=True)):
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.peak = max(self.peak, total)
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=2)


def log_tail(log: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a cell's log (for an error message)."""
    try:
        return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""

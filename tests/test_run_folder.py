"""The ``--out`` folder lock (issue 14, item 7): a second run into a folder in use stops at once with one line
naming the folder and the lock file and writes nothing; a lock left by a run that is gone (killed) is taken over
with a warning; the lock is released when a run ends, also on error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tomohet.cli.main import app
from tomohet.cli.runfolder import LOCK_NAME, RunFolderError, RunLock, _owner_alive, _proc_start
from tomohet.cli.runlog import Run
from tomohet.cli.simulate import run_simulate  # noqa: F401 (imported here, not in the timed calls)


def assert_cli_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def simulate(out: Path):
    """A run that stops before any work when its folder is taken, and finishes in seconds when it is not."""
    return CliRunner().invoke(app, ["simulate", "--preset", "smoke", "--n-particles", "2", "--out", str(out)])


def write_lock(folder: Path, pid: int, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    info = {"pid": pid, "host": socket.gethostname(), "proc_start": _proc_start(pid), "command": "classify",
            "started": "2025-01-01 00:00:00", "token": "other", **extra}  # fmt: skip
    (folder / LOCK_NAME).write_text(json.dumps(info))
    return folder / LOCK_NAME


@pytest.fixture
def other_process():
    """Another live process (stands for a second tomohet run); killed and reaped at the end."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


def test_second_run_into_a_folder_in_use_stops_at_once(tmp_path, other_process):
    out = tmp_path / "out"
    lock = write_lock(out, other_process.pid)
    t = time.perf_counter()
    line = assert_cli_error(simulate(out), str(out), str(lock), f"pid {other_process.pid}", "in use")
    assert time.perf_counter() - t < 10
    assert "[--out]" in line
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written, not even a log line
    assert json.loads(lock.read_text())["pid"] == other_process.pid  # the other run keeps its lock


def test_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, other_process):
    out = tmp_path / "out"
    lock = write_lock(out, other_process.pid)
    other_process.kill()
    other_process.wait()  # gone (SIGKILL: it could not remove its lock)
    r = simulate(out)
    assert r.exit_code == 0, r.output
    log = (out / "tomohet.log").read_text()
    assert "WARNING took over the stale lock" in log and str(lock) in log and str(other_process.pid) in log
    assert (out / "result.json").exists() and not lock.exists()  # released at the end
    assert not list(out.glob(f"{LOCK_NAME}*"))


def test_reused_pid_and_garbage_locks():
    me = os.getpid()
    assert _owner_alive({"pid": me, "host": socket.gethostname(), "proc_start": _proc_start(me)})
    if _proc_start(me) is not None:  # Linux: the same pid with another start time is another process
        assert not _owner_alive({"pid": me, "host": socket.gethostname(), "proc_start": _proc_start(me) + 1})
    assert _owner_alive({"pid": me, "host": "another-node"})  # cannot tell: treated as in use
    assert not _owner_alive({"pid": 0, "host": socket.gethostname()})


def test_unreadable_lock_is_in_use_while_fresh_and_stale_when_old(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")  # a run between creating its lock and writing its pid
    with pytest.raises(RunFolderError, match="in use"):
        RunLock(tmp_path).acquire()
    old = time.time() - 3600
    os.utime(tmp_path / LOCK_NAME, (old, old))
    lock = RunLock(tmp_path)
    assert "took over the stale lock" in lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_exactly_one_of_concurrent_runs_gets_the_folder(tmp_path):
    locks = [RunLock(tmp_path, f"run {i}") for i in range(8)]
    start, won, lost = threading.Barrier(len(locks)), [], []

    def take(lock: RunLock) -> None:
        start.wait()
        try:
            lock.acquire()
            won.append(lock)
        except RunFolderError:
            lost.append(lock)

    threads = [threading.Thread(target=take, args=(lk,)) for lk in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == won[0].token
    lost[0].release()  # a run that did not get the lock never removes it
    assert (tmp_path / LOCK_NAME).exists()
    won[0].release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_released_on_error_and_on_success(tmp_path):
    with pytest.raises(ZeroDivisionError), Run(tmp_path / "a", "test", {}):
        assert (tmp_path / "a" / LOCK_NAME).exists()
        1 / 0  # noqa: B018
    assert not (tmp_path / "a" / LOCK_NAME).exists()
    assert "stopped: ZeroDivisionError" in (tmp_path / "a" / "tomohet.log").read_text()
    with Run(tmp_path / "a", "test", {}) as run:  # the folder is free again
        with pytest.raises(RunFolderError, match=LOCK_NAME):
            Run(tmp_path / "a", "test", {})  # a second run in the same process, too
        run.finish("test")
    assert not (tmp_path / "a" / LOCK_NAME).exists()
    assert json.loads((tmp_path / "a" / "result.json").read_text())["command"] == "test"


def test_cli_error_after_the_lock_releases_it(tmp_path):
    """A run that fails on its input (here: a star file that is not one) leaves no lock behind."""
    bad = tmp_path / "not_a.star"
    bad.write_text("hello\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["reconstruct", str(bad), "--out", str(out)])
    assert_cli_error(r, str(bad))
    assert out.is_dir() and not (out / LOCK_NAME).exists()
    assert "stopped: " in (out / "tomohet.log").read_text()


def test_run_without_with_releases_at_finish_or_when_dropped(tmp_path):
    run = Run(tmp_path / "a", "test", {})
    run.finish("test")
    assert not (tmp_path / "a" / LOCK_NAME).exists()
    run.close()

    def fails():
        Run(tmp_path / "b", "test", {})
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fails()
    assert not (tmp_path / "b" / LOCK_NAME).exists()  # dropped with the failed call's frame

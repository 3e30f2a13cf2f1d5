"""The ``--out`` folder of a run: checked before anything is written, and locked against a second run.

The lock is a file ``.tomohet.lock`` in the folder, created with ``O_CREAT | O_EXCL`` (so exactly one run gets
it) and holding the owner's pid, host and process start time. A second run into the same folder stops at once
with :class:`RunFolderError`. A lock whose process is gone (killed, crashed) is stale: the next run takes it
over with a warning. The lock is removed when the run ends, also on error (and, as fallbacks, when its
:class:`RunLock` is garbage-collected or the interpreter exits).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
import uuid
import weakref
from pathlib import Path

from ..errors import InputError

LOCK_NAME = ".tomohet.lock"


class RunFolderError(InputError):
    """The ``--out`` folder cannot be used: not a folder, not writable, or in use by another run."""

    def __init__(self, path: Path, message: str):
        super().__init__(path, message, "--out")


def prepare_out(out: str | Path) -> Path:
    """Create ``out`` (and its parents) or check the existing folder; a one-line error naming the path when it is
    a file, cannot be created or is not writable."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(out, "exists and is a file, not a folder; give a folder for the outputs")
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise RunFolderError(out, f"cannot create the output folder: {blocker} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(out, f"cannot create the output folder ({exc.strerror or exc})") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunFolderError(out, "the output folder is not writable")
    return out


def _proc_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (Linux), or None where unknown; with the pid it
    identifies a process even after its pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def _owner_alive(info: dict) -> bool:
    """Whether the lock's owner may still run (True when it cannot be told, e.g. another host)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    if _is_zombie(pid):
        return False
    started = info.get("proc_start")
    now = _proc_start(pid)
    return not (started is not None and now is not None and now != started)  # the pid was reused


class RunLock:
    """An exclusive lock on a run folder (see the module's docstring)."""

    def __init__(self, folder: Path, command: str = ""):
        self.path = Path(folder) / LOCK_NAME
        self.command = command
        self.token = uuid.uuid4().hex
        self.held = False

    def _info(self) -> dict:
        pid = os.getpid()
        return {"pid": pid, "host": socket.gethostname(), "proc_start": _proc_start(pid), "command": self.command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "token": self.token}  # fmt: skip

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise RunFolderError(self.path.parent, f"cannot create the lock file {self.path} "
                                 f"({exc.strerror or exc}); is the folder writable?") from exc  # fmt: skip
        try:
            os.write(fd, (json.dumps(self._info()) + "\n").encode())
        except OSError as exc:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise RunFolderError(self.path.parent, f"cannot write the lock file {self.path} "
                                 f"({exc.strerror or exc})") from exc  # fmt: skip
        os.close(fd)
        return True

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            info = json.loads(path.read_text())
            return info if isinstance(info, dict) else None
        except (OSError, ValueError):
            return None

    def _busy(self, info: dict | None) -> RunFolderError:
        who = "another tomohet run"
        if info:
            who += f" (pid {info.get('pid')} on {info.get('host')}, {info.get('command', '')}"
            who += f" since {info.get('started')})"
        return RunFolderError(self.path.parent, f"the folder is in use by {who}; lock file {self.path}. Wait for "
                              "that run to end, give another --out, or delete the lock file if no run uses the "
                              "folder")  # fmt: skip

    def acquire(self) -> str | None:
        """Take the lock or raise :class:`RunFolderError`; returns a warning when a stale lock was taken over."""
        warning = None
        for _ in range(5):
            if self._create():
                self.held = True
                _HELD.add(self)
                return warning
            info = self._read(self.path)
            if info is None:  # being written right now, or garbage
                try:
                    age = time.time() - self.path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < 10:
                    raise self._busy(None)
            elif _owner_alive(info):
                raise self._busy(info)
            # stale: move it aside atomically, check it is still the one judged stale, then retry the creation
            aside = self.path.with_name(f"{LOCK_NAME}.stale-{self.token}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue
            if self._read(aside) != info:  # another run took it over meanwhile: put its lock back
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
                aside.unlink(missing_ok=True)
                raise self._busy(self._read(self.path))
            aside.unlink(missing_ok=True)
            owner = f"pid {info.get('pid')}, {info.get('started')}" if info else "unreadable"
            warning = f"took over the stale lock {self.path} of a run that is no longer running ({owner})"
        raise self._busy(self._read(self.path))

    def release(self) -> None:
        """Remove the lock if this run still holds it (idempotent)."""
        if not self.held:
            return
        self.held = False
        _HELD.discard(self)
        info = self._read(self.path)
        if info is not None and info.get("token") == self.token:
            try:
                self.path.unlink()
            except OSError:  # left behind: the next run finds its owner gone and takes it over
                pass

    def __del__(self) -> None:  # a run dropped without release (e.g. after an error outside a ``with``)
        try:
            self.release()
        except Exception:  # noqa: BLE001 (never raise from a finaliser, e.g. at interpreter shutdown)
            pass


_HELD: weakref.WeakSet[RunLock] = weakref.WeakSet()  # the locks this process holds, released at exit


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD):
        lock.release()


__all__ = ["LOCK_NAME", "RunFolderError", "RunLock", "prepare_out"]

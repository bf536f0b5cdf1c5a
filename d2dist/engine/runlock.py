"""A run owns its output directory for its lifetime: an exclusive lock on
``OUTPUT_DIR/.d2dist.lock``.

The lock is the operating system's (``fcntl.flock`` on an open file), held by the process for as
long as it runs and released by the kernel when it ends, however it ends (a crash, ``kill -9``):
a dead run never leaves a directory locked. The file itself stays, naming its last owner (process,
host, start time, command) for the message a second run gets. In a multi-process run only the main
process takes it.

:class:`OutputDirLock` is the one owner of the lock, a context manager. It is re-entrant within a
process without any state of its own: a lock this process holds already (d2dist's tools take it
when a run starts, the trainer again when it trains) is recognised by the owner the lock file
names, and left to the one who took it.
"""

import fcntl
import json
import os
import socket
import sys
import time
from ..errors import ConfigError, RunFault, os_error_cause

__all__ = ["LOCK_NAME", "OutputDirLock"]

LOCK_NAME = ".d2dist.lock"


def _owner_of(path: str) -> dict:
    try:
        with open(path) as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def _owner(path: str) -> str:
    owner = _owner_of(path)
    try:
        return (
            f"process {owner['pid']} on {owner['host']}, started {owner['started']}: "
            f"{owner['command']}"
        )
    except KeyError:
        return "a process that has not written its name yet"


class OutputDirLock:
    """``with OutputDirLock(out):`` owns ``out`` for the block: takes its lock for this process
    (one this process holds already: nothing to do, and nothing released at the end), or raises a
    :class:`ConfigError` naming the directory and the run that holds it. ``acquire()`` and
    ``release()`` do the same for a run whose end is elsewhere."""

    def __init__(self, out: str):
        self.out = out
        self.path = os.path.join(out, LOCK_NAME)
        self._fd = None  # the open file holding the lock, when this object took it

    def __enter__(self) -> "OutputDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunFault(
                f"could not open the run lock {self.path!r} of OUTPUT_DIR {self.out!r}: "
                f"{os_error_cause(e)}. The lock file names the run that created it "
                f"({_owner(self.path)}); a directory another user's run owns is not this run's "
                "to write into: choose another OUTPUT_DIR (or, if the directory is yours, give "
                "yourself the right to write that file)."
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            owner = _owner_of(self.path)
            if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                return  # this process holds it already (taken where the run started)
            raise ConfigError(
                f"OUTPUT_DIR {self.out!r} is in use by another run ({_owner(self.path)}). Two "
                "runs in one directory would overwrite each other's checkpoints and metrics: "
                "wait for it to end, or choose another OUTPUT_DIR."
            ) from None
        self._fd = fd  # held from here on, even if naming its owner fails
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(owner).encode())
        except OSError as e:
            raise RunFault(
                f"could not write the run lock {self.path!r}: {os_error_cause(e)}; nothing of "
                f"the run was written yet. Free space in (or fix) OUTPUT_DIR {self.out!r}, or "
                "choose another."
            ) from e

    def release(self) -> None:
        """Release the lock if this object took it (the end of the process does it too)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

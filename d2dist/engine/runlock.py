"""A run owns its output directory for its lifetime: an exclusive lock on
``OUTPUT_DIR/.d2dist.lock``.

The lock is the operating system's (``fcntl.flock`` on an open file), held by the process for as
long as it runs and released by the kernel when it ends, however it ends (a crash, ``kill -9``):
a dead run never leaves a directory locked. The file itself stays, naming its last owner (process,
host, start time, command) for the message a second run gets. In a multi-process run only the main
process takes it.
"""

import fcntl
import json
import os
import socket
import sys
import time
from typing import Dict

from ..errors import ConfigError, RunFault, os_error_cause

__all__ = ["LOCK_NAME", "lock_output_dir", "release_output_dir"]

LOCK_NAME = ".d2dist.lock"
_HELD: Dict[str, int] = {}  # real path of a locked directory -> the open file holding its lock


def _owner(path: str) -> str:
    try:
        with open(path) as f:
            owner = json.load(f)
        return (
            f"process {owner['pid']} on {owner['host']}, started {owner['started']}: "
            f"{owner['command']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


def lock_output_dir(out: str) -> None:
    """Take ``out``'s lock for this process (again: nothing to do), or raise a
    :class:`ConfigError` naming the directory and the run that holds it."""
    real = os.path.realpath(out)
    if real in _HELD:
        return
    path = os.path.join(out, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunFault(
            f"could not open the run lock {path!r} of OUTPUT_DIR {out!r}: {os_error_cause(e)}. "
            f"The lock file names the run that created it ({_owner(path)}); a directory another "
            "user's run owns is not this run's to write into: choose another OUTPUT_DIR (or, if "
            "the directory is yours, give yourself the right to write that file)."
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            f"OUTPUT_DIR {out!r} is in use by another run ({_owner(path)}). Two runs in one "
            "directory would overwrite each other's checkpoints and metrics: wait for it to end, "
            "or choose another OUTPUT_DIR."
        ) from None
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }
    _HELD[real] = fd  # held from here on, even if naming its owner fails
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner).encode())
    except OSError as e:
        raise RunFault(
            f"could not write the run lock {path!r}: {os_error_cause(e)}; nothing of the run "
            f"was written yet. Free space in (or fix) OUTPUT_DIR {out!r}, or choose another."
        ) from e


def release_output_dir(out: str) -> None:
    """Release ``out``'s lock if this process holds it (the end of the process does it too)."""
    fd = _HELD.pop(os.path.realpath(out), None)
    if fd is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

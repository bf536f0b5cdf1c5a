"""d2dist's kinds of error, each printed by the tools as one message (exit status 2): a mistake in
what was asked (:class:`ConfigError`), a fault of the data met while running (:class:`DataError`),
and a run that cannot go on for a reason outside both (:class:`RunFault`: the disk, a diverging
student). :data:`D2DIST_ERRORS` is the tuple of them."""

import errno
import os
import pickle
import zipfile
from typing import List, Optional

__all__ = [
    "ConfigError",
    "D2DIST_ERRORS",
    "DataError",
    "RunFault",
    "UNREADABLE_CHECKPOINT",
    "a_type",
    "incompatible_keys",
    "is_write_failure",
    "os_error_cause",
    "with_article",
]

# What reading a checkpoint file that cannot be used raises: missing (fvcore asserts, OSError), cut
# short or not a zip (RuntimeError from PyTorch's reader, EOFError, BadZipFile), not a pickle
# (UnpicklingError, or a ValueError such as UnicodeDecodeError). Catch these, not Exception.
UNREADABLE_CHECKPOINT = (
    OSError,
    AssertionError,
    RuntimeError,
    EOFError,
    ValueError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
)


class ConfigError(ValueError):
    """A configuration or command-line value that d2dist cannot run with.

    The message names the key, the value given, what is expected and how to fix it; the tools
    print it without a traceback and exit with status 2.
    """


class DataError(RuntimeError):
    """A training image or annotation that cannot be read or used (missing, corrupt or truncated
    file, a size that differs from its annotation). The message names the file and its dataset;
    the trainer saves a checkpoint of its last complete iteration before the run stops."""


class RunFault(RuntimeError):
    """A run that cannot go on for a reason outside its config and data: a path it must read or
    write (permission, read-only or full disk), or a student whose training diverged. The message
    names the cause, the path or iteration, what was saved and what to do."""


# d2dist's own errors: their message is all a user needs (the tools print it alone, exit 2); any
# other exception is a bug somewhere and keeps its traceback.
D2DIST_ERRORS = (ConfigError, DataError, RunFault)


_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "the file is larger than this process may write (its file-size limit)",
    errno.ENOENT: "it does not exist",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "it is a directory",
    errno.EIO: "an input/output error of the device",
}


def os_error_cause(error: BaseException, path: str = "") -> str:
    """The cause of an error reading or writing a file, in words ("the disk is full", ...), for
    messages that name the path. PyTorch's writer reports a short write as a RuntimeError of its
    own ("unexpected pos ..."): for the file it was writing (``path``), its cause is found from
    the file-size limit and the free space of its disk."""
    code = getattr(error, "errno", None)
    if code in _CAUSES:
        return f"{_CAUSES[code]} ({error.strerror or error})"
    text = str(error)
    if "unexpected pos" in text or "PytorchStreamWriter failed" in text:
        return _short_write_cause(path) + f" (PyTorch: {text.splitlines()[0][:160]})"
    return f"{type(error).__name__}: {text[:200]}"


def _short_write_cause(path: str) -> str:
    import resource
    import shutil

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    try:
        size = os.path.getsize(path) if path else -1
    except OSError:
        size = -1
    if limit != resource.RLIM_INFINITY and size >= limit:
        return f"{_CAUSES[errno.EFBIG]} (File too large: {limit} bytes)"
    try:
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path)) if path else ".").free
    except OSError:
        free = -1
    if 0 <= free < (64 << 20):
        return f"{_CAUSES[errno.ENOSPC]} (No space left on device: {free} bytes free)"
    return "PyTorch could not write the whole file (a full disk, or a file-size limit)"


def is_write_failure(error: BaseException) -> bool:
    """Whether writing a file failed for a reason of the machine (an ``OSError``: a full disk, a
    read-only file system, a permission; or PyTorch's writer's own report of a short write), as
    opposed to a bug (anything else keeps its traceback)."""
    if isinstance(error, OSError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "unexpected pos" in text or "PytorchStreamWriter failed" in text
    )


def with_article(name: str) -> str:
    """``name`` after "a" or "an" ("an int", "a str"), for messages."""
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def a_type(value, items: bool = False) -> str:
    """The type of ``value`` after "a" or "an" ("a float"), for messages; with ``items``, the types
    of a list's (or tuple's) items too ("a list of int, str")."""
    phrase = with_article(type(value).__name__)
    if items and isinstance(value, (list, tuple)) and value:
        phrase += f" of {', '.join(sorted({type(x).__name__ for x in value}))}"
    return phrase


def incompatible_keys(incompatible, model: str = "the model", most: Optional[int] = 8) -> List[str]:
    """What does not fit in a checkpoint load (fvcore's ``_IncompatibleKeys``), as phrases for an
    error message: missing keys, keys not in ``model``, shape mismatches (``most`` of each, or
    all if None)."""

    def some(items) -> str:
        items = list(items)
        if most is None or len(items) <= most:
            return f"{items}"
        return f"{items[:most]} and {len(items) - most} more"

    problems = []
    if incompatible.missing_keys:
        problems.append(f"missing in the checkpoint: {some(incompatible.missing_keys)}")
    if incompatible.unexpected_keys:
        problems.append(f"not in {model}: {some(incompatible.unexpected_keys)}")
    if incompatible.incorrect_shapes:
        shapes = [f"{k}: checkpoint {a} vs model {b}" for k, a, b in incompatible.incorrect_shapes]
        problems.append(f"shape mismatches: {some(shapes)}")
    return problems

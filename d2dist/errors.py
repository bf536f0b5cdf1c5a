"""d2dist's two kinds of error: a mistake in what was asked (:class:`ConfigError`, exit status 2
from the tools) and a fault of the data met while running (:class:`DataError`)."""

import pickle
import zipfile
from typing import List, Optional

__all__ = ["ConfigError", "DataError", "UNREADABLE_CHECKPOINT", "incompatible_keys"]

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

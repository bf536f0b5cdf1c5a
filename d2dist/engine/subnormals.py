"""Flushing subnormal floats to zero on the CPU.

A CPU computes with subnormal (denormal) float32 numbers, those below about 1.2e-38, many times
more slowly than with normal ones. Gradients of a student's fully connected layers sometimes hold
thousands of them, and a training step then takes 10-40x longer (``docs/benchmarks.md``). CPU runs
of d2dist's tools therefore set the processor's flush-to-zero and denormals-are-zero modes with
``torch.set_flush_denormal(True)``: subnormals become 0, a change far below float32's precision
for any loss or weight. GPU runs are left alone.

The mode is a per-thread processor setting that a thread inherits from the thread that starts it,
so it must be set before PyTorch starts its intra-op thread pool, i.e. before the first parallel
computation of the process: d2dist's ``setup()`` does it first thing. Whether it took on every
thread is measured, not assumed (:func:`subnormals_flushed`).

Set the environment variable ``D2DIST_FLUSH_DENORMAL=0`` to keep subnormals (IEEE arithmetic).
"""

import logging
import os
from typing import Optional

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["ENV_VAR", "flush_subnormals", "log_subnormal_mode", "subnormals_flushed"]

logger = logging.getLogger(__name__)

ENV_VAR = "D2DIST_FLUSH_DENORMAL"
_ON, _OFF = ("", "1", "true", "on"), ("0", "false", "off")


def _wanted() -> bool:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigError(
        f"{ENV_VAR}={os.environ[ENV_VAR]!r}: expected 1 (flush subnormal floats to zero in CPU "
        f"runs, the default) or 0 (keep them). Unset it or set one of those."
    )


@torch.no_grad()
def subnormals_flushed() -> float:
    """The fraction of a probe's subnormal results that came out as zero, on every thread.

    The probe is a float32 matrix product big enough to be split over the intra-op threads
    (its products, ~5e-40, are subnormal) and an element-wise product of a subnormal: 1.0 means
    every thread flushes, 0.0 none, in between some threads only (the mode was set after the
    thread pool had started).
    """
    x = torch.full((512, 512), 1e-21, dtype=torch.float32)
    y = torch.full((1 << 16,), 1e-39, dtype=torch.float32)
    results = torch.cat([(x @ x).flatten(), y * 1.0])
    return (results == 0).float().mean().item()


def flush_subnormals(device) -> Optional[bool]:
    """For a run on ``device``: on the CPU, flush subnormals to zero (unless
    ``D2DIST_FLUSH_DENORMAL=0``) and return whether every thread now does; elsewhere change
    nothing and return None.

    Call it before any PyTorch computation of the process (see the module docstring), and log
    the outcome with :func:`log_subnormal_mode` once logging is set up.
    """
    wanted = _wanted()  # a bad value is an error on every device
    if torch.device(device).type != "cpu":
        return None
    if wanted:
        # numpy computes its float types' limits once, when first asked (and caches them): asked
        # with subnormals flushed, it finds the smallest subnormal to be 0 and warns. Now, they
        # are computed right (and nothing is filtered).
        for kind in (np.float16, np.float32, np.float64, np.longdouble):
            np.finfo(kind)
    if not torch.set_flush_denormal(wanted):  # False: the processor has no such mode
        return False
    return subnormals_flushed() == 1.0 if wanted else False


def log_subnormal_mode(flushed: Optional[bool]) -> None:
    """Log what :func:`flush_subnormals` did (a warning where it was asked for and failed)."""
    if flushed is None:
        return
    if flushed:
        logger.info(
            "CPU run: subnormal floats are flushed to zero (torch.set_flush_denormal); set "
            f"{ENV_VAR}=0 to keep them."
        )
        return
    if not _wanted():
        logger.info(f"CPU run: subnormal floats are kept ({ENV_VAR}=0); CPU steps may be slower.")
        return
    share = subnormals_flushed()
    reason = (
        "this processor has no flush-to-zero mode"
        if share == 0.0
        else f"only some threads flush ({share:.0%} of a probe's subnormals became 0): PyTorch's "
        "thread pool had started before d2dist.engine.flush_subnormals was called; call it "
        "before any PyTorch computation"
    )
    logger.warning(f"CPU run: subnormal floats are not flushed to zero ({reason}); CPU steps "
                   "that meet subnormals may be 10-40x slower.")  # fmt: skip

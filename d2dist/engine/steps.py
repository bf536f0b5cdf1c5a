"""What an iteration that fails leaves behind, and how a d2dist error leaves the training loop.

d2dist's policy is *stop, having saved*: an iteration that fails (a training image that cannot
be used, a non-finite loss, ...) first saves the state of the last complete iteration, then the
error stops the run; ``--resume`` continues from there. A student whose training diverges (a
non-finite loss, or non-finite boxes in its proposals) stops with a
:class:`~d2dist.errors.RunFault` naming the iteration, the losses, the checkpoint kept and what to
change.

A d2dist error (:data:`~d2dist.errors.D2DIST_ERRORS`: its message says it all) leaves Detectron2's
training loop without the loop's traceback log, and is raised again by the trainer as it was; with
``D2DIST_DEBUG=1`` (``--debug``) it keeps the traceback too. Anything else is a bug somewhere and
always keeps it.
"""

import contextlib
import logging
import math
import os
import re
import signal

from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm

from ..errors import D2DIST_ERRORS, RunFault
from .faults import Preempted, preemption_hook_of, save_as_iteration

__all__ = [
    "CheckedAMPTrainer",
    "CheckedSimpleTrainer",
    "debugging",
    "reporting_d2dist_errors",
    "save_last_complete",
    "saving_last_complete",
    "stopping_without_traceback",
]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def saving_last_complete(trainer, checkpointer):
    """Around one iteration of ``trainer``: if it fails (a data fault, a non-finite loss, ...),
    the main process saves the state of the last complete iteration before the error stops the
    run, so that an error mid-way loses no finished work. A preemption signal received meanwhile
    (the whole process group was sent SIGTERM, and the data-loading workers died of it) makes the
    failure the preemption it is; a non-finite loss a :class:`~d2dist.errors.RunFault` that
    names the iteration, the losses, the checkpoint and what to change."""
    try:
        yield
    except Exception as e:
        saved = save_last_complete(trainer, checkpointer) if comm.is_main_process() else None
        kept = (
            f"saved {saved}.pth (its state after iteration {trainer.iter - 1}) in "
            f"{checkpointer.save_dir}"
            if saved
            else "nothing was saved (no iteration had completed; the periodic checkpoints stay)"
        )
        preemption = preemption_hook_of(trainer)
        if preemption is not None and preemption.signal:
            name = signal.Signals(preemption.signal).name
            logger.warning(
                f"Received {name} during iteration {trainer.iter}, which then failed "
                f"({type(e).__name__}: {str(e)[:200]}): the preemption stopped it; {kept}; "
                "continue with --resume."
            )
            raise Preempted(128 + preemption.signal) from None
        if isinstance(e, FloatingPointError):
            raise RunFault(_diverged(trainer, e, kept)) from e
        raise


_LOSS = re.compile(r"'([\w/]+)': (?:np\.float\d+\()?([-+\w.]+)\)?")


def _diverged(trainer, error: FloatingPointError, kept: str) -> str:
    """The message of a diverging student: iteration, the non-finite losses, what was kept, what
    to change (Detectron2's "Loss became infinite or NaN" lists every loss; the Distiller's own
    names its terms and levels; Detectron2's proposal check names no loss)."""
    text = str(error)
    bad = []
    for key, value in _LOSS.findall(text):
        try:
            if not math.isfinite(float(value)):
                bad.append(f"{key} = {value}")
        except ValueError:
            continue
    if bad:
        what = "non-finite losses: " + ", ".join(bad)
    elif "non-finite distillation loss" in text:  # the Distiller's: its terms, by level
        what = "non-finite distillation losses: " + text.split(": ", 1)[1].split(" (distill/")[0]
    else:
        what = f"{text.splitlines()[0]}"
    optimizer = getattr(trainer, "optimizer", None)
    lr = f" (now {optimizer.param_groups[0]['lr']:.3g})" if optimizer is not None else ""
    return (
        f"the training diverged at iteration {trainer.iter}: {what}. The run stopped and {kept}. "
        f"Lower the learning rate{lr} (SOLVER.BASE_LR; LazyConfig: optimizer.lr) or lengthen its "
        "warm-up (SOLVER.WARMUP_ITERS), clip the gradients (SOLVER.CLIP_GRADIENTS), or lower the "
        "distillation terms' WEIGHT / warm them up (MODEL.DISTILL.WEIGHT_SCHEDULE.WARMUP_ITERS); "
        "then --resume (with --allow-config-change) or start again."
    )


def save_last_complete(trainer, checkpointer):
    """Save the state of the last iteration this run completed (when the current one fails);
    returns the checkpoint's name, or None when the run completed no iteration yet. The model and
    optimizer are those after that iteration (an iteration fails before its optimizer step: in
    its data, forward or backward)."""
    last = trainer.iter - 1
    if last < trainer.start_iter:
        return None
    current = trainer.iter
    name = save_as_iteration(trainer, checkpointer, last)
    logger.warning(
        f"The run stopped at iteration {current}: saved {name}.pth (its state after "
        f"iteration {last}) in {checkpointer.save_dir}; continue with --resume."
    )
    return name


class _Stopped(BaseException):
    """A d2dist error on its way out of Detectron2's training loop: not an ``Exception``, so that
    the loop does not log it with a traceback ("Exception during training:"; its message says it
    all, and the tools print it); :func:`reporting_d2dist_errors` raises the error itself again.
    Any other exception keeps the loop's traceback: it is a bug somewhere."""

    def __init__(self, error: BaseException):
        super().__init__(error)
        self.error = error


def debugging() -> bool:
    """``D2DIST_DEBUG=1`` (the tools' ``--debug`` sets it): d2dist's own errors are shown with
    their whole traceback too, as any other exception."""
    return os.environ.get("D2DIST_DEBUG", "") == "1"


@contextlib.contextmanager
def stopping_without_traceback():
    """Around what Detectron2's training loop calls (a step, the hooks): a d2dist error leaves it
    as :class:`_Stopped` (unless :func:`debugging`)."""
    try:
        yield
    except D2DIST_ERRORS as e:
        if debugging():
            raise
        raise _Stopped(e) from None


@contextlib.contextmanager
def reporting_d2dist_errors():
    """Around a training loop: the d2dist error that stopped it (:class:`_Stopped`) is logged in
    one line and raised again, with its own traceback."""
    try:
        yield
    except _Stopped as stopped:
        error = stopped.error
        logger.error(f"The training stopped: {type(error).__name__}: {error}")
        raise error.with_traceback(error.__traceback__) from error.__cause__


class _CheckedSteps:
    """A Detectron2 step trainer (``SimpleTrainer``, ``AMPTrainer``) whose iteration, if it fails,
    first saves the state of the last complete one (:func:`saving_last_complete`, with
    :attr:`checkpointer`), and whose d2dist errors leave the loop without Detectron2's traceback
    (:func:`stopping_without_traceback`)."""

    checkpointer = None  # set once the checkpointer is built on the trainer

    def run_step(self):
        with stopping_without_traceback(), saving_last_complete(self, self.checkpointer):
            super().run_step()

    def after_step(self):
        with stopping_without_traceback():
            super().after_step()

    def train(self, start_iter: int, max_iter: int):
        with reporting_d2dist_errors():
            return super().train(start_iter, max_iter)


class CheckedSimpleTrainer(_CheckedSteps, SimpleTrainer):
    """Detectron2's ``SimpleTrainer`` with :class:`_CheckedSteps`."""


class CheckedAMPTrainer(_CheckedSteps, AMPTrainer):
    """Detectron2's ``AMPTrainer`` with :class:`_CheckedSteps`."""

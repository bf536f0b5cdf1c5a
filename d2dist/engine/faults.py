"""Faults during a run: a training image that cannot be used, a preemption signal.

d2dist's policy for data faults is *stop, having saved*: a training image that cannot be read
(missing, corrupt, truncated, or of another size than its annotation says) stops the run with a
:class:`~d2dist.errors.DataError` naming the file and its dataset, after the trainer has saved a
checkpoint of the last complete iteration; fix or remove the file and ``--resume``. Nothing is
skipped silently (a skipped image would change the data every method is compared on), and a bad
image costs at most the iteration that met it.

On SIGTERM (what clusters send before preemption) or SIGINT (Ctrl-C), the run finishes its
current iteration, saves a checkpoint there (atomically) and exits with status 128 + the signal;
``--resume`` continues at the next iteration.
"""

import contextlib
import logging
import os
import signal
from typing import Sequence

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..errors import DataError

__all__ = [
    "CheckedMapper",
    "Preempted",
    "PreemptionHook",
    "save_last_complete",
    "saving_last_complete",
]

logger = logging.getLogger(__name__)


class CheckedMapper:
    """A dataset mapper whose failure on an image is a :class:`DataError` naming the image and
    its dataset (the one of ``datasets`` whose ``image_root`` holds it)."""

    def __init__(self, mapper, datasets: Sequence[str]):
        self.mapper = mapper
        self.datasets = list(datasets) if not isinstance(datasets, str) else [datasets]

    def _dataset(self, file_name: str) -> str:
        path = os.path.abspath(file_name)
        for name in self.datasets:
            root = getattr(MetadataCatalog.get(name), "image_root", None)
            if root and path.startswith(os.path.abspath(root) + os.sep):
                return repr(name)
        return f"one of {self.datasets}"

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except (OSError, ValueError, SyntaxError) as e:  # PIL reports truncated files as these
            file_name = dataset_dict.get("file_name", "(no file_name)")
            raise DataError(
                f"training image {file_name} of dataset {self._dataset(file_name)} cannot be "
                f"used: {type(e).__name__}: {e}. Fix or remove it (from the dataset's annotations), "
                "then continue with --resume: the run saved a checkpoint of its last complete "
                "iteration."
            ) from e


# The handlers a process forked during training gets back (data-loading workers, process pools:
# the signal keeps its usual effect there, else e.g. a pool's terminate() would hang on them).
_FORK_RESTORES = {}


def _restore_in_child():
    for s, handler in _FORK_RESTORES.items():
        try:
            signal.signal(s, handler)
        except ValueError:  # forked from a thread other than the main one
            pass
    _FORK_RESTORES.clear()


os.register_at_fork(after_in_child=_restore_in_child)


class Preempted(SystemExit):
    """The run stopped on a signal, after saving a checkpoint (exit status 128 + signal)."""


class PreemptionHook(HookBase):
    """On SIGTERM or SIGINT, end the run after the current iteration with a checkpoint there.

    The handler only notes the signal; the hook acts after the iteration's other hooks (register
    it last), so the saved state is the iteration's complete one. In a multi-process run the
    processes agree on the iteration to stop at (one small all-reduce per step).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self._signal = 0
        self._previous = {}

    def _note(self, signum, frame):
        self._signal = signum

    def before_train(self):
        for s in self.SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._note)
            except ValueError:  # not the main thread: leave the process's handlers alone
                continue
            _FORK_RESTORES.setdefault(s, self._previous[s])

    def after_train(self):
        """Restore the process's handlers (idempotent: the trainers call it again when the loop
        ends, since an earlier hook's failing ``after_train`` skips the later hooks')."""
        for s, handler in self._previous.items():
            signal.signal(s, handler)
            if _FORK_RESTORES.get(s) is handler:
                del _FORK_RESTORES[s]
        self._previous.clear()

    def _requested(self) -> int:
        if comm.get_world_size() == 1:
            return self._signal
        flag = torch.tensor([self._signal], device=_device(self.trainer))
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def after_step(self):
        signum = self._requested()
        if not signum:
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        self.checkpointer.save(name, iteration=iteration)
        comm.synchronize()
        logger.warning(
            f"Received {signal.Signals(signum).name} at iteration {iteration}: saved {name}.pth "
            f"in {self.checkpointer.save_dir}; continue with --resume."
        )
        raise Preempted(128 + signum)


def _device(trainer) -> torch.device:
    model = getattr(trainer, "model", None) or getattr(trainer._trainer, "model", None)
    return next(model.parameters()).device


@contextlib.contextmanager
def saving_last_complete(trainer, checkpointer):
    """Around one iteration of ``trainer``: if it fails (a data fault, a non-finite loss, ...),
    the main process saves the state of the last complete iteration before the error stops the
    run, so that an error mid-way loses no finished work."""
    try:
        yield
    except Exception:
        if comm.is_main_process():
            save_last_complete(trainer, checkpointer)
        raise


def save_last_complete(trainer, checkpointer):
    """Save the state of the last iteration this run completed (when the current one fails);
    returns the checkpoint's name, or None when the run completed no iteration yet. The model and
    optimizer are those after that iteration (an iteration fails before its optimizer step: in
    its data, forward or backward)."""
    last = trainer.iter - 1
    if last < trainer.start_iter:
        return None
    inner = getattr(trainer, "_trainer", None)
    current = trainer.iter
    trainer.iter = last
    if inner is not None:
        inner.iter = last
    try:
        name = f"model_{last:07d}"
        checkpointer.save(name, iteration=last)
    finally:
        trainer.iter = current
        if inner is not None:
            inner.iter = current
    logger.warning(
        f"The run stopped at iteration {current}: saved {name}.pth (its state after "
        f"iteration {last}) in {checkpointer.save_dir}; continue with --resume."
    )
    return name

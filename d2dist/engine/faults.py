"""Faults during a run: a training image that cannot be used, a preemption signal.

d2dist's policy for data faults is *stop, having saved*: a training image that cannot be read
(missing, corrupt, truncated, or of another size than its annotation says) stops the run with a
:class:`~d2dist.errors.DataError` naming the file and its dataset, after the trainer has saved a
checkpoint of the last complete iteration; fix or remove the file and ``--resume``. Nothing is
skipped silently (a skipped image would change the data every method is compared on), and a bad
image costs at most the iteration that met it.

On SIGTERM (what clusters send before preemption) or SIGINT (Ctrl-C), the run finishes its
current training step, saves a checkpoint there (atomically) and exits with status 128 + the
signal; ``--resume`` continues at the next iteration. What runs between two steps (an evaluation,
a checkpoint, the writers) and the final evaluation are stopped at once instead: a cluster's grace
period is seconds, an evaluation can take minutes. When the signal reaches every process of the
group, data-loading workers die with it; the step that meets their death is treated as the
preemption it is.

What an iteration that fails saves, and a diverging student: :mod:`d2dist.engine.steps`.
"""

import contextlib
import logging
import os
import signal
import threading
from typing import List, Optional, Sequence

import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..errors import DataError

__all__ = [
    "CheckedMapper",
    "InterruptibleHooks",
    "Preempted",
    "PreemptionHook",
    "preemption_hook_of",
    "preemption_hooks",
    "save_as_iteration",
    "stopping_on_signals",
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


class Preempted(SystemExit):
    """The run stopped on a signal, after saving a checkpoint (exit status 128 + signal)."""


class _Interrupted(BaseException):
    """Raised by the signal handler inside what may be stopped at once (between two steps, the
    final evaluation): not an ``Exception``, so that nothing on the way catches it."""

    def __init__(self, signum: int, in_step: bool = False):
        super().__init__(signum)
        self.signum, self.in_step = signum, in_step


def _expected_end(signum, frame):
    """SIGCHLD while the run is stopping: a child process ended, as expected (a Python handler,
    not SIG_DFL: swapping in SIG_DFL with a SIGCHLD pending makes CPython report a race)."""


def _importing(frame) -> bool:
    """Whether the code a signal interrupted is inside an import (e.g. a writer's first use of a
    library): an exception raised there would leave a half-initialised module behind, so the
    signal is then only noted, and the run stops after the iteration's hooks instead."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


class PreemptionHook(HookBase):
    """On SIGTERM or SIGINT, end the run with a checkpoint of its last complete iteration.

    During a training step the handler only notes the signal; the hook acts after the iteration's
    other hooks (register it last), so the saved state is the iteration's complete one. Between
    the step and this hook (evaluation, checkpoints, writers: opened by
    :class:`InterruptibleHooks`, registered first) and during the final evaluation, the handler
    stops the run at once (:func:`stopping_on_signals` then saves). In a multi-process run the
    processes agree on the iteration to stop at (one small all-reduce per step).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self._signal = 0
        self._previous = {}
        self.interruptible = False
        self.stopping = False  # an _Interrupted is on its way up: no other is raised
        self.last_complete = None  # the last iteration whose training step ended, in this run
        self._sigchld = None  # SIGCHLD's handler before the signal came
        self._pid = os.getpid()

    def _note(self, signum, frame):
        if os.getpid() != self._pid:
            # A process forked during training (a data-loading worker, a pool's process)
            # inherited this handler: there the signal has its usual effect.
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self._signal = signum
        if self._sigchld is None:
            # The signal may reach the whole process group: the data-loading workers die of it,
            # and PyTorch's SIGCHLD handler would raise their death anywhere, a checkpoint being
            # saved included. The run is stopping: their end is expected (a loader that needs
            # them still reports it, in the step, which then counts as preempted).
            self._sigchld = signal.signal(signal.SIGCHLD, _expected_end)
        if self.interruptible and not _importing(frame):
            self.interruptible = False  # once: a second signal must not stop the saving
            self.stopping = True
            raise _Interrupted(signum)

    def before_train(self):
        for s in self.SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._note)
            except ValueError:  # not the main thread: leave the process's handlers alone
                continue
        if self._previous and self not in _ACTIVE:
            _ACTIVE.append(self)

    def after_train(self):
        """Restore the process's SIGTERM / SIGINT handlers (idempotent: the trainers call it
        again when the loop ends, since an earlier hook's failing ``after_train`` skips the later
        hooks'). SIGCHLD's, replaced only once a signal came, is given back by
        :meth:`restore_sigchld` after the checkpoint is saved."""
        self.interruptible = False
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    def restore_sigchld(self):
        """Give SIGCHLD back its handler from before the signal (idempotent; a no-op when no
        signal came). :func:`stopping_on_signals` calls it last. Not in ``after_train``: the
        trainer's loop calls that on its way out, before :func:`stopping_on_signals` saves, and a
        worker dying during the save would then be reported by PyTorch's handler, failing the
        save."""
        if self._sigchld is not None:
            signal.signal(signal.SIGCHLD, self._sigchld)
            self._sigchld = None

    @property
    def signal(self) -> int:
        """The signal received (0: none)."""
        return self._signal

    def _requested(self) -> int:
        if comm.get_world_size() == 1:
            return self._signal
        flag = torch.tensor([self._signal], device=_device(self.trainer))
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def after_step(self):
        self.interruptible = False
        signum = self._requested()
        if not signum:
            return
        iteration = self.trainer.iter
        name = save_as_iteration(self.trainer, self.checkpointer, iteration)
        comm.synchronize()
        logger.warning(
            f"Received {signal.Signals(signum).name} at iteration {iteration}: saved {name}.pth "
            f"in {self.checkpointer.save_dir}; continue with --resume."
        )
        raise Preempted(128 + signum)


class InterruptibleHooks(HookBase):
    """Registered first: from the end of a training step on (the other hooks' ``after_step``:
    evaluation, checkpoints, writers) and during ``after_train`` (the final evaluation), a signal
    stops the run at once instead of after them (:class:`PreemptionHook`, registered last, closes
    the window)."""

    def __init__(self, preemption: PreemptionHook):
        self.preemption = preemption

    def after_step(self):
        self.preemption.last_complete = self.trainer.iter
        if not self.preemption._previous:  # no handler installed (not the main thread)
            return
        signum = self.preemption._requested()  # noted during the step (by any process)
        if signum:
            self.preemption.stopping = True
            raise _Interrupted(signum, in_step=True)
        self.preemption.interruptible = True

    def after_train(self):
        # The final evaluation, unless the run is stopping already (after_train runs then too);
        # a signal noted during the last step was handled by the PreemptionHook's after_step.
        if self.preemption._previous and not self.preemption.stopping:
            self.preemption.interruptible = True


# The hooks whose handlers are installed in this process, in the order they were installed.
_ACTIVE: List[PreemptionHook] = []
_FORKING = threading.local()  # the forking thread's signal mask, restored after the fork


def _before_fork() -> None:
    """A process forked during training (a data-loading worker, a pool's process: Detectron2's
    Cityscapes loader forks one) must keep SIGTERM's usual effect, or ``Pool.terminate`` would
    wait for it forever. A signal that reached it between the fork and CPython's reinitialisation
    would be caught by the inherited handler and then dropped (CPython clears pending signals in
    the child); so SIGTERM and SIGINT are blocked around the fork, and the child restores the
    handlers the process had before training, then unblocks them (a pending one then acts)."""
    if _ACTIVE:
        _FORKING.mask = signal.pthread_sigmask(signal.SIG_BLOCK, PreemptionHook.SIGNALS)


def _after_fork_in_parent() -> None:
    mask = getattr(_FORKING, "mask", None)
    if mask is not None:
        _FORKING.mask = None
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _after_fork_in_child() -> None:
    mask = getattr(_FORKING, "mask", None)
    if _ACTIVE:
        for s, handler in _ACTIVE[0]._previous.items():  # the process's own, before any hook
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        _ACTIVE.clear()
    if mask is not None:
        _FORKING.mask = None
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


def preemption_hooks(checkpointer):
    """The two hooks of a preemptible run: ``(first, last)``, to register first and last."""
    last = PreemptionHook(checkpointer)
    return InterruptibleHooks(last), last


@contextlib.contextmanager
def stopping_on_signals(trainer, preemption: PreemptionHook):
    """Around ``trainer.train()``: a signal that stopped the run between two steps or in its final
    evaluation saves the last complete iteration (unless the run had finished all of them: its
    final checkpoint is there) and ends it with :class:`Preempted` (status 128 + the signal)."""
    try:
        yield
    except Exception as e:
        if not preemption.signal:
            raise
        # The signal reached the whole process group: the data-loading workers died of it, and
        # their death was reported between two steps (PyTorch's SIGCHLD handler raises anywhere).
        iteration = preemption.last_complete
        what = "nothing (no iteration had completed in this run)"
        if iteration is not None and comm.is_main_process():
            saved = save_as_iteration(trainer, preemption.checkpointer, iteration)
            what = f"{saved}.pth, its state after iteration {iteration},"
        logger.warning(
            f"Received {signal.Signals(preemption.signal).name}; then the run failed "
            f"({type(e).__name__}: {str(e)[:200]}), as the signal's other processes ended: "
            f"saved {what} in {preemption.checkpointer.save_dir}; continue with --resume."
        )
        raise Preempted(128 + preemption.signal) from None
    except _Interrupted as e:
        name = signal.Signals(e.signum).name
        if trainer.iter >= trainer.max_iter:  # all iterations done: in the final evaluation
            logger.warning(
                f"Received {name} during the final evaluation, which was stopped; the training "
                f"had finished and saved its last checkpoint in {preemption.checkpointer.save_dir}"
                " (evaluate it with --eval-only)."
            )
        else:  # between two steps: the iteration trainer.iter is complete
            iteration = trainer.iter
            what = "nothing (this process does not save)"
            if comm.is_main_process():
                what = f"{save_as_iteration(trainer, preemption.checkpointer, iteration)}.pth"
            when = f"at iteration {iteration}" + (
                ""
                if e.in_step
                else " (after its training step: what ran after it, an evaluation, checkpoints or "
                "writers, was stopped)"
            )
            logger.warning(
                f"Received {name} {when}: saved {what} in {preemption.checkpointer.save_dir}; "
                "continue with --resume."
            )
        raise Preempted(128 + e.signum) from None
    finally:
        preemption.after_train()
        preemption.restore_sigchld()


def _device(trainer) -> torch.device:
    model = getattr(trainer, "model", None) or getattr(trainer._trainer, "model", None)
    return next(model.parameters()).device


def preemption_hook_of(trainer) -> Optional[PreemptionHook]:
    """The trainer's :class:`PreemptionHook` (None without one)."""
    for hook in getattr(trainer, "_hooks", ()):
        if isinstance(hook, PreemptionHook):
            return hook
    return None


def save_as_iteration(trainer, checkpointer, iteration: int) -> str:
    """Save the trainer's state as that after ``iteration`` (``model_<iteration>.pth``, with the
    trainer's own iteration set to it while saving, so that ``--resume`` continues after it);
    returns the checkpoint's name. Only the main process writes (the checkpointer's rule)."""
    inner = getattr(trainer, "_trainer", None)
    current = trainer.iter
    trainer.iter = iteration
    if inner is not None:
        inner.iter = iteration
    try:
        name = f"model_{iteration:07d}"
        checkpointer.save(name, iteration=iteration)
    finally:
        trainer.iter = current
        if inner is not None:
            inner.iter = current
    return name

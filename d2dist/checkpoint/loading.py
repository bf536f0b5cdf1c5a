"""Loading the weights of a run: the one way every run starts (a new run, ``--resume``,
``--eval-only``), for plain models and Distillers, yacs and LazyConfig alike."""

import contextlib
import logging
import os
import traceback
from typing import Optional

from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..errors import ConfigError
from ..modeling import Distiller
from .checkpointers import AtomicCheckpointer, StudentCheckpointer, UnreadableCheckpoint
from .record import check_resume, run_record, saved_record
from .schedule import schedule_from_config, schedulers_of

__all__ = ["explained_load", "initialise_student", "resume_or_load"]

logger = logging.getLogger(__name__)


def _from_loading_state(error: BaseException) -> bool:
    """Whether ``error`` was raised by an optimizer's or LR scheduler's ``load_state_dict`` (the
    state read from a checkpoint does not fit them), not by anything else."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].filename.replace(os.sep, "/").endswith(
        ("torch/optim/optimizer.py", "torch/optim/lr_scheduler.py")
    )


@contextlib.contextmanager
def explained_load(checkpointer: DetectionCheckpointer, weights: str, resume: bool):
    """Around a ``resume_or_load``: yields whether it resumes (``resume`` and a checkpoint in
    the save directory), and turns the two failures that are the user's to fix into a
    :class:`ConfigError` naming the file: one that cannot be read (missing, truncated, not a
    checkpoint: :class:`~d2dist.checkpoint.UnreadableCheckpoint`, raised where the file is read),
    and an optimizer or scheduler state that does not fit the one of this config. Anything else
    (out of memory, a bug) propagates as it is."""
    resuming = resume and checkpointer.has_checkpoint()
    what = "the last checkpoint of OUTPUT_DIR" if resuming else "MODEL.WEIGHTS"
    try:
        yield resuming
    except UnreadableCheckpoint as e:
        raise ConfigError(
            f"could not load {what} ({e.path!r}): {type(e.cause).__name__}: {e.cause}. Give a "
            "checkpoint written by Detectron2 / d2dist (.pth) or a model-zoo file (.pkl)"
            + (
                "; or delete that file and the last_checkpoint entry to resume from an "
                "earlier checkpoint."
                if resuming
                else "."
            )
        ) from e
    except (ValueError, KeyError) as e:
        if isinstance(e, ConfigError) or not _from_loading_state(e):
            raise
        path = checkpointer.get_checkpoint_file() if resuming else weights
        raise ConfigError(
            f"{what} ({path!r}) was read, but its state does not fit the model and optimizer "
            f"built from this config ({type(e).__name__}: {e}). "
            + (
                "The checkpoint is valid: resume with the run's own config (its config.yaml); "
                "a changed model needs a new run (MODEL.WEIGHTS of that checkpoint starts its "
                "student from it)."
                if resuming
                else "Give a checkpoint of this model."
            )
        ) from e


def resume_or_load(
    checkpointer, weights: str, *, resume: bool, cfg=None, allow_config_change: bool = False
) -> dict:
    """``checkpointer.resume_or_load(weights, resume=resume)`` for plain models and Distillers:
    the one way d2dist starts, resumes or evaluates a run, and a drop-in for a project's own
    training loop (upstream ``lazyconfig_train_net.py``, CenterNet2's ``train_net.py``).

    - A Distiller's teacher is loaded (strictly, from its own source, once).
    - Resuming (``resume`` and a checkpoint in the checkpointer's directory) restores the run:
      the model (a Distiller's student and terms) and the checkpointer's other checkpointables
      (optimizer, scheduler, trainer). The LR schedulers keep the settings built from this run's
      config (:func:`~d2dist.checkpoint.schedule.schedule_from_config`), so a larger
      ``SOLVER.MAX_ITER`` extends a run with any scheduler.
    - A new run initialises a Distiller's *student* from ``weights`` (an ImageNet backbone, a
      plain student checkpoint, a Distiller checkpoint), then copies ``MODEL.DISTILL.INHERIT``
      from the teacher; a plain model loads ``weights`` (a Distiller checkpoint: its student).
    - With an :class:`AtomicCheckpointer` and ``cfg``, the checkpoints record the run
      (:mod:`.record`) and a resume must be of the same run, loaded strictly, unless
      ``allow_config_change`` (then the differences are logged and the load is lenient).
    - Evaluation: an :class:`~d2dist.checkpoint.EvalCheckpointer` of the evaluated model.

    A file that cannot be read or does not fit is a :class:`ConfigError` naming it. Returns what
    the checkpointer's ``resume_or_load`` returns (the checkpoint's other entries, e.g.
    ``iteration``; ``{}`` for a new Distiller run).
    """
    model = checkpointer.model  # unwrapped from DDP by the checkpointer
    distiller = isinstance(model, Distiller)
    atomic = isinstance(checkpointer, AtomicCheckpointer)
    with explained_load(checkpointer, weights, resume) as resuming:
        if distiller:
            model.load_teacher()
        if atomic and cfg is not None:
            checkpointer.record = run_record(cfg, model.teacher_wrapper if distiller else None)
        if resuming:  # only the same run, and its own checkpoint strictly
            last = checkpointer.get_checkpoint_file()
            if atomic and checkpointer.record is not None:
                check_resume(saved_record(last), checkpointer.record, last, allow_config_change)
                checkpointer.strict = not allow_config_change  # else: the changes were logged
            schedulers = schedulers_of(checkpointer.checkpointables.values())
            try:
                with schedule_from_config(schedulers, _max_iter(cfg)):
                    return checkpointer.resume_or_load(weights, resume=True)
            finally:
                if atomic:
                    checkpointer.strict = False
        if distiller:
            key = "MODEL.WEIGHTS" if cfg is None or "SOLVER" in cfg else "train.init_checkpoint"
            initialise_student(model, weights, key)
            return {}
        return checkpointer.resume_or_load(weights, resume=False)


def _max_iter(cfg) -> Optional[int]:
    if cfg is None:
        return None
    if "SOLVER" in cfg:
        return cfg.SOLVER.MAX_ITER
    return cfg.train.max_iter if "train" in cfg else None


def initialise_student(distiller: nn.Module, weights: str, key: str) -> None:
    """A new run's start (not a resume): ``weights`` (the setting ``key``; an ImageNet backbone,
    a plain student checkpoint or a Distiller checkpoint) into the Distiller's student only,
    then the parameters the Distiller inherits from its (loaded) teacher
    (``MODEL.DISTILL.INHERIT``)."""
    if weights:
        StudentCheckpointer(distiller.student).load(weights)
    else:
        logger.info(f"{key} is empty: the student starts from its random init.")
    distiller.inherit_from_teacher()

"""d2dist's checkpointers: Detectron2's ``DetectionCheckpointer``, extended through its own
methods (``_load_file``, ``_load_model``, ``_log_incompatible_keys``, ``save``,
``tag_last_checkpoint``).

- :class:`StudentCheckpointer`: a plain model (a Distiller's student) given a Distiller checkpoint
  loads its student's entries.
- :class:`AtomicCheckpointer`: a training run's; a checkpoint appears only once completely
  written, records the run, and loads the run's own checkpoint strictly when resuming.
- :class:`EvalCheckpointer`: evaluation's and export's; strict, and never nothing.

A file that cannot be read at all is an :class:`UnreadableCheckpoint` raised where it is read
(:meth:`_load_file`), so that callers can name the file without catching anything else.
"""

import logging
import os
from typing import List, Optional

from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _strip_prefix_if_present

from ..errors import (
    UNREADABLE_CHECKPOINT,
    ConfigError,
    RunFault,
    incompatible_keys,
    is_write_failure,
    os_error_cause,
)
from ..modeling import Distiller
from ..modeling.meta_arch.state import split_distiller_state

__all__ = [
    "AtomicCheckpointer",
    "EvalCheckpointer",
    "StudentCheckpointer",
    "UnreadableCheckpoint",
    "remove_partials",
]

_PARTIAL = ".partial"
logger = logging.getLogger(__name__)


class UnreadableCheckpoint(Exception):
    """A checkpoint file that could not be read (missing, cut short, not a checkpoint); ``cause``
    is what reading it raised. Raised by the checkpointers' ``_load_file`` only, so that catching
    it never hides an error of the model or the optimizer loading what was read."""

    def __init__(self, path: str, cause: BaseException):
        super().__init__(f"{path}: {type(cause).__name__}: {cause}")
        self.path, self.cause = path, cause


def remove_partials(save_dir: str) -> List[str]:
    """Delete what interrupted saves left in ``save_dir`` (``*.partial.pth``, the tag's
    ``last_checkpoint.partial``); returns their names. Only for a directory this run owns."""
    removed = []
    if save_dir and os.path.isdir(save_dir):
        for name in os.listdir(save_dir):
            if name.endswith(_PARTIAL + ".pth") or name == "last_checkpoint" + _PARTIAL:
                try:
                    os.remove(os.path.join(save_dir, name))
                    removed.append(name)
                except FileNotFoundError:
                    pass
    if removed:
        logging.getLogger(__name__).info(
            f"Removed what interrupted saves left in {save_dir}: {removed}"
        )
    return removed


class StudentCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, for a plain model (e.g. a Distiller's student) that may be given
    a Distiller checkpoint: then its student's entries are loaded (either layout, see
    :class:`~d2dist.modeling.Distiller`) and the Distiller's own modules (the terms' adapters)
    left out, with a log line instead of a warning about each of them. Plain student checkpoints
    and Detectron2 / Caffe2 model-zoo files (with Detectron2's name matching) load as in
    Detectron2. A Distiller model loads any of these itself (its ``load_state_dict``)."""

    def load(self, path: str, checkpointables=None):
        if path:  # fvcore asserts that the file exists: here, a file that cannot be read
            try:
                local = self.path_manager.get_local_path(path)  # a URL: downloaded (cached)
            except OSError as e:
                raise UnreadableCheckpoint(path, e) from e
            if not os.path.isfile(local):
                raise UnreadableCheckpoint(path, FileNotFoundError(f"checkpoint {local} not found"))
        return super().load(path, checkpointables)

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except UNREADABLE_CHECKPOINT as e:
            raise UnreadableCheckpoint(filename, e) from e

    def _load_model(self, checkpoint):
        state = checkpoint["model"]
        _strip_prefix_if_present(state, "module.")  # saved from a DDP-wrapped model
        if not isinstance(self.model, Distiller) and not hasattr(self.model, "terms"):
            student, own = split_distiller_state(state)
            if own:
                logger.info(f"Loading the student of a Distiller checkpoint (leaving out {own})")
                checkpoint["model"] = student
        return super()._load_model(checkpoint)


class AtomicCheckpointer(StudentCheckpointer):
    """Detectron2's checkpointer, but a checkpoint appears only once it is completely written,
    records what it was trained with, and loads a run's own checkpoint strictly. A plain model
    given a Distiller checkpoint loads its student (:class:`StudentCheckpointer`).

    - Each checkpoint is written as ``<name>.partial.pth`` and renamed to ``<name>.pth`` (an
      atomic rename on one file system) before ``last_checkpoint`` is updated, itself by an atomic
      rename; a run killed while saving leaves at most a ``.partial`` file, which the next save
      removes, and resumes from the previous complete checkpoint.
    - ``record`` (set by the trainer: :func:`d2dist.checkpoint.record.run_record`) is saved in every
      checkpoint as its ``d2dist`` entry (:func:`d2dist.checkpoint.record.saved_record` reads it).
    - With ``strict`` (set when resuming), a checkpoint that does not fit the model (missing,
      unexpected or mis-shaped keys) is a :class:`ConfigError` listing them, never a warning.
    """

    record: Optional[dict] = None
    strict: bool = False

    def save(self, name: str, **kwargs) -> None:
        """Detectron2's save, atomic; a failure to write (a full disk, a read-only directory) is
        a :class:`~d2dist.errors.RunFault` naming the file, the cause and the last complete
        checkpoint, which stays as it was."""
        final = name
        if self.save_dir and os.path.isdir(self.save_dir) and self.save_to_disk:
            remove_partials(self.save_dir)
            name += _PARTIAL
        if self.record is not None:
            kwargs["d2dist"] = self.record
        try:
            super().save(name, **kwargs)
        except Exception as e:
            if not (self.save_to_disk and is_write_failure(e)):
                raise
            cause = os_error_cause(e, os.path.join(self.save_dir, name + ".pth"))
            remove_partials(self.save_dir)
            last = self.get_checkpoint_file() if self.has_checkpoint() else ""
            kept = (
                f"the last complete checkpoint, {last}, is as it was (last_checkpoint names it)"
                if last
                else "no checkpoint of this run was complete yet"
            )
            raise RunFault(
                f"could not write the checkpoint {os.path.join(self.save_dir, final + '.pth')}: "
                f"{cause}. The run stopped; {kept}. Free space (or fix the "
                "directory) and continue with --resume."
            ) from e

    def _log_incompatible_keys(self, incompatible) -> None:
        if not self.strict:
            return super()._log_incompatible_keys(incompatible)
        problems = incompatible_keys(incompatible)
        if problems:
            raise ConfigError(
                f"the checkpoint being resumed does not fit the model of this config "
                f"({'; '.join(problems)}). Resume with the run's own config (its OUTPUT_DIR's "
                "config.yaml), or start a new run in another OUTPUT_DIR."
            )

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not os.path.isdir(self.save_dir):  # a remote directory: Detectron2's own way
            return super().tag_last_checkpoint(last_filename_basename)
        partial = _PARTIAL + ".pth"
        if last_filename_basename.endswith(partial):
            final = last_filename_basename[: -len(partial)] + ".pth"
            os.replace(
                os.path.join(self.save_dir, last_filename_basename),
                os.path.join(self.save_dir, final),
            )
            last_filename_basename = final
        tag = os.path.join(self.save_dir, "last_checkpoint")
        with open(tag + _PARTIAL, "w") as f:
            f.write(last_filename_basename)
        os.replace(tag + _PARTIAL, tag)


class EvalCheckpointer(StudentCheckpointer):
    """Loads the weights an evaluation or an export runs on: strictly (a checkpoint that does not
    fit the model is a :class:`ConfigError` naming the file, the model and the fix) and never
    nothing (no file to load is an error too). The model given is the one evaluated (a plain
    model, or a Distiller's student); a Distiller checkpoint gives its student's entries (that is
    how a distilled run is evaluated, with either config), a plain checkpoint its own."""

    def load(self, path: str, checkpointables=None):
        if not path:
            raise ConfigError(
                f"there are no weights to evaluate: no MODEL.WEIGHTS and no checkpoint in "
                f"{self.save_dir!r}. Pass MODEL.WEIGHTS (train.init_checkpoint) or --resume with "
                "the OUTPUT_DIR of a run that saved checkpoints."
            )
        self._path = path
        return super().load(path, checkpointables)

    def _log_incompatible_keys(self, incompatible) -> None:
        problems = incompatible_keys(incompatible)
        if problems:
            raise ConfigError(
                f"{getattr(self, '_path', 'the checkpoint')!r} does not fit the "
                f"{type(self.model).__name__} of this config ({'; '.join(problems)}), so its "
                "weights would not be the ones evaluated. Evaluate a run's checkpoint with that "
                "run's own config (its OUTPUT_DIR/config.yaml), a distilled student exported by "
                "tools/export_student.py with its student.yaml, or a plain model's with its own "
                "config."
            )

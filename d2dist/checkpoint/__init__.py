"""Checkpoints: d2dist's checkpointers (atomic saves, strict loads, a Distiller checkpoint's
student), loading the weights of a run (new run, ``--resume``, ``--eval-only``) and the run record
that makes ``--resume`` continue the same run."""

from .checkpointers import (
    AtomicCheckpointer,
    EvalCheckpointer,
    StudentCheckpointer,
    UnreadableCheckpoint,
    remove_partials,
)
from .loading import explained_load, initialise_student, resume_or_load
from .record import config_change_allowed, run_record, saved_record

__all__ = [
    "AtomicCheckpointer",
    "EvalCheckpointer",
    "StudentCheckpointer",
    "UnreadableCheckpoint",
    "config_change_allowed",
    "explained_load",
    "initialise_student",
    "remove_partials",
    "resume_or_load",
    "run_record",
    "saved_record",
]

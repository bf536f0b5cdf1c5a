"""Training and evaluation: d2dist's trainers and entry points.

Layers, each importing only those below it: the run directory (``rundir``, ``runlock``), faults
(``faults``, ``steps``), ``subnormals``, the configs seen as the student's (``configs``) and data
checks; then the trainer (``trainer``, with ``loaders``, ``optim``, ``teacher_eval``); then
export and measurements (``export``, ``benchmark``, ``loss_scale``); then what every run shares
(``run``); on top the yacs (``defaults``) and LazyConfig (``lazy``) entry points. See
docs/architecture.md.
"""

from .configs import data_config, for_evaluation, student_config
from .defaults import argument_parser, load_config, setup, train_or_eval
from .export import export_lazy_student, export_student, run_checkpoint
from .run import launch_cli
from .subnormals import flush_subnormals
from .trainer import DistillationMixin, Trainer, create_ddp_model

__all__ = [
    "DistillationMixin",
    "Trainer",
    "argument_parser",
    "create_ddp_model",
    "data_config",
    "export_lazy_student",
    "export_student",
    "flush_subnormals",
    "for_evaluation",
    "launch_cli",
    "load_config",
    "run_checkpoint",
    "setup",
    "student_config",
    "train_or_eval",
]

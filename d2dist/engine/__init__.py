"""Training and evaluation entry points."""

from .defaults import argument_parser, evaluate_teacher, launch_cli, setup, train_or_eval
from .export import export_student, for_evaluation, student_config
from .subnormals import flush_subnormals
from .trainer import (
    DistillationMixin,
    DistillTrainer,
    StudentCheckpointer,
    Trainer,
    create_ddp_model,
    data_config,
    resume_or_load,
    trainer_class,
)

__all__ = [
    "argument_parser",
    "create_ddp_model",
    "data_config",
    "evaluate_teacher",
    "DistillationMixin",
    "DistillTrainer",
    "StudentCheckpointer",
    "Trainer",
    "export_student",
    "flush_subnormals",
    "for_evaluation",
    "launch_cli",
    "resume_or_load",
    "setup",
    "student_config",
    "train_or_eval",
    "trainer_class",
]

"""Training and evaluation entry points."""

from .defaults import argument_parser, evaluate_teacher, launch_cli, setup, train_or_eval
from .export import export_student, student_config
from .subnormals import flush_subnormals
from .trainer import (
    DistillationMixin,
    DistillTrainer,
    StudentCheckpointer,
    Trainer,
    create_ddp_model,
    trainer_class,
)

__all__ = [
    "argument_parser",
    "create_ddp_model",
    "evaluate_teacher",
    "DistillationMixin",
    "DistillTrainer",
    "StudentCheckpointer",
    "Trainer",
    "export_student",
    "flush_subnormals",
    "launch_cli",
    "setup",
    "student_config",
    "train_or_eval",
    "trainer_class",
]

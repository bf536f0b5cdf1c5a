"""Training and evaluation entry points."""

from .defaults import launch_cli, setup, train_or_eval
from .trainer import Trainer

__all__ = ["Trainer", "launch_cli", "setup", "train_or_eval"]

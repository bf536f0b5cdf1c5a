"""Distillation losses: pure functions and the registered terms that use them."""

from .functional import binary_kd_loss, kd_loss, mimic_loss
from .terms import DISTILL_LOSS_REGISTRY, KD, DistillTerm, Mimic, build_distill_terms, register_term

__all__ = [
    "DISTILL_LOSS_REGISTRY",
    "DistillTerm",
    "KD",
    "Mimic",
    "binary_kd_loss",
    "build_distill_terms",
    "kd_loss",
    "mimic_loss",
    "register_term",
]

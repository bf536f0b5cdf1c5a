"""Earlier home of the distillation terms, kept for imports written against it: the terms now live
in :mod:`d2dist.modeling.terms` (one file per method) and the public loss functions in
:mod:`d2dist.losses`."""

from ..terms import (
    DISTILL_TERM_REGISTRY,
    KD,
    MIMIC,
    DistillTerm,
    build_distill_terms,
    register_term,
)
from .functional import binary_kd_loss, kd_loss, mimic_loss

DISTILL_LOSS_REGISTRY = DISTILL_TERM_REGISTRY
Mimic = MIMIC

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

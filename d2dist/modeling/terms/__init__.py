"""Distillation terms: one file per method (its pure loss function and its registered module).

A term is registered under its class name (what ``MODEL.DISTILL.LOSSES`` lists) and configured by
``MODEL.DISTILL.<name in capitals>``; see :data:`DISTILL_TERM_REGISTRY` for the contract.
"""

from . import (  # noqa: F401  registers the built-in terms
    crosskd,
    cwd,
    dist,
    dist_feature,
    fgd,
    kd,
    mgd,
    mimic,
    pkd,
    reviewkd,
)
from .base import (
    DISTILL_TERM_REGISTRY,
    AdaptedFeatureTerm,
    DistillTerm,
    TermOutput,
    build_distill_terms,
    register_term,
)
from .crosskd import CrossKD
from .cwd import CWD
from .dist import DIST
from .dist_feature import DIST_FEATURE
from .fgd import FGD
from .kd import KD
from .mgd import MGD
from .mimic import MIMIC
from .pkd import PKD
from .reviewkd import ReviewKD

__all__ = [
    "CWD",
    "CrossKD",
    "DIST",
    "DISTILL_TERM_REGISTRY",
    "DIST_FEATURE",
    "AdaptedFeatureTerm",
    "DistillTerm",
    "FGD",
    "KD",
    "MGD",
    "MIMIC",
    "PKD",
    "ReviewKD",
    "TermOutput",
    "build_distill_terms",
    "register_term",
]

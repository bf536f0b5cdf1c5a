"""Distillation terms: one file per method (its pure loss function, its registered module and its
config namespace with the defaults), DIST+ teacher acclimation, and the base term.

A term is registered under its class name (what ``MODEL.DISTILL.LOSSES`` lists) and configured by
``MODEL.DISTILL.<name in capitals>``, which it declares itself; see :mod:`.base` for the contract.
The pure loss functions (unweighted, 0-dim float32; maths: docs/methods.md) are exported here too.
"""

from . import (  # noqa: F401  registers the built-in terms and their namespaces
    acclimation,
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
    TermOptions,
    TermOutput,
    build_distill_terms,
    register_term,
)
from .crosskd import CrossKD, quality_focal_kd_loss
from .cwd import CWD, cwd_loss
from .dist import DIST, dist_loss, relation_loss
from .dist_feature import DIST_FEATURE, dist_feature_loss
from .fgd import FGD, fgd_loss, fgd_masks
from .kd import KD, binary_kd_loss, kd_loss
from .mgd import MGD, mgd_loss
from .mimic import MIMIC, mimic_loss
from .pkd import PKD, pkd_loss
from .reviewkd import ReviewKD, hcl_loss

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
    "TermOptions",
    "TermOutput",
    "binary_kd_loss",
    "build_distill_terms",
    "cwd_loss",
    "dist_feature_loss",
    "dist_loss",
    "fgd_loss",
    "fgd_masks",
    "hcl_loss",
    "kd_loss",
    "mgd_loss",
    "mimic_loss",
    "pkd_loss",
    "quality_focal_kd_loss",
    "register_term",
    "relation_loss",
]

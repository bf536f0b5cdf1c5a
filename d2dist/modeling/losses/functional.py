"""Earlier home of the loss functions, kept for imports written against it: each now lives beside
its term in :mod:`d2dist.modeling.terms`, and :mod:`d2dist.losses` is the public API."""

from ..terms.common import float32_loss as _float32  # noqa: F401
from ..terms.cwd import cwd_loss
from ..terms.dist import dist_loss, relation_loss
from ..terms.dist_feature import dist_feature_loss
from ..terms.kd import binary_kd_loss, kd_loss
from ..terms.mimic import mimic_loss
from ..terms.pkd import pkd_loss
from ..terms.reviewkd import hcl_loss

__all__ = [
    "binary_kd_loss",
    "cwd_loss",
    "dist_feature_loss",
    "dist_loss",
    "hcl_loss",
    "kd_loss",
    "mimic_loss",
    "pkd_loss",
    "relation_loss",
]

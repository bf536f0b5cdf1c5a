"""d2dist's public functional loss API: the pure function of every term (maths: docs/methods.md).

Each loss function returns an unweighted 0-dim float32 tensor, differentiable in the student
argument, with the teacher side detached.
"""

from .modeling.terms.crosskd import quality_focal_kd_loss
from .modeling.terms.cwd import cwd_loss
from .modeling.terms.dist import dist_loss, relation_loss
from .modeling.terms.dist_feature import dist_feature_loss
from .modeling.terms.fgd import fgd_loss, fgd_masks
from .modeling.terms.kd import binary_kd_loss, kd_loss
from .modeling.terms.mgd import mgd_loss
from .modeling.terms.mimic import mimic_loss
from .modeling.terms.pkd import pkd_loss
from .modeling.terms.reviewkd import hcl_loss

__all__ = [
    "binary_kd_loss",
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
    "relation_loss",
]

"""d2dist's public functional loss API (see :mod:`d2dist.modeling.losses.functional`).

Each function returns an unweighted 0-dim float32 tensor, differentiable in the student
argument, with the teacher side detached.
"""

from .modeling.losses.functional import (
    binary_kd_loss,
    cwd_loss,
    dist_feature_loss,
    dist_loss,
    hcl_loss,
    kd_loss,
    mimic_loss,
    pkd_loss,
)

__all__ = [
    "binary_kd_loss",
    "cwd_loss",
    "dist_feature_loss",
    "dist_loss",
    "hcl_loss",
    "kd_loss",
    "mimic_loss",
    "pkd_loss",
]

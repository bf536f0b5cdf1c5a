"""MIMIC: feature mimicking (FitNets, Romero et al., ICLR 2015)."""

import torch.nn.functional as F
from torch import Tensor

from .base import AdaptedFeatureTerm, feature_namespace, register_term
from .common import check_pair, float32_loss

__all__ = ["MIMIC", "mimic_loss"]


@float32_loss
def mimic_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Feature mimicking: ``mean((s - t)^2)`` over all elements of one level.

    The student feature is expected after its adapter (same shape as the teacher's).
    """
    check_pair(student_feat, teacher_feat, "mimic_loss")
    s, t = student_feat.float(), teacher_feat.detach().float()
    if s.numel() == 0:
        return s.sum() * 0.0
    return F.mse_loss(s, t)


@register_term
class MIMIC(AdaptedFeatureTerm):
    """Feature mimicking (e.g. Romero et al., FitNets, ICLR 2015): MSE between adapted student
    and teacher features, summed over ``IN_FEATURES``. Config: ``MODEL.DISTILL.MIMIC``."""

    @classmethod
    def config_namespace(cls):
        return feature_namespace(1.0, ["p2", "p3", "p4", "p5", "p6"])

    def level_loss(self, student, teacher):
        return mimic_loss(student, teacher)

"""PKD: Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient", NeurIPS 2022."""

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import AdaptedFeatureTerm, feature_namespace, register_term
from .common import check_pair, float32_loss

__all__ = ["PKD", "pkd_loss"]


@float32_loss
def pkd_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
    Correlation Coefficient", NeurIPS 2022; one level.

    The student is resized bilinearly to the teacher's size when they differ; each channel of
    both is standardised over all N*H*W positions (unbiased std, 1e-6 added to the std); the
    loss is ``mean((s_hat - t_hat)^2) / 2``.
    """
    if student_feat.dim() != 4 or teacher_feat.dim() != 4:
        raise ValueError(
            f"pkd_loss: features must be (N, C, H, W), got {tuple(student_feat.shape)} and "
            f"{tuple(teacher_feat.shape)}"
        )
    s, t = student_feat.float(), teacher_feat.detach().float()
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    check_pair(s, t, "pkd_loss (after resizing the student)")
    if s.numel() == 0:
        return s.sum() * 0.0

    def standardise(x: Tensor) -> Tensor:
        rows = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N*H*W)
        mean = rows.mean(dim=1, keepdim=True)
        std = rows.std(dim=1, keepdim=True) if rows.shape[1] > 1 else torch.zeros_like(mean)
        return (rows - mean) / (std + 1e-6)

    return F.mse_loss(standardise(s), standardise(t)) / 2


@register_term
class PKD(AdaptedFeatureTerm):
    """Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
    Correlation Coefficient", NeurIPS 2022: per-level MSE of per-channel standardised features,
    summed over levels. The paper pairs FPNs of equal width; for other widths ``ADAPTER: auto``
    maps the student with a 1x1 conv first (d2dist's addition). Config: ``MODEL.DISTILL.PKD``.
    """

    @classmethod
    def config_namespace(cls):
        # Reference weights: 6 for Faster R-CNN on p2-p5, 10 for RetinaNet / FCOS on p3-p6. The
        # paper compares FPNs of equal width (ADAPTER "auto" is then the identity); for other
        # widths "auto" maps the student with a 1x1 conv first (d2dist's addition, not in the
        # paper).
        return feature_namespace(6.0, ["p2", "p3", "p4", "p5"])

    def level_loss(self, student, teacher):
        return pkd_loss(student, teacher)

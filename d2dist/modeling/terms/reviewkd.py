"""ReviewKD: Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021."""

import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from torch import Tensor, nn

from ...errors import ConfigError
from ..adapters import build_distill_module
from ..targets import TargetRequest, Targets, check_feature_names
from .base import DistillTerm, TermOutput, check_levels, register_term, sum_levels
from .common import check_pair, float32_loss

__all__ = ["ReviewKD", "hcl_loss"]


@float32_loss
def hcl_loss(student_feats, teacher_feats) -> Tensor:
    """Chen et al., "Distilling Knowledge via Knowledge Review" (ReviewKD), CVPR 2021: the
    hierarchical context loss, summed over levels.

    Per level: ``l = mse(fs, ft)`` with weight 1; for p in (4, 2, 1), skipping ``p >= h`` (the
    student's height at that level), the weight halves and ``mse`` of both maps adaptively
    average-pooled to p x p is added with it; the level's loss is ``l`` over the sum of weights.
    """
    student_feats, teacher_feats = list(student_feats), list(teacher_feats)
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(
            f"hcl_loss: {len(student_feats)} student and {len(teacher_feats)} teacher levels; "
            "give the same non-zero number"
        )
    total = None
    for i, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
        if fs.dim() != 4:
            raise ValueError(f"hcl_loss: level {i} must be (N, C, H, W), got {tuple(fs.shape)}")
        check_pair(fs, ft, f"hcl_loss level {i}")
        fs, ft = fs.float(), ft.detach().float()
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for p in (4, 2, 1):
            if p >= fs.shape[2]:
                continue
            weight /= 2.0
            pooled = F.mse_loss(F.adaptive_avg_pool2d(fs, p), F.adaptive_avg_pool2d(ft, p))
            loss = loss + weight * pooled
            weights += weight
        total = loss / weights if total is None else total + loss / weights
    return total


@register_term
class ReviewKD(DistillTerm):
    """Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021.

    The student's levels pass through the ABF chain (deep to shallow,
    :class:`~d2dist.modeling.adapters.ReviewKDAdapter`) and each output is compared with the
    teacher's level by the hierarchical context loss; level losses are summed.
    Config: ``MODEL.DISTILL.REVIEWKD``.
    """

    @classmethod
    def config_namespace(cls):
        # Reference weights (COCO Faster R-CNN): R101->R18 1.2, R101->R50 1.0.
        c = CN()
        c.WEIGHT = 1.0
        c.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        c.MID_CHANNELS = 256  # the width of the ABF blocks
        c.NORM = "BN"  # after the ABF convolutions, as in the authors' code
        return c

    @configurable
    def __init__(self, *, weight: float, adapter: nn.Module):
        """
        Args:
            weight: the term's weight in the total loss.
            adapter: the ABF chain (a :class:`~d2dist.modeling.adapters.ReviewKDAdapter`).
        """
        super().__init__(weight=weight)
        self.adapter = adapter

    @classmethod
    def from_config(cls, cfg, student, teacher):
        if not cfg.IN_FEATURES:
            raise ConfigError("MODEL.DISTILL.REVIEWKD.IN_FEATURES is empty; name the levels")
        check_levels(cfg.IN_FEATURES, "REVIEWKD")
        width = cfg.MID_CHANNELS
        if not (isinstance(width, int) and not isinstance(width, bool) and width >= 1):
            raise ConfigError(
                f"MODEL.DISTILL.REVIEWKD.MID_CHANNELS={width!r}: the ABF width must be an int >= 1 "
                "(a number of channels, e.g. 256)."
            )
        s_shapes, t_shapes = check_feature_names(
            cfg.IN_FEATURES, student, teacher, "MODEL.DISTILL.REVIEWKD.IN_FEATURES"
        )
        adapter = build_distill_module(
            "ReviewKDAdapter",
            student_shapes=s_shapes,
            teacher_shapes=t_shapes,
            in_features=list(cfg.IN_FEATURES),
            mid_channels=cfg.MID_CHANNELS,
            norm=cfg.NORM,
        )
        return {"weight": cfg.WEIGHT, "adapter": adapter}

    def request(self) -> TargetRequest:
        return TargetRequest(features=tuple(self.adapter.order))

    def forward(self, targets: Targets) -> TermOutput:
        outputs = self.adapter({n: targets.features[n][0] for n in self.adapter.order})
        parts = {n: hcl_loss([outputs[n]], [targets.features[n][1]]) for n in self.adapter.order}
        return TermOutput(sum_levels(parts), parts)

"""CrossKD: Wang et al., "CrossKD: Cross-Head Knowledge Distillation for Object Detection",
CVPR 2024, for dense detectors (RetinaNet, FCOS). Implemented from the maths in docs/methods.md."""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.modeling.meta_arch.fcos import FCOS
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Boxes
from fvcore.nn import giou_loss
from torch import Tensor, nn

from ...errors import ConfigError
from ..targets import TargetRequest, Targets
from .base import DistillTerm, TermOutput, register_term
from .common import check_pair, float32_loss

__all__ = ["CrossKD", "box_iou_aligned", "quality_focal_kd_loss"]


@float32_loss
def quality_focal_kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, weight: Tensor, beta: float = 1.0
) -> Tensor:
    """CrossKD's classification KD for sigmoid classifiers, summed (not averaged):
    ``sum w * BCEwithlogits(s, sigmoid(t)) * |sigmoid(s) - sigmoid(t)|^beta``.

    ``student_logits``, ``teacher_logits``: (R, K); ``weight``: (R,) per row (0 drops a row).
    """
    check_pair(student_logits, teacher_logits, "quality_focal_kd_loss")
    s, t = student_logits.float(), teacher_logits.detach().float()
    p_t = torch.sigmoid(t)
    bce = F.binary_cross_entropy_with_logits(s, p_t, reduction="none")
    focal = (torch.sigmoid(s) - p_t).abs().pow(beta)
    return (weight.float()[:, None] * bce * focal).sum()


def box_iou_aligned(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of each box of ``a`` with the box of ``b`` in the same row (xyxy, (R, 4) -> (R,))."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a + area_b - inter).clamp(min=eps)


@register_term
class CrossKD(DistillTerm):
    """Wang et al., "CrossKD: Cross-Head Knowledge Distillation for Object Detection", CVPR 2024,
    for RetinaNet and FCOS students.

    The student's head features after its ``DEPTH``-th conv of each branch (0: the FPN level),
    aligned to the teacher's per-channel statistics there, run through the frozen teacher's
    remaining head layers (the ``cross_head`` target kind); these cross-head predictions learn
    the teacher's own: classification by a quality-focal KD (RetinaNet: anchors the student's
    matcher ignores weigh 0), box regression on boxes decoded from the same anchors for both
    (RetinaNet: GIoU loss; FCOS: IoU loss, ``-log IoU``) weighted per anchor by the teacher's
    highest class probability (RetinaNet: 0 at ignored anchors, as for classification). Both
    are normalised as the authors do: by the number of positive anchors (RetinaNet) or the sum
    of the positives' centerness targets (FCOS).
    ``loss = CLS_WEIGHT * cls + REG_WEIGHT * reg`` (times ``WEIGHT``). Defaults: the authors'
    RetinaNet settings (``DEPTH`` 3, 1.0, 1.0); FCOS: ``DEPTH`` 2, ``CLS_WEIGHT`` 0.4,
    ``REG_WEIGHT`` 0.75. R-CNN students are not supported (the authors' R-CNN branch is an
    untuned extra outside the paper's tables). Config: ``MODEL.DISTILL.CROSSKD``.
    """

    @classmethod
    def config_namespace(cls):
        # The student's head features after its DEPTH-th conv (0: the FPN level) run through the
        # teacher's remaining head. Defaults: the authors' RetinaNet settings; FCOS: DEPTH 2,
        # CLS_WEIGHT 0.4, REG_WEIGHT 0.75.
        c = CN()
        c.WEIGHT = 1.0
        c.DEPTH = 3
        c.CLS_WEIGHT = 1.0
        c.REG_WEIGHT = 1.0
        c.BETA = 1.0  # the exponent of the quality-focal KD
        return c

    @configurable
    def __init__(
        self,
        *,
        weight: float,
        student: nn.Module,
        depth: int = 3,
        cls_weight: float = 1.0,
        reg_weight: float = 1.0,
        beta: float = 1.0,
    ):
        """
        Args:
            weight: the term's weight.
            student: the student (a RetinaNet or FCOS): its anchor generator, matcher and box
                transform define the anchors and the positives. Referenced, not registered.
            depth: the cut k (0: the FPN level; k: after the k-th conv of each head branch).
            cls_weight, reg_weight: the weights of the two losses; beta: the focal exponent.
        """
        super().__init__(weight=weight)
        if not isinstance(student, (RetinaNet, FCOS)):
            raise ConfigError(
                f"MODEL.DISTILL.LOSSES names CrossKD, which d2dist implements for dense detectors "
                f"(RetinaNet, FCOS; the paper's tables); the student is a "
                f"{type(student).__name__}. For R-CNN students use DIST, ReviewKD, MGD or FGD."
            )
        for key, value in (("CLS_WEIGHT", cls_weight), ("REG_WEIGHT", reg_weight), ("BETA", beta)):
            if not value >= 0:
                raise ConfigError(f"MODEL.DISTILL.CROSSKD.{key}={value}: must be >= 0")
        if cls_weight == 0 and reg_weight == 0:
            raise ConfigError(
                "MODEL.DISTILL.CROSSKD: CLS_WEIGHT and REG_WEIGHT are both 0, so the term would "
                "compute nothing; remove CrossKD from MODEL.DISTILL.LOSSES instead."
            )
        self.__dict__["student"] = student  # not a submodule: the Distiller owns it
        self.depth, self.beta = int(depth), float(beta)
        self.cls_weight, self.reg_weight = float(cls_weight), float(reg_weight)
        self.fcos = isinstance(student, FCOS)

    @classmethod
    def from_config(cls, cfg, student, teacher):
        _check_same_anchors(student, teacher)
        return {
            "weight": cfg.WEIGHT,
            "student": student,
            "depth": cfg.DEPTH,
            "cls_weight": cfg.CLS_WEIGHT,
            "reg_weight": cfg.REG_WEIGHT,
            "beta": cfg.BETA,
        }

    def request(self) -> TargetRequest:
        return TargetRequest(cross_head=(self.depth,))

    def forward(self, targets: Targets) -> TermOutput:
        value = targets.cross_head
        k = self.student.num_classes
        grids = value.student_features[(self.depth, "reg")]  # the student's level grids
        # each level's student and teacher maps cropped to their common region (padding)
        sizes = [
            (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
            for s, t in zip(grids, value.teacher_deltas)
        ]

        def flat(maps, dim):  # per level (N, A*dim, H, W) -> (N, R, dim), R over all levels
            return torch.cat(
                [permute_to_N_HWA_K(x[..., :h, :w], dim) for x, (h, w) in zip(maps, sizes)], dim=1
            )

        anchors = self.student.anchor_generator([x[..., :h, :w] for x, (h, w) in zip(grids, sizes)])
        t_logits = flat(value.teacher_logits, k)
        gt = [x["instances"].to(t_logits.device) for x in targets.batched_inputs]
        cls_weights, normalizer = self._assignment(anchors, gt)
        parts = {}
        if self.cls_weight:
            cls_cross = flat(value.cross(self.depth, "cls"), k)
            parts["cls"] = quality_focal_kd_loss(
                cls_cross.reshape(-1, k), t_logits.reshape(-1, k), cls_weights.reshape(-1),
                self.beta,
            ) / normalizer  # fmt: skip
        if self.reg_weight:
            reg_cross = flat(value.cross(self.depth, "reg"), 4)
            reg = self._regression(
                anchors, reg_cross, flat(value.teacher_deltas, 4), t_logits, cls_weights
            )
            parts["reg"] = reg / normalizer
        loss = sum(getattr(self, f"{name}_weight") * v for name, v in parts.items())
        return TermOutput(loss, parts)

    @torch.no_grad()
    def _assignment(self, anchors: List[Boxes], gt) -> Tuple[Tensor, Tensor]:
        """Per anchor, the classification weight (N, R), and the normaliser: RetinaNet: weight
        0 for anchors its matcher ignores, normaliser the number of positives; FCOS: weight 1,
        normaliser the sum of the positives' centerness targets."""
        student = self.student
        labels, matched = student.label_anchors(anchors, gt)
        labels = torch.stack(labels)
        positive = (labels >= 0) & (labels != student.num_classes)
        if not self.fcos:
            weights = (labels >= 0).float()
            return weights, positive.sum().float().clamp(min=1.0)
        ctrness = student.compute_ctrness_targets(anchors, matched)
        normalizer = ctrness[positive].sum().float() if positive.any() else ctrness.new_zeros(())
        return torch.ones_like(labels, dtype=torch.float32), normalizer.clamp(min=1e-6)

    def _regression(
        self, anchors, cross: Tensor, teacher: Tensor, t_logits: Tensor, valid: Tensor
    ) -> Tensor:
        """Box regression of the cross-head against the teacher's own, weighted per anchor by
        ``sigmoid(max_c teacher logit)`` times ``valid`` (the classification weight of
        :meth:`_assignment`: 0 at the anchors RetinaNet's matcher ignores, as the authors zero
        the regression weight where the label weight is 0; all 1 for FCOS): GIoU (RetinaNet)
        or ``-log IoU`` (FCOS), summed."""
        transform = self.student.box2box_transform
        anchors = Boxes.cat(anchors).tensor
        n = cross.shape[0]
        weight = torch.sigmoid(t_logits.float().amax(dim=2)) * valid.float()
        weight = weight.reshape(-1)  # (N * R,)
        a = anchors.repeat(n, 1)
        boxes_s = transform.apply_deltas(cross.float().reshape(-1, 4), a)
        boxes_t = transform.apply_deltas(teacher.float().reshape(-1, 4), a).detach()
        return _box_loss(boxes_s, boxes_t, weight, self.fcos)


@float32_loss
def _box_loss(boxes_s: Tensor, boxes_t: Tensor, weight: Tensor, log_iou: bool) -> Tensor:
    if log_iou:
        loss = -torch.log(box_iou_aligned(boxes_s, boxes_t).clamp(min=1e-6))
    else:
        loss = giou_loss(boxes_s, boxes_t, reduction="none")
    return (loss * weight).sum()


def _check_same_anchors(student: nn.Module, teacher: nn.Module) -> None:
    """The teacher's regression is decoded from the student's anchors: both must have the same
    anchors per location and the same box transform."""
    for who, model in (("student", student), ("teacher", teacher)):
        if not hasattr(model, "anchor_generator") or not hasattr(model, "box2box_transform"):
            raise ConfigError(
                f"CrossKD needs dense detectors (RetinaNet, FCOS) for student and teacher; the "
                f"{who} is a {type(model).__name__}."
            )
    s_cells = list(student.anchor_generator.cell_anchors)
    t_cells = list(teacher.anchor_generator.cell_anchors)
    same = len(s_cells) == len(t_cells) and all(
        a.shape == b.shape and torch.allclose(a, b, atol=1e-2) for a, b in zip(s_cells, t_cells)
    )  # to a hundredth of a pixel: configs write 2^(1/3) scales with more or fewer digits
    if not same or student.anchor_generator.strides != teacher.anchor_generator.strides:
        raise ConfigError(
            "CrossKD decodes the teacher's boxes from the student's anchors, but their anchors "
            "differ (MODEL.ANCHOR_GENERATOR sizes, aspect ratios, offsets or strides); give both "
            "the same anchors."
        )
    s_t, t_t = student.box2box_transform, teacher.box2box_transform
    if type(s_t) is not type(t_t) or vars(s_t) != vars(t_t):
        raise ConfigError(
            f"CrossKD decodes both networks' boxes with one box transform, but the student's "
            f"({type(s_t).__name__} {vars(s_t)}) and the teacher's ({type(t_t).__name__} "
            f"{vars(t_t)}) differ (e.g. MODEL.RETINANET.BBOX_REG_WEIGHTS)."
        )

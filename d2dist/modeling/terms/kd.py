"""KD: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015), on logits."""

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from torch import Tensor

from ..targets import TargetRequest, Targets
from .base import (
    DistillTerm,
    TermOutput,
    check_tau,
    register_term,
    resolve_logit_target,
    sum_levels,
)
from .common import float32_loss, logit_rows

__all__ = ["KD", "binary_kd_loss", "kd_loss"]


@float32_loss
def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

    ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))``, summed over classes and averaged over
    rows. Logits are (N, C), or (N, C, H, W) read as N*H*W rows. An empty batch gives 0.
    """
    s, t = logit_rows(student_logits, teacher_logits, tau, "kd_loss")
    if s.shape[0] == 0:
        return s.sum() * 0.0
    log_p_s = F.log_softmax(s / tau, dim=1)
    log_p_t = F.log_softmax(t / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl.mean() * tau**2


@float32_loss
def binary_kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """KD for sigmoid classifiers (dense detectors): per-logit binary KL, summed over channels.

    ``tau^2 * sum_c KL(Bernoulli(sigmoid(t_c / tau)) || Bernoulli(sigmoid(s_c / tau)))``,
    averaged over rows (locations). Shapes as in :func:`kd_loss`.
    """
    s, t = logit_rows(student_logits, teacher_logits, tau, "binary_kd_loss")
    if s.shape[0] == 0:
        return s.sum() * 0.0
    s, t = s / tau, t / tau
    # KL(p || q) = p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q)), p = sigmoid(t),
    # 1 - p = sigmoid(-t): every log from logsigmoid, so saturated logits keep their precision.
    kl = torch.sigmoid(t) * (F.logsigmoid(t) - F.logsigmoid(s))
    kl = kl + torch.sigmoid(-t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.sum(dim=1).mean() * tau**2


@register_term
class KD(DistillTerm):
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015), on logits.

    Softmax KL for RoI and pixel logits; per-logit binary KL for the sigmoid classifiers of
    dense heads (summed over a location's anchors x classes, averaged over locations, summed over
    levels). Config: ``MODEL.DISTILL.KD`` (``WEIGHT``, ``TAU``, ``TARGET``).
    """

    @classmethod
    def config_namespace(cls):
        c = CN()
        c.WEIGHT = 1.0
        c.TAU = 1.0
        # "auto" (roi for R-CNN, dense for RetinaNet / FCOS, pixel for semantic segmentation),
        # "roi", "dense" or "pixel"
        c.TARGET = "auto"
        return c

    @configurable
    def __init__(self, *, weight: float, tau: float, target: str):
        """
        Args:
            weight: the term's weight in the total loss.
            tau: the temperature.
            target: "roi", "dense" or "pixel".
        """
        super().__init__(weight=weight)
        check_tau(tau, "KD")
        self.tau, self.target = float(tau), target

    @classmethod
    def from_config(cls, cfg, student, teacher):
        return {
            "weight": cfg.WEIGHT,
            "tau": cfg.TAU,
            "target": resolve_logit_target(cfg.TARGET, "KD", student),
        }

    def request(self) -> TargetRequest:
        return TargetRequest(**{self.target: ()})

    def forward(self, targets: Targets) -> TermOutput:
        if self.target == "roi":
            return TermOutput(kd_loss(*targets.roi, tau=self.tau))
        if self.target == "pixel":
            return TermOutput(kd_loss(*targets.pixel, tau=self.tau))
        parts = {n: binary_kd_loss(s, t, tau=self.tau) for n, (s, t) in targets.dense.items()}
        return TermOutput(sum_levels(parts), parts)

"""CWD: Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021."""

import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn

from ...errors import ConfigError
from ..targets import TargetRequest, Targets
from .base import (
    DistillTerm,
    TermOutput,
    check_tau,
    feature_adapters,
    feature_namespace,
    register_term,
    sum_levels,
)
from .common import check_pair, float32_loss

__all__ = ["CWD", "cwd_loss"]


@float32_loss
def cwd_loss(student_map: Tensor, teacher_map: Tensor, tau: float = 1.0) -> Tensor:
    """Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021.

    For each (n, c), a softmax over the H*W positions of ``map / tau``;
    ``tau^2 / (N*C) * sum_{n,c} KL(p_t || p_s)`` (a true KL: identical maps give 0).
    """
    if student_map.dim() != 4:
        raise ValueError(f"cwd_loss: maps must be (N, C, H, W), got {tuple(student_map.shape)}")
    check_pair(student_map, teacher_map, "cwd_loss")
    if not tau > 0:
        raise ValueError(f"cwd_loss: the temperature tau must be > 0, got {tau}")
    n, c, h, w = student_map.shape
    s = student_map.float().reshape(n * c, h * w)
    t = teacher_map.detach().float().reshape(n * c, h * w)
    if s.numel() == 0:
        return s.sum() * 0.0
    log_p_s = F.log_softmax(s / tau, dim=1)
    log_p_t = F.log_softmax(t / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * tau**2 / (n * c)


@register_term
class CWD(DistillTerm):
    """Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021.

    KL between per-channel spatial distributions, on FPN levels (``TARGET: features``, with
    adapters when widths differ, summed over levels) or on segmentation logits
    (``TARGET: pixel``). Config: ``MODEL.DISTILL.CWD``.
    """

    @classmethod
    def config_namespace(cls):
        # TARGET "features" (IN_FEATURES; reference tau 1, weight 5-10) or "pixel" (segmentation
        # logits; reference tau 4, weight 3).
        c = feature_namespace(5.0, ["p2", "p3", "p4", "p5", "p6"])
        c.TAU = 1.0
        c.TARGET = "features"
        return c

    @configurable
    def __init__(self, *, weight: float, tau: float, target: str, adapters: nn.ModuleDict):
        """
        Args:
            weight: the term's weight; tau: the temperature.
            target: "features" or "pixel"; adapters: per level (features target).
        """
        super().__init__(weight=weight)
        check_tau(tau, "CWD")
        self.tau, self.target, self.adapters = float(tau), target, adapters

    @classmethod
    def from_config(cls, cfg, student, teacher):
        if cfg.TARGET not in ("features", "pixel"):
            raise ConfigError(
                f"MODEL.DISTILL.CWD.TARGET={cfg.TARGET!r}; expected 'features' or 'pixel'"
            )
        adapters = (
            feature_adapters(cfg, "CWD", student, teacher)
            if cfg.TARGET == "features"
            else nn.ModuleDict()
        )
        return {"weight": cfg.WEIGHT, "tau": cfg.TAU, "target": cfg.TARGET, "adapters": adapters}

    def request(self) -> TargetRequest:
        if self.target == "pixel":
            return TargetRequest(pixel=())
        return TargetRequest(features=tuple(self.adapters.keys()))

    def forward(self, targets: Targets) -> TermOutput:
        if self.target == "pixel":
            return TermOutput(cwd_loss(*targets.pixel, tau=self.tau))
        parts = {}
        for name, adapter in self.adapters.items():
            s, t = targets.features[name]
            parts[name] = cwd_loss(adapter(s), t, tau=self.tau)
        return TermOutput(sum_levels(parts), parts)

"""DIST_FEATURE: DIST on FPN features, the feature part of DIST+ (Huang et al., TPAMI 2025), as
d2dist's documented reconstruction (the paper is not openly available)."""

from typing import Optional

from detectron2.config import configurable
from torch import Tensor, nn

from ...errors import ConfigError
from ..targets import TargetRequest, Targets
from .acclimation import (
    AcclimatedTerm,
    AcclimationSchedule,
    FeatureAcclimation,
    acclimation_from_config,
)
from .base import (
    TermOutput,
    check_relation_weights,
    check_tau,
    feature_adapters,
    feature_namespace,
    register_term,
    sum_levels,
)
from .common import float32_loss, logit_rows
from .dist import dist_loss, relation_loss

__all__ = ["DIST_FEATURE", "dist_feature_loss"]


@float32_loss
def dist_feature_loss(
    student_feat: Tensor,
    teacher_feat: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    normalize: str = "none",
    *,
    detach_teacher: bool = True,
) -> Tensor:
    """Feature-level DIST, as in DIST+ (Huang et al., TPAMI 2025), one FPN level.

    d2dist's documented *reconstruction* (the paper is not openly available and has no public
    code): (N, C, H, W) features become (N*H*W, C) rows; ``L_inter`` correlates each position's
    channel vector, ``L_intra`` each channel over all positions. ``normalize="softmax"``
    applies a softmax over channels with temperature ``tau`` first (and the ``tau^2`` factor);
    ``"none"`` (default) correlates the raw features. ``detach_teacher`` as in :func:`dist_loss`.
    """
    if normalize not in ("none", "softmax"):
        raise ValueError(f"dist_feature_loss: normalize={normalize!r}; use 'none' or 'softmax'")
    if student_feat.dim() != 4:
        raise ValueError(
            f"dist_feature_loss: features must be (N, C, H, W), got {tuple(student_feat.shape)}"
        )
    s, t = logit_rows(student_feat, teacher_feat, tau, "dist_feature_loss", detach_teacher)
    if normalize == "softmax":  # DIST on the (N*H*W, C) rows
        return dist_loss(s, t, beta, gamma, tau, detach_teacher=detach_teacher)
    return relation_loss(s, t, beta, gamma, detach_teacher=detach_teacher)


@register_term
class DIST_FEATURE(AcclimatedTerm):  # noqa: N801  (the class name is the term's name)
    """DIST on FPN features: the feature part of DIST+ (Huang et al., TPAMI 2025), as d2dist's
    documented reconstruction (the paper is not openly available; docs/methods.md).

    Per level, the adapted student feature and the teacher's become (N*H*W, C) rows; the
    inter term correlates each position's channels, the intra term each channel over all
    positions (see :func:`dist_feature_loss`); levels are summed. With
    ``MODEL.DISTILL.ACCLIMATION`` (``MODE: output``) the teacher's features pass through
    per-channel affine acclimation maps first. Config: ``MODEL.DISTILL.DIST_FEATURE``.
    """

    @classmethod
    def config_namespace(cls):
        # d2dist's documented reconstruction (the paper is not openly available; see docs/methods.md): rows
        # are positions, columns channels; adapters map student to teacher widths.
        c = feature_namespace(1.0, ["p2", "p3", "p4", "p5", "p6"])
        c.BETA = 1.0
        c.GAMMA = 1.0
        c.TAU = 1.0
        c.NORMALIZE = "none"  # "none" or "softmax" (over channels, with TAU)
        return c

    @configurable
    def __init__(
        self,
        *,
        weight: float,
        adapters: nn.ModuleDict,
        beta: float = 1.0,
        gamma: float = 1.0,
        tau: float = 1.0,
        normalize: str = "none",
        acclimation: Optional[nn.ModuleDict] = None,
        acclimation_schedule: Optional[AcclimationSchedule] = None,
        acclimation_lambda: float = 0.0,
        acclimation_mode: str = "output",
    ):
        """
        Args:
            weight: the term's weight; adapters: per level, student -> teacher width.
            beta, gamma: inter and intra weights; tau, normalize: see ``dist_feature_loss``.
            acclimation: per level a :class:`FeatureAcclimation`, or None; its schedule,
                anchor weight and mode.
        """
        super().__init__(
            weight=weight,
            acclimation=acclimation,
            acclimation_schedule=acclimation_schedule,
            acclimation_lambda=acclimation_lambda,
            acclimation_mode=acclimation_mode,
        )
        if normalize not in ("none", "softmax"):
            raise ConfigError(
                f"MODEL.DISTILL.DIST_FEATURE.NORMALIZE={normalize!r}; expected 'none' or 'softmax'"
            )
        check_tau(tau, "DIST_FEATURE")
        check_relation_weights(beta, gamma, "DIST_FEATURE")
        self.adapters = adapters
        self.beta, self.gamma, self.tau, self.normalize = beta, gamma, tau, normalize

    @classmethod
    def from_config(cls, cfg, student, teacher):
        adapters = feature_adapters(cfg, "DIST_FEATURE", student, teacher)
        t_shapes = teacher.backbone.output_shape()
        return {
            "weight": cfg.WEIGHT,
            "adapters": adapters,
            "beta": cfg.BETA,
            "gamma": cfg.GAMMA,
            "tau": cfg.TAU,
            "normalize": cfg.NORMALIZE,
            **acclimation_from_config(
                cfg.acclimation,
                {
                    "output": lambda: nn.ModuleDict(
                        {n: FeatureAcclimation(t_shapes[n].channels) for n in adapters}
                    )
                },
            ),
        }

    def request(self) -> TargetRequest:
        return TargetRequest(features=tuple(self.adapters.keys()))

    def forward(self, targets: Targets) -> TermOutput:
        phase = self.acclimation_phase()
        parts = {}
        for name, adapter in self.adapters.items():
            s, t = targets.features[name]
            module = self.acclimation[name] if self.acclimation is not None else None
            t, detach = self.acclimated(t, phase, lambda: module(t))
            parts[name] = dist_feature_loss(
                adapter(s), t, self.beta, self.gamma, self.tau, self.normalize,
                detach_teacher=detach,
            )  # fmt: skip
        return TermOutput(sum_levels(parts), parts, self.anchor(phase))

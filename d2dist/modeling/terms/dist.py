"""DIST: Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022."""

from typing import Optional

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from torch import Tensor, nn

from ...errors import ConfigError
from ..targets import TargetRequest, Targets, teacher_classifiers
from .acclimation import (
    AcclimatedTerm,
    AcclimationSchedule,
    HeadAcclimation,
    TemperatureAcclimation,
    acclimation_from_config,
)
from .base import (
    TermOutput,
    check_relation_weights,
    check_tau,
    register_term,
    resolve_logit_target,
    sum_levels,
)
from .common import check_pair, float32_loss, logit_rows, pearson

__all__ = ["DIST", "dist_loss", "relation_loss"]


@float32_loss
def relation_loss(
    s: Tensor, t: Tensor, beta: float = 1.0, gamma: float = 1.0, *, detach_teacher: bool = True
) -> Tensor:
    """DIST's relation loss on (rows, columns) predictions that are already normalised:
    ``beta * (1 - mean row correlation) + gamma * (1 - mean column correlation)``, in float32,
    the teacher side detached (``detach_teacher=False`` lets gradients reach a trainable
    teacher-side map: acclimation).

    Used directly for sigmoid heads (dense DIST), where no softmax or temperature applies. An
    empty batch gives 0.
    """
    if s.dim() != 2:
        raise ValueError(
            f"relation_loss: predictions must be (rows, columns), got {tuple(s.shape)}"
        )
    check_pair(s, t, "relation_loss")
    s, t = s.float(), t.float()
    if detach_teacher:
        t = t.detach()
    if s.shape[0] == 0:
        return s.sum() * 0.0
    inter = 1.0 - pearson(s, t).mean()
    intra = 1.0 - pearson(s.t(), t.t()).mean()
    return beta * inter + gamma * intra


@float32_loss
def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    *,
    detach_teacher: bool = True,
) -> Tensor:
    """Huang et al., "Knowledge Distillation from A Stronger Teacher" (DIST), NeurIPS 2022.

    Relation matching of softmax predictions: ``tau^2 * (beta * L_inter + gamma * L_intra)``
    with ``L_inter = 1 - mean_i rho(Ps[i, :], Pt[i, :])`` (each row over classes) and
    ``L_intra = 1 - mean_j rho(Ps[:, j], Pt[:, j])`` (each class over the rows of the batch),
    ``P = softmax(Z / tau)``. Logits (N, C), or (N, C, H, W) read as N*H*W rows. The intra
    term depends on the rows given together (in d2dist: one GPU's batch). An empty batch gives 0.
    ``detach_teacher=False`` lets gradients reach a trainable teacher-side map (acclimation).
    """
    s, t = logit_rows(student_logits, teacher_logits, tau, "dist_loss", detach_teacher)
    p_s, p_t = F.softmax(s / tau, dim=1), F.softmax(t / tau, dim=1)
    return relation_loss(p_s, p_t, beta, gamma, detach_teacher=detach_teacher) * tau**2


def _dense_rows(x: Tensor, num_classes: int, mode: str) -> Tensor:
    """(N, A*K, H, W) dense logits -> rows: (N*H*W, A*K) per location or (N*H*W*A, K)."""
    n, ak, h, w = x.shape
    if mode == "location":
        return x.permute(0, 2, 3, 1).reshape(-1, ak)
    return (
        x.view(n, ak // num_classes, num_classes, h, w)
        .permute(0, 3, 4, 1, 2)
        .reshape(-1, num_classes)
    )


@register_term
class DIST(AcclimatedTerm):
    """Huang et al., "Knowledge Distillation from A Stronger Teacher" (DIST), NeurIPS 2022.

    Pearson relation matching (inter- and intra-class) of predictions on one logit target:

    - ``roi``: softmax logits of the student's sampled RoIs (rows) and the teacher's box head
      on the same RoIs;
    - ``dense`` (RetinaNet, FCOS): sigmoid probabilities without temperature, per FPN level,
      summed over levels; ``DENSE_MODE: location`` (reference: all A*K channels of a location
      are one row) or ``anchor`` (rows of K classes per anchor, opt-in);
    - ``pixel``: per-pixel softmax logits at the head's resolution, ignore-label pixels kept
      (reference) or dropped with ``MASK_IGNORE``.

    With ``MODEL.DISTILL.ACCLIMATION`` the teacher's logits are acclimated first (DIST+
    reconstructions: a learnable temperature, ``MODE: output``, or the teacher's classification
    layer made trainable, ``MODE: head``; :mod:`d2dist.modeling.terms.acclimation`).
    Correlations are computed per GPU (per-GPU batch), never gathered across GPUs.
    Config: ``MODEL.DISTILL.DIST``.
    """

    @classmethod
    def config_namespace(cls):
        c = CN()
        c.WEIGHT = 1.0
        c.BETA = 1.0  # inter-class term
        c.GAMMA = 1.0  # intra-class term
        c.TAU = 1.0  # softmax temperature (RoI and pixel logits; dense heads use sigmoid)
        c.TARGET = "auto"  # "auto", "roi", "dense" or "pixel"
        # Dense heads: "location" (the authors' reference: all A*K channels of a location form one
        # row) or "anchor" (rows of K classes per anchor: a different method, opt-in).
        c.DENSE_MODE = "location"
        # Pixel logits: drop pixels whose ground truth (at the head's resolution) is the ignore
        # label. The authors keep them (False).
        c.MASK_IGNORE = False
        return c

    @configurable
    def __init__(
        self,
        *,
        weight: float,
        beta: float,
        gamma: float,
        tau: float,
        target: str,
        dense_mode: str = "location",
        num_classes: int = 0,
        mask_ignore: bool = False,
        acclimation: Optional[nn.Module] = None,
        acclimation_schedule: Optional[AcclimationSchedule] = None,
        acclimation_lambda: float = 0.0,
        acclimation_mode: str = "output",
    ):
        """
        Args:
            weight: the term's weight; beta, gamma: inter- and intra-class weights; tau: the
                softmax temperature (roi and pixel targets).
            target: "roi", "dense" or "pixel".
            dense_mode: "location" or "anchor"; num_classes: K (for "anchor").
            mask_ignore: drop ignore-label pixels (pixel target; the ground truth at the
                logits' resolution comes from the ``pixel`` target kind).
            acclimation: a :class:`TemperatureAcclimation` of the teacher's logits (``output``
                mode) or a :class:`HeadAcclimation` of its classification layer (``head``
                mode), or None; acclimation_schedule, acclimation_lambda, acclimation_mode:
                its schedule, anchor weight and mode.
        """
        super().__init__(
            weight=weight,
            acclimation=acclimation,
            acclimation_schedule=acclimation_schedule,
            acclimation_lambda=acclimation_lambda,
            acclimation_mode=acclimation_mode,
        )
        check_tau(tau, "DIST")
        check_relation_weights(beta, gamma, "DIST")
        if dense_mode not in ("location", "anchor"):
            raise ConfigError(
                f"MODEL.DISTILL.DIST.DENSE_MODE={dense_mode!r}; expected 'location' or 'anchor'"
            )
        if mask_ignore and target != "pixel":
            raise ConfigError(
                f"MODEL.DISTILL.DIST.MASK_IGNORE applies to pixel logits; TARGET is {target!r}"
            )
        self.beta, self.gamma, self.tau, self.target = float(beta), float(gamma), float(tau), target
        self.dense_mode, self.num_classes = dense_mode, num_classes
        self.mask_ignore = mask_ignore

    @classmethod
    def from_config(cls, cfg, student, teacher):
        target = resolve_logit_target(cfg.TARGET, "DIST", student)
        return {
            "weight": cfg.WEIGHT,
            "beta": cfg.BETA,
            "gamma": cfg.GAMMA,
            "tau": cfg.TAU,
            "target": target,
            "dense_mode": cfg.DENSE_MODE,
            "num_classes": getattr(student, "num_classes", 0),
            "mask_ignore": cfg.MASK_IGNORE,
            **acclimation_from_config(
                cfg.acclimation,
                {
                    "output": TemperatureAcclimation,
                    "head": lambda: HeadAcclimation(teacher_classifiers(teacher, target)),
                },
            ),
        }

    @property
    def _head(self) -> bool:
        return self.acclimation is not None and self.acclimation_mode == "head"

    def request(self) -> TargetRequest:
        options = ("classifier_inputs",) if self._head else ()
        if self.mask_ignore:
            options += ("labels",)
        return TargetRequest(**{self.target: options})

    def _acclimated(self, pair, phase: str):
        """The teacher logits for the loss, whether to detach them, and the anchor's pair."""
        if not self._head:

            def acclimate():
                return self.acclimation(pair.teacher)

        elif self.target == "roi":  # one acclimated layer per teacher stage

            def acclimate():
                return torch.cat([self.acclimation(x, stage) for stage, x in pair.teacher_inputs])

        else:  # on the teacher's whole map, then cropped as its logits were
            h, w = pair.teacher.shape[-2:]

            def acclimate():
                return self.acclimation(pair.teacher_inputs)[..., :h, :w]

        t, detach = self.acclimated(pair.teacher, phase, acclimate)
        return t, detach, (t, pair.teacher)

    def forward(self, targets: Targets) -> TermOutput:
        phase = self.acclimation_phase()
        kw = {"beta": self.beta, "gamma": self.gamma, "tau": self.tau}
        if self.target in ("roi", "pixel"):
            pair = targets[self.target]
            s = pair.student
            t, detach, anchored = self._acclimated(pair, phase)
            if self.mask_ignore:
                keep = (pair.labels != pair.ignore_value).reshape(-1)
                s = s.permute(0, 2, 3, 1).reshape(-1, s.shape[1])[keep]
                t = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])[keep]
            loss = dist_loss(s, t, **kw, detach_teacher=detach)
            return TermOutput(loss, {}, self.anchor(phase, [(*anchored, False)]))
        parts, anchored = {}, []
        for name, pair in targets.dense.items():
            t, detach, a = self._acclimated(pair, phase)  # detached unless acclimating
            anchored.append((*a, True))
            s = torch.sigmoid(_dense_rows(pair.student.float(), self.num_classes, self.dense_mode))
            t = torch.sigmoid(_dense_rows(t.float(), self.num_classes, self.dense_mode))
            parts[name] = relation_loss(s, t, self.beta, self.gamma, detach_teacher=detach)
        return TermOutput(sum_levels(parts), parts, self.anchor(phase, anchored))

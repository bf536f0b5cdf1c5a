"""Distillation terms: registered modules that apply a loss function to extracted targets."""

import logging
import math
from typing import Dict, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.utils.events import get_event_storage
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ...config import ConfigError
from ..acclimation import AcclimationSchedule, FeatureAcclimation, TemperatureAcclimation
from ..adapters import ReviewKDAdapter, build_adapter
from ..targets import (
    LOGIT_TARGETS,
    TargetRequest,
    Targets,
    check_feature_names,
    natural_logit_target,
)
from . import functional as L

__all__ = [
    "CWD",
    "DIST",
    "DISTFeature",
    "DISTILL_LOSS_REGISTRY",
    "DistillTerm",
    "KD",
    "Mimic",
    "PKD",
    "ReviewKD",
    "build_distill_terms",
    "register_term",
]

logger = logging.getLogger(__name__)

DISTILL_LOSS_REGISTRY = Registry("DISTILL_LOSS")
DISTILL_LOSS_REGISTRY.__doc__ = """
Distillation terms, named in ``MODEL.DISTILL.LOSSES``. A registered class is built as
``cls(cfg, student, teacher)`` and must be a :class:`DistillTerm`: its ``request()`` says which
targets it needs, and ``forward(targets)`` returns ``(loss, per_level)`` or
``(loss, per_level, extra)``: an unweighted 0-dim float32 loss, a dict of named parts to log,
and optional extra losses (suffix -> 0-dim tensor, added as ``loss_distill_<key>_<suffix>``).
All are multiplied by the term's weight and the schedule. Its ``CONFIG_KEY`` names its
namespace under ``MODEL.DISTILL`` (which holds at least ``WEIGHT``) and its loss key
``loss_distill_<key>``. A term whose trainable parameters do not all take part in every step
says so with ``skips_parameters()`` (multi-GPU training then looks for unused parameters).
"""


def register_term(name: str):
    """Register a :class:`DistillTerm` under ``name`` (what ``MODEL.DISTILL.LOSSES`` lists)."""

    def deco(cls):
        DISTILL_LOSS_REGISTRY._do_register(name, cls)
        return cls

    return deco


class DistillTerm(nn.Module):
    """Base of the distillation terms: a weight, a target request and a loss."""

    CONFIG_KEY: str = ""

    def __init__(self, *, weight: float):
        super().__init__()
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ConfigError(
                f"MODEL.DISTILL.{self.CONFIG_KEY}.WEIGHT={weight!r}: a term's weight must be a "
                "finite number >= 0 (a negative weight would push the student away from the "
                "teacher). To turn the term off, remove it from MODEL.DISTILL.LOSSES."
            )
        self.weight = float(weight)

    @property
    def loss_key(self) -> str:
        return f"loss_distill_{self.CONFIG_KEY.lower()}"

    def request(self) -> TargetRequest:
        raise NotImplementedError

    def skips_parameters(self) -> bool:
        """Whether some steps leave some of this term's trainable parameters unused."""
        return False

    def forward(self, targets: Targets):
        """``(loss, per_level)`` or ``(loss, per_level, extra)``: see the registry's docstring."""
        raise NotImplementedError


def _check_tau(tau: float, key: str) -> None:
    if not tau > 0:
        raise ConfigError(f"MODEL.DISTILL.{key}.TAU={tau}; the temperature must be > 0")


def _sum_levels(parts: Dict[str, Tensor]) -> Tensor:
    return torch.stack(list(parts.values())).sum()


def _feature_adapters(cfg_node, key: str, student, teacher) -> nn.ModuleDict:
    if not cfg_node.IN_FEATURES:
        raise ConfigError(f"MODEL.DISTILL.{key}.IN_FEATURES is empty; name the levels to distill")
    s_shapes, t_shapes = check_feature_names(
        cfg_node.IN_FEATURES, student, teacher, f"MODEL.DISTILL.{key}.IN_FEATURES"
    )
    adapters = nn.ModuleDict()
    for name in cfg_node.IN_FEATURES:
        adapters[name] = build_adapter(
            cfg_node.ADAPTER, s_shapes[name], t_shapes[name], cfg_node.ADAPTER_NORM, key=name
        )
    return adapters


class _AdaptedFeatureTerm(DistillTerm):
    """A loss per feature level between the adapted student and the teacher, summed over levels.

    Subclasses set ``CONFIG_KEY`` (their namespace holds ``WEIGHT``, ``IN_FEATURES``,
    ``ADAPTER``, ``ADAPTER_NORM``) and :meth:`level_loss`.
    """

    @configurable
    def __init__(self, *, weight: float, adapters: nn.ModuleDict):
        """
        Args:
            weight: the term's weight in the total loss.
            adapters: one adapter per feature name, student shape -> teacher shape.
        """
        super().__init__(weight=weight)
        self.adapters = adapters

    @classmethod
    def from_config(cls, cfg, student, teacher):
        c = cfg.MODEL.DISTILL[cls.CONFIG_KEY]
        return {
            "weight": c.WEIGHT,
            "adapters": _feature_adapters(c, cls.CONFIG_KEY, student, teacher),
        }

    def request(self) -> TargetRequest:
        return TargetRequest(features=tuple(self.adapters.keys()))

    def level_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, targets: Targets):
        parts = {}
        for name, adapter in self.adapters.items():
            s, t = targets.features[name]
            parts[name] = self.level_loss(adapter(s), t)
        return _sum_levels(parts), parts


@register_term("MIMIC")
class Mimic(_AdaptedFeatureTerm):
    """Feature mimicking (e.g. Romero et al., FitNets, ICLR 2015): MSE between adapted student
    and teacher features, summed over ``IN_FEATURES``. Config: ``MODEL.DISTILL.MIMIC``."""

    CONFIG_KEY = "MIMIC"

    def level_loss(self, student, teacher):
        return L.mimic_loss(student, teacher)


def resolve_logit_target(value: str, key: str, student: nn.Module) -> str:
    """``TARGET`` of a logit term; ``auto`` is the student's natural target (and is logged)."""
    if value == "auto":
        target = natural_logit_target(student)
        logger.info(f"MODEL.DISTILL.{key}.TARGET auto -> {target!r} ({type(student).__name__})")
        return target
    if value not in LOGIT_TARGETS:
        raise ConfigError(
            f"MODEL.DISTILL.{key}.TARGET={value!r}; expected 'auto' or one of {LOGIT_TARGETS}"
        )
    return value


@register_term("KD")
class KD(DistillTerm):
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015), on logits.

    Softmax KL for RoI and pixel logits; per-logit binary KL for the sigmoid classifiers of
    dense heads (summed over a location's anchors x classes, averaged over locations, summed over
    levels). Config: ``MODEL.DISTILL.KD`` (``WEIGHT``, ``TAU``, ``TARGET``).
    """

    CONFIG_KEY = "KD"

    @configurable
    def __init__(self, *, weight: float, tau: float, target: str):
        """
        Args:
            weight: the term's weight in the total loss.
            tau: the temperature.
            target: "roi", "dense" or "pixel".
        """
        super().__init__(weight=weight)
        _check_tau(tau, "KD")
        self.tau, self.target = float(tau), target

    @classmethod
    def from_config(cls, cfg, student, teacher):
        c = cfg.MODEL.DISTILL.KD
        return {
            "weight": c.WEIGHT,
            "tau": c.TAU,
            "target": resolve_logit_target(c.TARGET, "KD", student),
        }

    def request(self) -> TargetRequest:
        return TargetRequest(logits=(self.target,))

    def forward(self, targets: Targets):
        if self.target == "roi":
            loss = L.kd_loss(*targets.roi, tau=self.tau)
            return loss, {}
        if self.target == "pixel":
            return L.kd_loss(*targets.pixel, tau=self.tau), {}
        parts = {n: L.binary_kd_loss(s, t, tau=self.tau) for n, (s, t) in targets.dense.items()}
        return _sum_levels(parts), parts


def build_distill_terms(cfg, student: nn.Module, teacher: nn.Module) -> nn.ModuleList:
    """The terms named in ``cfg.MODEL.DISTILL.LOSSES``, built from their namespaces."""
    names = list(cfg.MODEL.DISTILL.LOSSES)
    registered = sorted(n for n, _ in DISTILL_LOSS_REGISTRY)
    if len(set(names)) != len(names):
        raise ConfigError(f"MODEL.DISTILL.LOSSES={names} names a term twice")
    terms = nn.ModuleList()
    for name in names:
        if name not in DISTILL_LOSS_REGISTRY:
            raise ConfigError(
                f"MODEL.DISTILL.LOSSES names {name!r}, which is not a registered distillation "
                f"term; registered: {registered}"
            )
        term = DISTILL_LOSS_REGISTRY.get(name)(cfg, student, teacher)
        assert isinstance(term, DistillTerm), f"{name} built a {type(term)}, not a DistillTerm"
        terms.append(term)
    return terms


def _acclimation(cfg, make):
    """``(modules, schedule, lambda)`` of ``MODEL.DISTILL.ACCLIMATION`` (modules None if off)."""
    a = cfg.MODEL.DISTILL.ACCLIMATION
    if not a.ENABLED:
        return {"acclimation": None, "acclimation_schedule": None, "acclimation_lambda": 0.0}
    if a.LAMBDA < 0:
        raise ConfigError(f"MODEL.DISTILL.ACCLIMATION.LAMBDA={a.LAMBDA} must be >= 0")
    try:
        schedule = AcclimationSchedule(a.START_ITER, a.STOP_ITER)
    except ValueError as e:
        raise ConfigError(f"MODEL.DISTILL.ACCLIMATION: {e}") from e
    return {
        "acclimation": make(),
        "acclimation_schedule": schedule,
        "acclimation_lambda": float(a.LAMBDA),
    }


class _AcclimatedTerm(DistillTerm):
    """A term whose teacher tensors may pass through DIST+ teacher acclimation (reconstruction).

    While acclimation trains, the loss is computed once on the acclimated (not detached) teacher
    tensor: its gradient w.r.t. the student is the one with the teacher side detached, and its
    gradient w.r.t. the acclimation parameters the one with the student side detached, which are
    the reconstruction's two updates. The anchor ``lambda * |theta - identity|^2`` is returned
    as the extra loss ``acclimation_anchor``.
    """

    def __init__(self, *, weight, acclimation, acclimation_schedule, acclimation_lambda):
        super().__init__(weight=weight)
        self.acclimation = acclimation
        self.acclimation_schedule = acclimation_schedule
        self.acclimation_lambda = acclimation_lambda

    def skips_parameters(self) -> bool:
        """Acclimation is unused while ``off`` (before START_ITER) and ``frozen``."""
        s = self.acclimation_schedule
        return self.acclimation is not None and (s.start_iter > 0 or s.stop_iter >= 0)

    def _phase(self) -> str:
        if self.acclimation is None:
            return "off"
        return self.acclimation_schedule.phase(get_event_storage().iter)

    def _teacher(self, module: nn.Module, t: Tensor, phase: str) -> Tuple[Tensor, bool]:
        """The teacher tensor for the loss, and whether the loss must detach it."""
        if phase == "off":
            return t, True
        if phase == "frozen":
            with torch.no_grad():
                return module(t), True
        return module(t), False

    def _extra(self, phase: str) -> Dict[str, Tensor]:
        """The anchor loss while acclimation trains, else nothing."""
        if phase != "train":
            return {}
        maps = [m for m in self.acclimation.modules() if hasattr(m, "penalty")]
        penalty = torch.stack([m.penalty() for m in maps]).sum()
        return {"acclimation_anchor": penalty * self.acclimation_lambda}


@register_term("ReviewKD")
class ReviewKD(DistillTerm):
    """Chen et al., "Distilling Knowledge via Knowledge Review", CVPR 2021.

    The student's levels pass through the ABF chain (deep to shallow, :class:`ReviewKDAdapter`)
    and each output is compared with the teacher's level by the hierarchical context loss;
    level losses are summed. Config: ``MODEL.DISTILL.REVIEWKD``.
    """

    CONFIG_KEY = "REVIEWKD"

    @configurable
    def __init__(self, *, weight: float, adapter: nn.Module):
        """
        Args:
            weight: the term's weight in the total loss.
            adapter: the ABF chain (a :class:`ReviewKDAdapter`).
        """
        super().__init__(weight=weight)
        self.adapter = adapter

    @classmethod
    def from_config(cls, cfg, student, teacher):
        c = cfg.MODEL.DISTILL.REVIEWKD
        if not c.IN_FEATURES:
            raise ConfigError("MODEL.DISTILL.REVIEWKD.IN_FEATURES is empty; name the levels")
        if c.MID_CHANNELS < 1:
            raise ConfigError(f"MODEL.DISTILL.REVIEWKD.MID_CHANNELS={c.MID_CHANNELS} must be >= 1")
        s_shapes, t_shapes = check_feature_names(
            c.IN_FEATURES, student, teacher, "MODEL.DISTILL.REVIEWKD.IN_FEATURES"
        )
        adapter = ReviewKDAdapter(s_shapes, t_shapes, list(c.IN_FEATURES), c.MID_CHANNELS, c.NORM)
        return {"weight": c.WEIGHT, "adapter": adapter}

    def request(self) -> TargetRequest:
        return TargetRequest(features=tuple(self.adapter.order))

    def forward(self, targets: Targets):
        outputs = self.adapter({n: targets.features[n][0] for n in self.adapter.order})
        parts = {n: L.hcl_loss([outputs[n]], [targets.features[n][1]]) for n in self.adapter.order}
        return _sum_levels(parts), parts


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


def _gt_at_head_resolution(batched_inputs, logits: Tensor, ignore_value: int, size_div: int):
    """The semantic ground truth of the batch, padded like the images and sampled (nearest) at
    the head's resolution: (N, H, W) labels."""
    from detectron2.structures import ImageList

    if any("sem_seg" not in x for x in batched_inputs):
        raise ConfigError(
            "MODEL.DISTILL.DIST.MASK_IGNORE needs the semantic ground truth ('sem_seg') of every "
            "training image; this dataset does not provide it."
        )
    gt = ImageList.from_tensors(
        [x["sem_seg"].to(logits.device) for x in batched_inputs], size_div, pad_value=ignore_value
    ).tensor
    stride_h = gt.shape[-2] / logits.shape[-2]
    stride_w = gt.shape[-1] / logits.shape[-1]
    ys = (torch.arange(logits.shape[-2], device=gt.device) * stride_h).long()
    xs = (torch.arange(logits.shape[-1], device=gt.device) * stride_w).long()
    return gt[:, ys][:, :, xs]


@register_term("DIST")
class DIST(_AcclimatedTerm):
    """Huang et al., "Knowledge Distillation from A Stronger Teacher" (DIST), NeurIPS 2022.

    Pearson relation matching (inter- and intra-class) of predictions on one logit target:

    - ``roi``: softmax logits of the student's sampled RoIs (rows) and the teacher's box head
      on the same RoIs;
    - ``dense`` (RetinaNet, FCOS): sigmoid probabilities without temperature, per FPN level,
      summed over levels; ``DENSE_MODE: location`` (reference: all A*K channels of a location
      are one row) or ``anchor`` (rows of K classes per anchor, opt-in);
    - ``pixel``: per-pixel softmax logits at the head's resolution, ignore-label pixels kept
      (reference) or dropped with ``MASK_IGNORE``.

    Correlations are computed per GPU (per-GPU batch), never gathered across GPUs.
    Config: ``MODEL.DISTILL.DIST``.
    """

    CONFIG_KEY = "DIST"

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
        ignore_value: int = 255,
        size_divisibility: int = 0,
        acclimation: Optional[nn.Module] = None,
        acclimation_schedule: Optional[AcclimationSchedule] = None,
        acclimation_lambda: float = 0.0,
    ):
        """
        Args:
            weight: the term's weight; beta, gamma: inter- and intra-class weights; tau: the
                softmax temperature (roi and pixel targets).
            target: "roi", "dense" or "pixel".
            dense_mode: "location" or "anchor"; num_classes: K (for "anchor").
            mask_ignore: drop ignore-label pixels (pixel target); ignore_value: that label;
                size_divisibility: the student's image padding (to align the ground truth).
            acclimation: a :class:`TemperatureAcclimation` of the teacher's logits (DIST+
                reconstruction), or None; acclimation_schedule, acclimation_lambda: its
                schedule and anchor weight.
        """
        super().__init__(
            weight=weight,
            acclimation=acclimation,
            acclimation_schedule=acclimation_schedule,
            acclimation_lambda=acclimation_lambda,
        )
        _check_tau(tau, "DIST")
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
        self.mask_ignore, self.ignore_value = mask_ignore, ignore_value
        self.size_divisibility = size_divisibility

    @classmethod
    def from_config(cls, cfg, student, teacher):
        c = cfg.MODEL.DISTILL.DIST
        target = resolve_logit_target(c.TARGET, "DIST", student)
        return {
            "weight": c.WEIGHT,
            "beta": c.BETA,
            "gamma": c.GAMMA,
            "tau": c.TAU,
            "target": target,
            "dense_mode": c.DENSE_MODE,
            "num_classes": getattr(student, "num_classes", 0),
            "mask_ignore": c.MASK_IGNORE,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "size_divisibility": student.backbone.size_divisibility,
            **_acclimation(cfg, TemperatureAcclimation),
        }

    def request(self) -> TargetRequest:
        return TargetRequest(logits=(self.target,))

    def forward(self, targets: Targets):
        phase = self._phase()
        extra = self._extra(phase)
        kw = {"beta": self.beta, "gamma": self.gamma, "tau": self.tau}
        if self.target == "roi":
            s, t = targets.roi
            t, detach = self._teacher(self.acclimation, t, phase)
            return L.dist_loss(s, t, **kw, detach_teacher=detach), {}, extra
        if self.target == "pixel":
            s, t = targets.pixel
            t, detach = self._teacher(self.acclimation, t, phase)
            if self.mask_ignore:
                gt = _gt_at_head_resolution(
                    targets.batched_inputs, s, self.ignore_value, self.size_divisibility
                )
                keep = (gt != self.ignore_value).reshape(-1)
                s = s.permute(0, 2, 3, 1).reshape(-1, s.shape[1])[keep]
                t = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])[keep]
            return L.dist_loss(s, t, **kw, detach_teacher=detach), {}, extra
        parts = {}
        for name, (s, t) in targets.dense.items():
            t, _ = self._teacher(self.acclimation, t, phase)  # detached unless acclimating
            s = torch.sigmoid(_dense_rows(s.float(), self.num_classes, self.dense_mode))
            t = torch.sigmoid(_dense_rows(t.float(), self.num_classes, self.dense_mode))
            parts[name] = L.relation_loss(s, t, self.beta, self.gamma)
        return _sum_levels(parts), parts, extra


@register_term("DIST_FEATURE")
class DISTFeature(_AcclimatedTerm):
    """DIST on FPN features: the feature part of DIST+ (Huang et al., TPAMI 2025), as d2dist's
    documented reconstruction (the paper is not openly available and has no public code).

    Per level, the adapted student feature and the teacher's become (N*H*W, C) rows; the
    inter term correlates each position's channels, the intra term each channel over all
    positions (see :func:`d2dist.losses.dist_feature_loss`); levels are summed. With
    ``MODEL.DISTILL.ACCLIMATION.ENABLED`` the teacher's features pass through per-channel affine
    acclimation maps first. Config: ``MODEL.DISTILL.DIST_FEATURE``.
    """

    CONFIG_KEY = "DIST_FEATURE"

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
    ):
        """
        Args:
            weight: the term's weight; adapters: per level, student -> teacher width.
            beta, gamma: inter and intra weights; tau, normalize: see ``dist_feature_loss``.
            acclimation: per level a :class:`FeatureAcclimation`, or None; its schedule and
                anchor weight.
        """
        super().__init__(
            weight=weight,
            acclimation=acclimation,
            acclimation_schedule=acclimation_schedule,
            acclimation_lambda=acclimation_lambda,
        )
        if normalize not in ("none", "softmax"):
            raise ConfigError(
                f"MODEL.DISTILL.DIST_FEATURE.NORMALIZE={normalize!r}; expected 'none' or 'softmax'"
            )
        _check_tau(tau, "DIST_FEATURE")
        self.adapters = adapters
        self.beta, self.gamma, self.tau, self.normalize = beta, gamma, tau, normalize

    @classmethod
    def from_config(cls, cfg, student, teacher):
        c = cfg.MODEL.DISTILL.DIST_FEATURE
        adapters = _feature_adapters(c, "DIST_FEATURE", student, teacher)
        t_shapes = teacher.backbone.output_shape()
        return {
            "weight": c.WEIGHT,
            "adapters": adapters,
            "beta": c.BETA,
            "gamma": c.GAMMA,
            "tau": c.TAU,
            "normalize": c.NORMALIZE,
            **_acclimation(
                cfg,
                lambda: nn.ModuleDict(
                    {n: FeatureAcclimation(t_shapes[n].channels) for n in adapters}
                ),
            ),
        }

    def request(self) -> TargetRequest:
        return TargetRequest(features=tuple(self.adapters.keys()))

    def forward(self, targets: Targets):
        phase = self._phase()
        parts = {}
        for name, adapter in self.adapters.items():
            s, t = targets.features[name]
            module = self.acclimation[name] if self.acclimation is not None else None
            t, detach = self._teacher(module, t, phase)
            parts[name] = L.dist_feature_loss(
                adapter(s), t, self.beta, self.gamma, self.tau, self.normalize,
                detach_teacher=detach,
            )  # fmt: skip
        extra = self._extra(phase)
        return _sum_levels(parts), parts, extra


@register_term("PKD")
class PKD(_AdaptedFeatureTerm):
    """Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
    Correlation Coefficient", NeurIPS 2022: per-level MSE of per-channel standardised features,
    summed over levels. The paper pairs FPNs of equal width; for other widths ``ADAPTER: auto``
    maps the student with a 1x1 conv first (d2dist's addition). Config: ``MODEL.DISTILL.PKD``.
    """

    CONFIG_KEY = "PKD"

    def level_loss(self, student, teacher):
        return L.pkd_loss(student, teacher)


@register_term("CWD")
class CWD(DistillTerm):
    """Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021.

    KL between per-channel spatial distributions, on FPN levels (``TARGET: features``, with
    adapters when widths differ, summed over levels) or on segmentation logits
    (``TARGET: pixel``). Config: ``MODEL.DISTILL.CWD``.
    """

    CONFIG_KEY = "CWD"

    @configurable
    def __init__(self, *, weight: float, tau: float, target: str, adapters: nn.ModuleDict):
        """
        Args:
            weight: the term's weight; tau: the temperature.
            target: "features" or "pixel"; adapters: per level (features target).
        """
        super().__init__(weight=weight)
        _check_tau(tau, "CWD")
        self.tau, self.target, self.adapters = float(tau), target, adapters

    @classmethod
    def from_config(cls, cfg, student, teacher):
        c = cfg.MODEL.DISTILL.CWD
        if c.TARGET not in ("features", "pixel"):
            raise ConfigError(
                f"MODEL.DISTILL.CWD.TARGET={c.TARGET!r}; expected 'features' or 'pixel'"
            )
        adapters = (
            _feature_adapters(c, "CWD", student, teacher)
            if c.TARGET == "features"
            else nn.ModuleDict()
        )
        return {"weight": c.WEIGHT, "tau": c.TAU, "target": c.TARGET, "adapters": adapters}

    def request(self) -> TargetRequest:
        if self.target == "pixel":
            return TargetRequest(logits=("pixel",))
        return TargetRequest(features=tuple(self.adapters.keys()))

    def forward(self, targets: Targets):
        if self.target == "pixel":
            return L.cwd_loss(*targets.pixel, tau=self.tau), {}
        parts = {}
        for name, adapter in self.adapters.items():
            s, t = targets.features[name]
            parts[name] = L.cwd_loss(adapter(s), t, tau=self.tau)
        return _sum_levels(parts), parts

"""Distillation terms: registered modules that apply a loss function to extracted targets."""

import logging
from typing import Dict, Tuple

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ...config import ConfigError
from ..adapters import build_adapter
from ..targets import (
    LOGIT_TARGETS,
    TargetRequest,
    Targets,
    check_feature_names,
    natural_logit_target,
)
from . import functional as L

__all__ = [
    "DISTILL_LOSS_REGISTRY",
    "DistillTerm",
    "KD",
    "Mimic",
    "build_distill_terms",
    "register_term",
]

logger = logging.getLogger(__name__)

DISTILL_LOSS_REGISTRY = Registry("DISTILL_LOSS")
DISTILL_LOSS_REGISTRY.__doc__ = """
Distillation terms, named in ``MODEL.DISTILL.LOSSES``. A registered class is built as
``cls(cfg, student, teacher)`` and must be a :class:`DistillTerm`: its ``request()`` says which
targets it needs, and ``forward(targets)`` returns ``(loss, per_level)``: an unweighted 0-dim
float32 loss and a dict of named parts to log. Its ``CONFIG_KEY`` names its namespace under
``MODEL.DISTILL`` (which holds at least ``WEIGHT``) and its loss key ``loss_distill_<key>``.
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
        self.weight = float(weight)

    @property
    def loss_key(self) -> str:
        return f"loss_distill_{self.CONFIG_KEY.lower()}"

    def request(self) -> TargetRequest:
        raise NotImplementedError

    def forward(self, targets: Targets) -> Tuple[Tensor, Dict[str, Tensor]]:
        raise NotImplementedError


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


@register_term("MIMIC")
class Mimic(DistillTerm):
    """Feature mimicking (e.g. Romero et al., FitNets, ICLR 2015): MSE between adapted student
    and teacher features, summed over ``IN_FEATURES``. Config: ``MODEL.DISTILL.MIMIC``."""

    CONFIG_KEY = "MIMIC"

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
        c = cfg.MODEL.DISTILL.MIMIC
        return {"weight": c.WEIGHT, "adapters": _feature_adapters(c, "MIMIC", student, teacher)}

    def request(self) -> TargetRequest:
        return TargetRequest(features=tuple(self.adapters.keys()))

    def forward(self, targets: Targets):
        parts = {}
        for name, adapter in self.adapters.items():
            s, t = targets.features[name]
            parts[name] = L.mimic_loss(adapter(s), t)
        return _sum_levels(parts), parts


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
        if tau <= 0:
            raise ConfigError(f"MODEL.DISTILL.KD.TAU={tau}; the temperature must be > 0")
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

"""The distillation-term registry, the base term, its typed result, and helpers the terms share.

A term is named once: its registered name is its class name (``ReviewKD``, ``DIST``, ...; what
``MODEL.DISTILL.LOSSES`` lists), and its config namespace is that name in capitals
(``MODEL.DISTILL.REVIEWKD``), as :attr:`DistillTerm.CONFIG_KEY` says.
"""

import logging
import math
from types import MappingProxyType
from typing import Dict, Mapping, NamedTuple

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ...errors import ConfigError
from ..adapters import build_adapter
from ..targets import (
    LOGIT_TARGETS,
    TargetRequest,
    Targets,
    check_feature_names,
    natural_logit_target,
)

__all__ = [
    "DISTILL_TERM_REGISTRY",
    "MAX_TERM_WEIGHT",
    "AdaptedFeatureTerm",
    "DistillTerm",
    "TermOutput",
    "build_distill_terms",
    "check_levels",
    "check_relation_weights",
    "check_tau",
    "feature_adapters",
    "register_term",
    "resolve_logit_target",
    "sum_levels",
]

logger = logging.getLogger(__name__)

# The largest weight a term may have. The terms' reference weights lie between 5e-7 (MGD) and 10
# (PKD); a loss term weighted above 1e6 outweighs the student's own losses (about 1) by more than
# float32 resolves (7 significant digits), so the total loss no longer carries them: such a weight
# is a typo (1e30 for 1e-3), not a setting.
MAX_TERM_WEIGHT = 1e6

DISTILL_TERM_REGISTRY = Registry("DISTILL_TERM")
DISTILL_TERM_REGISTRY.__doc__ = """
Distillation terms, named in ``MODEL.DISTILL.LOSSES`` by their class name. A registered class is a
:class:`DistillTerm`, built as ``cls(cfg, student, teacher)`` (``teacher``: the teacher model) from
its namespace ``MODEL.DISTILL.<NAME in capitals>``, which holds at least ``WEIGHT``; its
``request()`` names the target kinds it needs (a :class:`~d2dist.modeling.targets.TargetRequest`;
``forward`` is given those kinds only: reading another raises ``TargetNotRequested``),
and ``forward(targets)`` returns a :class:`TermOutput`: an unweighted 0-dim float32 loss, named
parts to log (e.g. per level) and extra losses (added as ``loss_distill_<name>_<suffix>``), all
multiplied by the term's weight and the schedule. A term whose trainable parameters do not all take
part in every step says so with ``skips_parameters()`` (multi-GPU training then looks for unused
parameters).
"""


def register_term(cls=None):
    """Register a :class:`DistillTerm` under its class name (``@register_term`` or
    ``@register_term()``); the same as ``@DISTILL_TERM_REGISTRY.register()``."""
    if cls is None:
        return register_term
    if isinstance(cls, str):
        raise TypeError(
            f"register_term({cls!r}): a term is registered under its class name (one name for "
            "LOSSES and, in capitals, its config namespace); name the class that way and use "
            "@register_term"
        )
    DISTILL_TERM_REGISTRY.register(cls)  # fvcore's register(obj) returns None
    return cls


class TermOutput(NamedTuple):
    """What a term returns: ``loss`` (unweighted, 0-dim, float32), ``parts`` (named values to
    log as ``distill/<name>/<part>``, not added to the loss) and ``extra`` (further losses,
    added as ``loss_distill_<name>_<suffix>``, weighted like ``loss``)."""

    loss: Tensor
    parts: Mapping[str, Tensor] = MappingProxyType({})
    extra: Mapping[str, Tensor] = MappingProxyType({})


class DistillTerm(nn.Module):
    """Base of the distillation terms: a weight, a target request and a loss.

    ``CONFIG_KEY`` (the config namespace under ``MODEL.DISTILL``) is the class name in capitals.
    """

    CONFIG_KEY: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.CONFIG_KEY = cls.__name__.upper()

    def __init__(self, *, weight: float):
        super().__init__()
        if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
            raise ConfigError(
                f"MODEL.DISTILL.{self.CONFIG_KEY}.WEIGHT={weight!r}: a term's weight must be a "
                "finite number >= 0 (a negative weight would push the student away from the "
                "teacher). To turn the term off, remove it from MODEL.DISTILL.LOSSES."
            )
        if weight > MAX_TERM_WEIGHT:
            raise ConfigError(
                f"MODEL.DISTILL.{self.CONFIG_KEY}.WEIGHT={weight!r} is above {MAX_TERM_WEIGHT:g}: "
                "the term would outweigh the student's own losses by more than float32 can "
                "resolve, so training would follow the term alone. The terms' reference weights "
                "lie between 5e-7 (MGD) and 10 (PKD): check the exponent."
            )
        self.weight = float(weight)

    @property
    def name(self) -> str:
        """The registered name (what ``MODEL.DISTILL.LOSSES`` lists)."""
        return type(self).__name__

    @property
    def loss_key(self) -> str:
        return f"loss_distill_{self.CONFIG_KEY.lower()}"

    def request(self) -> TargetRequest:
        raise NotImplementedError

    def skips_parameters(self) -> bool:
        """Whether some steps leave some of this term's trainable parameters unused."""
        return False

    def forward(self, targets: Targets) -> TermOutput:
        raise NotImplementedError


def check_tau(tau: float, key: str) -> None:
    if not tau > 0:
        raise ConfigError(f"MODEL.DISTILL.{key}.TAU={tau}; the temperature must be > 0")


def check_relation_weights(beta: float, gamma: float, key: str) -> None:
    """DIST's inter (BETA) and intra (GAMMA) weights: finite, >= 0, not both 0."""
    for name, value in (("BETA", beta), ("GAMMA", gamma)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"MODEL.DISTILL.{key}.{name}={value}: must be a finite number >= 0")
    if beta == 0 and gamma == 0:
        raise ConfigError(
            f"MODEL.DISTILL.{key}.BETA and GAMMA are both 0, so the term would compute nothing; "
            f"give one a positive weight, or remove {key} from MODEL.DISTILL.LOSSES."
        )


def sum_levels(parts: Dict[str, Tensor]) -> Tensor:
    return torch.stack(list(parts.values())).sum()


def check_levels(names, key: str) -> None:
    """A term's IN_FEATURES: not empty, no name twice."""
    names = list(names)
    if not names:
        raise ConfigError(f"MODEL.DISTILL.{key}.IN_FEATURES is empty; name the levels to distill")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"MODEL.DISTILL.{key}.IN_FEATURES={names} names {repeated} more than once; each "
            "level is distilled once (give the level its weight through the term's WEIGHT)."
        )


def feature_adapters(cfg_node, key: str, student, teacher) -> nn.ModuleDict:
    """Per level of ``cfg_node.IN_FEATURES``, the adapter ``cfg_node.ADAPTER`` (with
    ``ADAPTER_NORM``) from the student's width to the teacher's."""
    check_levels(cfg_node.IN_FEATURES, key)
    s_shapes, t_shapes = check_feature_names(
        cfg_node.IN_FEATURES, student, teacher, f"MODEL.DISTILL.{key}.IN_FEATURES"
    )
    adapters = nn.ModuleDict()
    for name in cfg_node.IN_FEATURES:
        adapters[name] = build_adapter(
            cfg_node.ADAPTER, s_shapes[name], t_shapes[name], cfg_node.ADAPTER_NORM, key=name
        )
    return adapters


def resolve_logit_target(value: str, key: str, student: nn.Module) -> str:
    """``TARGET`` of a logit term; ``auto`` is the student's natural target (and is logged)."""
    if value == "auto":
        try:
            target = natural_logit_target(student)
        except ConfigError as e:
            raise ConfigError(
                f"MODEL.DISTILL.{key}.TARGET auto picks the student's logits, but {e}"
            ) from e
        logger.info(f"MODEL.DISTILL.{key}.TARGET auto -> {target!r} ({type(student).__name__})")
        return target
    if value not in LOGIT_TARGETS:
        raise ConfigError(
            f"MODEL.DISTILL.{key}.TARGET={value!r}; expected 'auto' or one of {LOGIT_TARGETS}"
        )
    return value


class AdaptedFeatureTerm(DistillTerm):
    """A loss per feature level between the adapted student and the teacher, summed over levels.

    Subclasses' namespaces hold ``WEIGHT``, ``IN_FEATURES``, ``ADAPTER``, ``ADAPTER_NORM``;
    they implement :meth:`level_loss`.
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
            "adapters": feature_adapters(c, cls.CONFIG_KEY, student, teacher),
        }

    def request(self) -> TargetRequest:
        return TargetRequest(features=tuple(self.adapters.keys()))

    def level_loss(self, student: Tensor, teacher: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, targets: Targets) -> TermOutput:
        parts = {}
        for name, adapter in self.adapters.items():
            s, t = targets.features[name]
            parts[name] = self.level_loss(adapter(s), t)
        return TermOutput(sum_levels(parts), parts)


def build_distill_terms(cfg, student: nn.Module, teacher: nn.Module) -> nn.ModuleList:
    """The terms named in ``cfg.MODEL.DISTILL.LOSSES``, built from their namespaces."""
    names = list(cfg.MODEL.DISTILL.LOSSES)
    registered = sorted(n for n, _ in DISTILL_TERM_REGISTRY)
    if len(set(names)) != len(names):
        raise ConfigError(f"MODEL.DISTILL.LOSSES={names} names a term twice")
    terms = nn.ModuleList()
    for name in names:
        if name not in DISTILL_TERM_REGISTRY:
            raise ConfigError(
                f"MODEL.DISTILL.LOSSES names {name!r}, which is not a registered distillation "
                f"term; registered: {registered}"
            )
        term = DISTILL_TERM_REGISTRY.get(name)(cfg, student, teacher)
        assert isinstance(term, DistillTerm), f"{name} built a {type(term)}, not a DistillTerm"
        terms.append(term)
    return terms

"""The distillation-term registry, the base term, its options and typed result, and helpers the
terms share.

A term is named once: its registered name is its class name (``ReviewKD``, ``DIST``, ...; what
``MODEL.DISTILL.LOSSES`` lists), and its config namespace is that name in capitals
(``MODEL.DISTILL.REVIEWKD``), as :attr:`DistillTerm.CONFIG_KEY` says.

Adding a method is one file under ``d2dist/modeling/terms/`` (a :class:`DistillTerm` subclass with
``@register_term``), its tests and its documentation; nothing else in d2dist changes. The contract:

- ``config_namespace()`` (classmethod): the term's namespace, a fresh ``CfgNode`` of its keys
  with their defaults, each explained by a comment; at least ``WEIGHT``. :func:`add_distill_config
  <d2dist.config.add_distill_config>` adds the namespace of every term registered when it runs
  (d2dist's get_cfg runs it when a config is built, so a term registered when the user's module
  is imported has its namespace; a term registered after the config was built has none in it, and
  naming it in ``LOSSES`` is a ConfigError that says so).
- ``from_config(cfg, student, teacher)`` (classmethod, with ``@configurable`` on ``__init__``):
  the keyword arguments of ``__init__`` from the term's :class:`TermOptions` (its namespace's
  values, by key, and the shared settings ``acclimation`` and ``seed``) and the two models (widths
  from their ``output_shape()``). The base class passes each namespace key, in lower case, as a
  keyword argument (``WEIGHT`` -> ``weight``).
- :meth:`DistillTerm.build` is the one constructor path d2dist uses, from yacs
  (:func:`build_distill_terms`, ``MODEL.DISTILL.<KEY>``) and from LazyConfig
  (:class:`~d2dist.modeling.TermSpec`, its options over the defaults of ``config_namespace()``):
  ``cls(**cls.from_config(options, student, teacher))``. Values are checked where they are used
  (``__init__`` or ``from_config``), with messages naming ``MODEL.DISTILL.<KEY>.<OPTION>``.
- ``request()``, ``forward(targets)`` and ``skips_parameters()``: see
  :data:`DISTILL_TERM_REGISTRY`.
"""

import copy
import logging
import math
from types import MappingProxyType
from typing import Dict, Mapping, NamedTuple

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ...config import register_distill_namespaces
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
    "TermOptions",
    "TermOutput",
    "build_distill_terms",
    "check_levels",
    "check_relation_weights",
    "check_tau",
    "feature_adapters",
    "feature_namespace",
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
:class:`DistillTerm`, built by ``cls.build(student, teacher, options)`` (``teacher``: the teacher
model; ``options``: a :class:`TermOptions`) from its namespace ``MODEL.DISTILL.<NAME in capitals>``,
which its ``config_namespace()`` declares and which holds at least ``WEIGHT``; its
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


class TermOptions(CN):
    """What a term is built from besides the student and the teacher, the same from a yacs config
    and from a LazyConfig :class:`~d2dist.modeling.TermSpec`: the values of the term's namespace,
    by key (``options.WEIGHT``: the defaults of its ``config_namespace()`` with what the config
    gave), and as attributes the settings shared by the terms: ``key`` (the namespace's name, e.g.
    "KD"), ``acclimation`` (the values of ``MODEL.DISTILL.ACCLIMATION``) and ``seed`` (the run's
    ``SEED``; -1: none given). Frozen.
    """

    def __init__(self, values: CN, *, key: str, acclimation: CN, seed: int = -1):
        super().__init__()
        for name, value in values.items():  # as given (no yacs type check: the term checks)
            self[name] = copy.deepcopy(value)
        self.__dict__.update(key=key, acclimation=acclimation.clone(), seed=int(seed))
        self.freeze()


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

    @classmethod
    def config_namespace(cls) -> CN:
        """The term's namespace ``MODEL.DISTILL.<CONFIG_KEY>``: a fresh node of its keys with their
        defaults (at least ``WEIGHT``). Subclasses declare theirs, each key explained by a
        comment."""
        c = CN()
        c.WEIGHT = 1.0  # the term's weight in the total loss
        return c

    @classmethod
    def from_config(cls, cfg: TermOptions, student: nn.Module, teacher: nn.Module) -> dict:
        """The keyword arguments of ``__init__`` from the term's options (``cfg``, a
        :class:`TermOptions`) and the two models; here each namespace key in lower case."""
        return {key.lower(): value for key, value in cfg.items()}

    @classmethod
    def build(cls, student: nn.Module, teacher: nn.Module, options: TermOptions) -> "DistillTerm":
        """The term for these two models (``teacher``: the teacher model) and ``options``: the one
        constructor path of yacs configs and LazyConfig's ``TermSpec``."""
        term = cls(**cls.from_config(options, student, teacher))
        assert isinstance(term, DistillTerm), f"{cls.__name__} built a {type(term)}"
        return term

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


def feature_namespace(weight: float, in_features) -> CN:
    """A namespace of a term on feature levels: ``WEIGHT``, ``IN_FEATURES`` and the adapters'
    ``ADAPTER`` and ``ADAPTER_NORM`` (terms add their own keys)."""
    c = CN()
    c.WEIGHT = weight
    c.IN_FEATURES = list(in_features)  # the levels, by the backbone's feature names
    # "auto" (identity when channels match, else 1x1 conv), "IdentityAdapter", "Conv1x1Adapter",
    # "TorchInitConv1x1Adapter" (PyTorch's default init, as mmrazor's align modules)
    c.ADAPTER = "auto"
    c.ADAPTER_NORM = ""  # "", "BN", "GN", "SyncBN", ... (Detectron2's get_norm)
    return c


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

    Subclasses' namespaces hold ``WEIGHT``, ``IN_FEATURES``, ``ADAPTER``, ``ADAPTER_NORM``
    (:func:`feature_namespace`); they implement :meth:`level_loss`.
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
        return {
            "weight": cfg.WEIGHT,
            "adapters": feature_adapters(cfg, cls.CONFIG_KEY, student, teacher),
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
    d = cfg.MODEL.DISTILL
    names = list(d.LOSSES)
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
        cls = DISTILL_TERM_REGISTRY.get(name)
        if cls.CONFIG_KEY not in d:
            raise ConfigError(
                f"MODEL.DISTILL.LOSSES names {name!r}, but this config has no namespace "
                f"MODEL.DISTILL.{cls.CONFIG_KEY}: the term was registered after the config was "
                "built (add_distill_config adds the namespaces of the terms registered then). "
                "Import the module that registers it before building the config (d2dist's "
                "tools: name a function of that module with --config-function)."
            )
        options = TermOptions(
            d[cls.CONFIG_KEY], key=cls.CONFIG_KEY, acclimation=d.ACCLIMATION, seed=cfg.SEED
        )
        terms.append(cls.build(student, teacher, options))
    return terms


def _term_namespaces() -> Dict[str, CN]:
    """The namespace of every registered term, for :func:`~d2dist.config.add_distill_config`."""
    namespaces = {}
    for name, cls in DISTILL_TERM_REGISTRY:
        if not (isinstance(cls, type) and issubclass(cls, DistillTerm)):
            raise TypeError(
                f"DISTILL_TERM_REGISTRY holds {name!r}, a {type(cls).__name__}; a registered "
                "term must be a DistillTerm subclass"
            )
        namespaces[cls.CONFIG_KEY] = cls.config_namespace()
    return namespaces


register_distill_namespaces(_term_namespaces)

"""Building blocks for LazyConfig (``.py``) distillation configs and for Python users.

A LazyConfig distillation config's ``model`` is the :class:`~d2dist.modeling.Distiller` itself::

    from detectron2.config import LazyCall as L
    from d2dist.modeling import Distiller, TermSpec, teacher_from_file, yacs_model

    model = L(Distiller)(
        student=...,   # any LazyConfig model node, or L(yacs_model)(config_file="student.yaml")
        teacher=L(teacher_from_file)(config_file="teacher.py" or "teacher.yaml", weights="t.pth"),
        terms=[L(TermSpec)(name="ReviewKD", weight=1.0, in_features=["p2", "p3"], mid_channels=64)],
        input_format="BGR",   # the student's, as its data loader gives the images
    )

Each :class:`TermSpec` is built once the student and the teacher exist, through the same
registered term, constructor path and checks as a yacs config's ``MODEL.DISTILL.<NAME>``
namespace (:meth:`~d2dist.modeling.terms.DistillTerm.build`), so its adapters' widths come from the
two models' ``output_shape()``.
"""

import os
from typing import Optional, Sequence

from detectron2.utils.file_io import PathManager
from torch import nn

from ..config import get_cfg, merge_config_file, merge_overrides
from ..errors import ConfigError
from .teacher import Teacher, build_teacher
from .teacher_config import build_meta_arch
from .terms import DISTILL_TERM_REGISTRY, DistillTerm, TermOptions
from .terms.acclimation import acclimation_namespace

__all__ = ["TermSpec", "teacher_from_file", "yacs_model"]


def teacher_from_file(
    config_file: str,
    weights: str,
    *,
    opts: Sequence[str] = (),
    config_functions: Sequence[str] = (),
    autocast: str = "",
    channels_last: bool = False,
    device: str = "cpu",
) -> Teacher:
    """A :class:`Teacher` from its own config file, exactly as ``MODEL.DISTILL.TEACHER`` builds it
    (a yacs ``.yaml`` or LazyConfig ``.py`` file, ``model_zoo:`` names allowed; ``opts`` are
    ``KEY VALUE`` pairs for yacs, ``key=value`` strings for LazyConfig). Built on ``device`` (the
    CPU by default: a Distiller moves it with itself); its weights are loaded by
    :meth:`Teacher.load` (the trainers do it)."""
    cfg = get_cfg(*config_functions)
    cfg.MODEL.DEVICE = device
    t = cfg.MODEL.DISTILL.TEACHER
    t.CONFIG_FILE, t.WEIGHTS, t.OPTS = config_file, weights, list(opts)
    t.AUTOCAST, t.CHANNELS_LAST = autocast, channels_last
    return build_teacher(cfg)


def yacs_model(
    config_file: str, *, opts: Sequence[str] = (), config_functions: Sequence[str] = ()
) -> nn.Module:
    """The (untrained) model of a yacs config file (a path, or ``d2dist://configs/...``), for a
    LazyConfig Distiller's ``student``."""
    cfg = get_cfg(*config_functions)
    what = f"yacs_model({config_file!r})"
    if not PathManager.isfile(config_file):
        raise ConfigError(
            f"{what}: the config file does not exist (working directory {os.getcwd()})"
        )
    merge_config_file(cfg, config_file, what)  # keys and value types checked as they are read
    merge_overrides(cfg, list(opts), f"{what}, opts={list(opts)}")
    cfg.MODEL.DEVICE = "cpu"
    return build_meta_arch(cfg, cfg.MODEL.META_ARCHITECTURE, f"{config_file}: META_ARCHITECTURE")


class TermSpec:
    """A distillation term by its registered name and the options of its config namespace.

    Args:
        name: the registered name (what ``MODEL.DISTILL.LOSSES`` lists, e.g. "ReviewKD").
        acclimation: options of ``MODEL.DISTILL.ACCLIMATION`` for the terms that use it
            (e.g. ``{"enabled": True}``).
        **options: the term's namespace keys (``MODEL.DISTILL.<KEY>``), in any case:
            ``weight=1.2, in_features=["p2", "p3"]``.
    """

    def __init__(self, name: str, *, acclimation: Optional[dict] = None, **options):
        self.name, self.options, self.acclimation = name, dict(options), dict(acclimation or {})

    def __repr__(self) -> str:
        return f"TermSpec({self.name!r}, {self.options})"

    def build(self, student: nn.Module, teacher: nn.Module) -> DistillTerm:
        """The term for these two models (widths from their ``output_shape()``): its options over
        the defaults its ``config_namespace()`` declares, built by :meth:`DistillTerm.build` as
        from a yacs config."""
        registered = sorted(n for n, _ in DISTILL_TERM_REGISTRY)
        if self.name not in registered:
            raise ConfigError(
                f"TermSpec(name={self.name!r}): not a registered distillation term; registered: "
                f"{registered}"
            )
        cls = DISTILL_TERM_REGISTRY.get(self.name)
        values = self._over(cls.config_namespace(), cls.CONFIG_KEY, self.options)
        acclimation = self._over(acclimation_namespace(), "ACCLIMATION", self.acclimation)
        options = TermOptions(values, key=cls.CONFIG_KEY, acclimation=acclimation)
        return cls.build(student, teacher, options)

    def _over(self, node, key: str, values: dict):
        """``node`` (a namespace's defaults) with ``values`` (options in any case) set."""
        for option, value in values.items():
            if option.upper() not in node:
                raise ConfigError(
                    f"TermSpec({self.name!r}) option {option!r}: MODEL.DISTILL.{key} has no "
                    f"{option.upper()!r}; it has {sorted(k.lower() for k in node)}."
                )
            node[option.upper()] = value if not isinstance(value, tuple) else list(value)
        return node

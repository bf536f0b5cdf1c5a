"""A teacher's config: found (a path, ``model_zoo:``, ``d2dist://``), read from its own file
(yacs, starting from the defaults the student's config was built on, or LazyConfig) and its model
built, whatever meta-architecture it is (:func:`build_meta_arch`)."""

import logging
import os

from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..config import (
    apply_config_functions,
    check_pixel_statistics,
    config_defaults,
    merge_config_file,
    merge_overrides,
)
from ..errors import ConfigError
from ..file_io import local_path

__all__ = ["build_meta_arch", "is_lazy_config", "load_lazy_teacher_config", "load_teacher_config"]

logger = logging.getLogger(__name__)


def build_meta_arch(cfg: CfgNode, name: str, key: str) -> nn.Module:
    """Build the meta-architecture ``name`` from ``cfg`` (with ``MODEL.META_ARCHITECTURE=name``).

    Unlike Detectron2's ``build_model`` it neither moves the model nor logs it.
    """
    registered = sorted(n for n, _ in META_ARCH_REGISTRY)
    if name == "Distiller" or name not in registered:
        raise ConfigError(
            f"{key}={name!r} is not a meta-architecture d2dist can distill "
            f"{'to or from' if name == 'Distiller' else ''}; registered: "
            f"{[n for n in registered if n != 'Distiller']}. Import the module that registers "
            "your own meta-architecture before building the model."
        )
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.META_ARCHITECTURE = name
    cfg.freeze()
    try:
        return META_ARCH_REGISTRY.get(name)(cfg)
    except ConfigError:
        raise
    except Exception as e:  # not caught: the original error goes on, with its traceback
        e.add_note(
            f"(d2dist: raised while building {key}={name!r}. If it is not the meta-architecture "
            "the config describes, set it to that one, e.g. MODEL.DISTILL.STUDENT_META_ARCHITECTURE "
            "'RetinaNet' for a RetinaNet config.)"
        )
        raise


def _teacher_config_path(cfg: CfgNode) -> str:
    """``TEACHER.CONFIG_FILE`` resolved: a file path (``model_zoo:`` names a model-zoo config)."""
    tcfg = cfg.MODEL.DISTILL.TEACHER
    path = tcfg.CONFIG_FILE
    if not path:
        raise ConfigError(
            "MODEL.DISTILL.TEACHER.CONFIG_FILE is empty: set it to the teacher's own Detectron2 "
            "config file (a path, or 'model_zoo:COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml')."
        )
    if path.startswith("model_zoo:"):
        from detectron2 import model_zoo

        try:
            return model_zoo.get_config_file(path[len("model_zoo:") :])
        except RuntimeError as e:
            raise ConfigError(f"MODEL.DISTILL.TEACHER.CONFIG_FILE={tcfg.CONFIG_FILE!r}: {e}") from e
    path = _local(path, "MODEL.DISTILL.TEACHER.CONFIG_FILE", _STUDENT_ALONE)
    if not os.path.isfile(path):
        raise ConfigError(
            f"MODEL.DISTILL.TEACHER.CONFIG_FILE={tcfg.CONFIG_FILE!r}"
            f"{_resolved(path, tcfg.CONFIG_FILE)} does not exist (working directory "
            f"{os.getcwd()}). Give a path to the teacher's config file (relative to the "
            "working directory), 'd2dist://<path>' for a file of the d2dist checkout, or "
            "'model_zoo:<path>' for a config of Detectron2's model zoo." + _STUDENT_ALONE
        )
    return path


# Building a Distiller needs its teacher's config (the terms' widths come from it); evaluating
# and predicting need the student alone.
_STUDENT_ALONE = (
    " To evaluate or predict with the distilled student, no teacher file is needed: build "
    "d2dist.engine.for_evaluation(cfg), the student's config (e.g. "
    "DefaultPredictor(for_evaluation(cfg)); d2dist's tools and DistillationMixin's build_model "
    "do so for evaluation)."
)


def _resolved(path: str, given: str) -> str:
    return f" (the file {path})" if path != given else ""


def _local(path: str, key: str, hint: str = "") -> str:
    """A ``d2dist://`` path as the file of the checkout it names (see :mod:`d2dist.file_io`)."""
    try:
        return local_path(path)
    except FileNotFoundError as e:
        raise ConfigError(f"{key}: {e}{hint}") from e


def is_lazy_config(path: str) -> bool:
    """Whether a config file is a LazyConfig (Python) file rather than a yacs YAML file."""
    return path.endswith(".py")


# What an unknown key of the teacher's config may mean besides a typo.
_TEACHER_PROJECT_KEYS = (
    " If the key belongs to a Detectron2 project (PointRend, Panoptic-DeepLab, your own), name the "
    "project's config function in MODEL.DISTILL.TEACHER.CONFIG_FUNCTIONS, e.g. "
    "['detectron2.projects.point_rend.add_pointrend_config'], or apply it to the student's config "
    "too (tools/train_net.py --config-function NAME; in your own train_net, call it before "
    "add_distill_config)."
)


def load_teacher_config(cfg: CfgNode) -> CfgNode:
    """The teacher's yacs config: the defaults the student's config started from
    (:func:`d2dist.config.config_defaults`), ``TEACHER.CONFIG_FUNCTIONS``, ``TEACHER.CONFIG_FILE``
    and ``TEACHER.OPTS``.

    The teacher runs on the student's ``MODEL.DEVICE``.
    """
    tcfg = cfg.MODEL.DISTILL.TEACHER
    path = _teacher_config_path(cfg)
    if is_lazy_config(path):
        raise ConfigError(
            f"MODEL.DISTILL.TEACHER.CONFIG_FILE={tcfg.CONFIG_FILE!r} is a LazyConfig file, which "
            "has no yacs config; build the teacher with d2dist.modeling.build_teacher(cfg)."
        )
    teacher_cfg = config_defaults(cfg)
    apply_config_functions(
        teacher_cfg, tcfg.CONFIG_FUNCTIONS, "MODEL.DISTILL.TEACHER.CONFIG_FUNCTIONS names"
    )
    what = f"teacher config {path!r}"
    where = f"{what} with MODEL.DISTILL.TEACHER.OPTS={list(tcfg.OPTS)}"
    try:
        merge_config_file(teacher_cfg, path, what, _TEACHER_PROJECT_KEYS)
        merge_overrides(teacher_cfg, list(tcfg.OPTS), where, _TEACHER_PROJECT_KEYS)
    except ConfigError:
        raise
    except (KeyError, ValueError, AssertionError) as e:  # what yacs itself still refuses
        hint = _TEACHER_PROJECT_KEYS if "Non-existent" in str(e) else ""
        raise ConfigError(f"{where}: {e}.{hint}") from e
    check_pixel_statistics(teacher_cfg, where)
    if teacher_cfg.MODEL.META_ARCHITECTURE == "Distiller":
        raise ConfigError(
            f"the teacher config {path!r} is itself a Distiller config; the teacher must be a "
            "plain Detectron2 model (export a distilled student with tools/export_student.py "
            "to use it as a teacher)."
        )
    teacher_cfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    teacher_cfg.MODEL.WEIGHTS = tcfg.WEIGHTS
    teacher_cfg.freeze()
    return teacher_cfg


def load_lazy_teacher_config(cfg: CfgNode):
    """The teacher's LazyConfig (``TEACHER.CONFIG_FILE`` a ``.py`` file, ``TEACHER.OPTS`` its
    ``key=value`` overrides), which must define ``model``."""
    from detectron2.config import LazyConfig

    tcfg = cfg.MODEL.DISTILL.TEACHER
    path = _teacher_config_path(cfg)
    opts = list(tcfg.OPTS)
    bad = [o for o in opts if "=" not in o]
    if bad:
        raise ConfigError(
            f"MODEL.DISTILL.TEACHER.OPTS={opts}: a LazyConfig teacher takes 'key=value' "
            f"overrides (e.g. 'model.roi_heads.num_classes=3'); {bad} is not of that form."
        )
    try:
        lazy = LazyConfig.apply_overrides(LazyConfig.load(path), opts)
    except Exception as e:  # a user's Python file: any exception is possible
        raise ConfigError(
            f"could not load the LazyConfig teacher {path!r} with MODEL.DISTILL.TEACHER.OPTS="
            f"{opts}: {type(e).__name__}: {e}"
        ) from e
    if "model" not in lazy:
        raise ConfigError(
            f"the LazyConfig teacher {path!r} defines no 'model' (it has {sorted(lazy)}); the "
            "teacher is the instantiated `model` of its config file."
        )
    return lazy

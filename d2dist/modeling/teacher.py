"""The teacher: built from its own Detectron2 config, loaded strictly, frozen, always in eval."""

import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from ..config import ConfigError

__all__ = ["build_teacher", "load_teacher_config", "build_meta_arch"]

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
    return META_ARCH_REGISTRY.get(name)(cfg)


def load_teacher_config(cfg: CfgNode) -> CfgNode:
    """The teacher's config: d2dist's defaults + ``TEACHER.CONFIG_FILE`` + ``TEACHER.OPTS``.

    The teacher runs on the student's ``MODEL.DEVICE``.
    """
    from ..config import get_cfg

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
            path = model_zoo.get_config_file(path[len("model_zoo:") :])
        except RuntimeError as e:
            raise ConfigError(f"MODEL.DISTILL.TEACHER.CONFIG_FILE={tcfg.CONFIG_FILE!r}: {e}") from e
    elif not os.path.isfile(path):
        raise ConfigError(
            f"MODEL.DISTILL.TEACHER.CONFIG_FILE={path!r} does not exist (working directory "
            f"{os.getcwd()}). Give a path to the teacher's config file, or 'model_zoo:<path>' "
            "for a config of Detectron2's model zoo."
        )
    teacher_cfg = get_cfg()
    try:
        teacher_cfg.merge_from_file(path)
        teacher_cfg.merge_from_list(list(tcfg.OPTS))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"teacher config {path!r} with MODEL.DISTILL.TEACHER.OPTS={list(tcfg.OPTS)}: {e}"
        ) from e
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


class _StrictCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, but a key or shape mismatch is an error instead of a log line."""

    def _log_incompatible_keys(self, incompatible) -> None:
        problems = []
        if incompatible.missing_keys:
            problems.append(f"missing in the checkpoint: {incompatible.missing_keys}")
        if incompatible.unexpected_keys:
            problems.append(f"not in the teacher model: {incompatible.unexpected_keys}")
        if incompatible.incorrect_shapes:
            shapes = [
                f"{k}: checkpoint {a} vs model {b}" for k, a, b in incompatible.incorrect_shapes
            ]
            problems.append(f"shape mismatches: {shapes}")
        if problems:
            raise ConfigError(
                f"MODEL.DISTILL.TEACHER.WEIGHTS does not fit the teacher built from "
                f"TEACHER.CONFIG_FILE ({'; '.join(problems)}). Use the weights that were "
                "trained with that config (and its OPTS)."
            )


def build_teacher(cfg: CfgNode) -> nn.Module:
    """Build the frozen, eval-mode teacher described by ``cfg.MODEL.DISTILL.TEACHER``.

    Its weights are loaded strictly: missing, unexpected or mis-shaped keys are an error, and so
    is an empty ``TEACHER.WEIGHTS`` (a random teacher is never used by accident).
    """
    teacher_cfg = load_teacher_config(cfg)
    weights = cfg.MODEL.DISTILL.TEACHER.WEIGHTS
    if not weights:
        raise ConfigError(
            "MODEL.DISTILL.TEACHER.WEIGHTS is empty: the teacher must be trained. Set it to the "
            "teacher's checkpoint (a path, or a URL such as detectron2://...)."
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(
            f"MODEL.DISTILL.TEACHER.WEIGHTS={weights!r} does not exist (working directory "
            f"{os.getcwd()})."
        )
    teacher = build_meta_arch(
        teacher_cfg, teacher_cfg.MODEL.META_ARCHITECTURE, "teacher MODEL.META_ARCHITECTURE"
    )
    teacher.to(torch.device(teacher_cfg.MODEL.DEVICE))
    try:
        _StrictCheckpointer(teacher).load(weights)
    except ConfigError:
        raise
    except Exception as e:  # unreadable / corrupt files surface as many exception types
        raise ConfigError(
            f"could not read MODEL.DISTILL.TEACHER.WEIGHTS={weights!r}: {type(e).__name__}: {e}"
        ) from e
    teacher.eval()
    teacher.requires_grad_(False)
    teacher.cfg = teacher_cfg  # what the target extractors read (input format, etc.)
    logger.info(
        f"Teacher: {teacher_cfg.MODEL.META_ARCHITECTURE} from {cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE}"
        f", weights {weights} ({sum(p.numel() for p in teacher.parameters()) / 1e6:.1f}M params)"
    )
    return teacher

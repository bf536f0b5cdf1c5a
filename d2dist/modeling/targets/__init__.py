"""Target kinds: aligned (student, teacher) pairs for the distillation terms.

Built in (one file each): ``features`` (backbone levels by name), ``roi`` (box logits on the
student's RoIs), ``dense`` (RetinaNet / FCOS head logits per level), ``pixel`` (semantic logits),
``gt`` (the ground truth at each level's resolution) and ``cross_head`` (the student's head
features through the frozen teacher's remaining head layers). A kind of your own: subclass
:class:`TargetKind`, set ``name`` and register it in :data:`TARGET_KIND_REGISTRY`. A kind whose
student tensors have one row per image and branch (TridentNet) pairs them with
:func:`pair_batch` / :func:`repeat_batch`, as the built-in kinds do.
"""

from . import cross_head, dense, features, ground_truth, pixel, roi  # noqa: F401  registers kinds
from .base import (
    TARGET_KIND_REGISTRY,
    LogitPair,
    NamedRegistry,
    TargetKind,
    TargetNotRequested,
    TargetRequest,
    Targets,
    TeacherRun,
    check_feature_names,
    crop_to_common,
    leaf,
    num_branches,
    pair_batch,
    repeat_batch,
)
from .cross_head import CrossHead
from .extractor import TargetExtractor
from .ground_truth import LevelGroundTruth
from .logits import LOGIT_TARGETS, natural_logit_target, teacher_classifiers

__all__ = [
    "CrossHead",
    "LOGIT_TARGETS",
    "LevelGroundTruth",
    "LogitPair",
    "NamedRegistry",
    "TARGET_KIND_REGISTRY",
    "TargetExtractor",
    "TargetKind",
    "TargetNotRequested",
    "TargetRequest",
    "Targets",
    "TeacherRun",
    "check_feature_names",
    "crop_to_common",
    "leaf",
    "natural_logit_target",
    "num_branches",
    "pair_batch",
    "repeat_batch",
    "teacher_classifiers",
]

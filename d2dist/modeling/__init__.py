"""d2dist's models: the Distiller and its parts (teacher, recorder, target kinds, terms, helper
modules, acclimation)."""

# registers the Distiller, FCOS, a dilated ResNet-18/34, DeepLabV3 with an auxiliary head
from . import backbone, heads, meta_arch  # noqa: F401
from .adapters import DISTILL_MODULE_REGISTRY, build_adapter, build_distill_module
from .lazy import TermSpec, teacher_from_file, yacs_model
from .meta_arch import Distiller
from .mixup import Mixup
from .recorder import Recorder
from .targets import TARGET_KIND_REGISTRY, TargetExtractor, TargetKind, TargetRequest, Targets
from .teacher import Teacher, TeacherNotLoadedError, build_teacher
from .teacher_config import load_teacher_config
from .teacher_labels import TeacherLabels
from .terms import (
    DISTILL_TERM_REGISTRY,
    DistillTerm,
    TermOptions,
    TermOutput,
    build_distill_terms,
    register_term,
)

__all__ = [
    "DISTILL_MODULE_REGISTRY",
    "DISTILL_TERM_REGISTRY",
    "DistillTerm",
    "Distiller",
    "Mixup",
    "Recorder",
    "TARGET_KIND_REGISTRY",
    "TargetExtractor",
    "TargetKind",
    "TargetRequest",
    "Targets",
    "Teacher",
    "TeacherLabels",
    "TeacherNotLoadedError",
    "TermOptions",
    "TermOutput",
    "TermSpec",
    "build_adapter",
    "build_distill_module",
    "build_distill_terms",
    "build_teacher",
    "load_teacher_config",
    "register_term",
    "teacher_from_file",
    "yacs_model",
]

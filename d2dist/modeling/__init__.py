"""d2dist's models: the Distiller and its parts (teacher, recorder, targets, adapters, losses)."""

from . import backbone, meta_arch  # noqa: F401  registers Distiller, FCOS, a dilated ResNet-18/34
from .adapters import ADAPTER_REGISTRY, build_adapter
from .lazy import TermSpec, teacher_from_file, yacs_model
from .losses import DISTILL_LOSS_REGISTRY, DistillTerm, build_distill_terms
from .meta_arch import Distiller
from .recorder import Recorder
from .targets import TargetExtractor, TargetRequest, Targets
from .teacher import Teacher, TeacherNotLoadedError, build_teacher, load_teacher_config

__all__ = [
    "ADAPTER_REGISTRY",
    "DISTILL_LOSS_REGISTRY",
    "DistillTerm",
    "Distiller",
    "Recorder",
    "TargetExtractor",
    "TargetRequest",
    "Targets",
    "Teacher",
    "TeacherNotLoadedError",
    "TermSpec",
    "build_adapter",
    "build_distill_terms",
    "build_teacher",
    "load_teacher_config",
    "teacher_from_file",
    "yacs_model",
]

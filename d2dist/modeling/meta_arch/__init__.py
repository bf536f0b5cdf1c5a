"""Meta-architectures d2dist registers in Detectron2's META_ARCH_REGISTRY."""

from .distiller import Distiller
from .fcos import FCOS

__all__ = ["Distiller", "FCOS"]

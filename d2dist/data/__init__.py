"""d2dist's datasets: the built-in synthetic shapes dataset and its registration, and the checks
every dataset passes when it is loaded (:mod:`.checks`)."""

from . import builtin  # noqa: F401  registers the built-in datasets
from .builtin import ensure_generated, register_shapes
from .checks import (
    check_dataset_dicts,
    checked_dataset_dicts,
    load_coco_format,
    register_coco_format,
)
from .shapes import CLASSES, ShapesSpec, generate_shapes

__all__ = [
    "CLASSES",
    "ShapesSpec",
    "check_dataset_dicts",
    "checked_dataset_dicts",
    "ensure_generated",
    "generate_shapes",
    "load_coco_format",
    "register_coco_format",
    "register_shapes",
]

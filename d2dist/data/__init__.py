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
from .unlabeled import (
    is_unlabeled,
    load_image_folder,
    register_image_folder,
    repeat_factors_for_fraction,
)

__all__ = [
    "CLASSES",
    "ShapesSpec",
    "check_dataset_dicts",
    "checked_dataset_dicts",
    "ensure_generated",
    "generate_shapes",
    "is_unlabeled",
    "load_image_folder",
    "register_image_folder",
    "repeat_factors_for_fraction",
    "load_coco_format",
    "register_coco_format",
    "register_shapes",
]

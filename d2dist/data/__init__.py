"""d2dist's datasets: the built-in synthetic shapes dataset and its registration."""

from . import builtin  # noqa: F401  registers the built-in datasets
from .builtin import ensure_generated, register_shapes
from .shapes import CLASSES, ShapesSpec, generate_shapes

__all__ = ["CLASSES", "ShapesSpec", "ensure_generated", "generate_shapes", "register_shapes"]

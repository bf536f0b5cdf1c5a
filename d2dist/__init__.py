"""d2dist: knowledge distillation for Detectron2 detection and segmentation models."""

__version__ = "0.2.0"

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "d2dist needs Detectron2, which is not importable in this Python "
        f"({e}). Run `make env` in the d2dist checkout to create .venv/ with it, or install "
        "Detectron2 yourself: https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    ) from e

from . import data  # noqa: F401,E402  registers the built-in datasets
from . import file_io  # noqa: F401,E402  registers the d2dist:// paths
from . import modeling  # noqa: F401,E402  registers Distiller, FCOS and the distillation terms
from .config import add_distill_config, get_cfg  # noqa: E402

__all__ = ["__version__", "add_distill_config", "get_cfg"]

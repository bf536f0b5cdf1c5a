"""d2dist: knowledge distillation for Detectron2 detection and segmentation models."""

__version__ = "0.2.0"

from .cli._warnings import ignoring_import_warnings  # a few lines, no d2dist import

# Importing Detectron2's models calls torch.jit.script (fvcore's losses, box_regression), which
# PyTorch deprecates: that warning (only) is hidden during this import; no filter stays installed
# (d2dist/cli/_warnings.py).
with ignoring_import_warnings():
    try:
        import detectron2.modeling  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "d2dist needs Detectron2, which is not importable in this Python "
            f"({e}). In the d2dist checkout, `make env` installs it (any Python; or `bash "
            "tools/install_env.sh VENV` for another virtual environment), as does `pip install "
            "'.[detectron2]'` on Python 3.10 (see setup.py); or install Detectron2 yourself: "
            "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
        ) from e

from . import data  # noqa: F401,E402  registers the built-in datasets
from . import file_io  # noqa: F401,E402  registers the d2dist:// paths
from . import modeling  # noqa: F401,E402  registers Distiller, FCOS and the distillation terms
from .config import add_distill_config, get_cfg  # noqa: E402

__all__ = ["__version__", "add_distill_config", "get_cfg"]

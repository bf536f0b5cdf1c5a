"""d2dist's configuration: Detectron2's yacs config plus d2dist's keys."""

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as _d2_get_cfg
from detectron2.projects.deeplab import add_deeplab_config

__all__ = ["ConfigError", "add_distill_config", "get_cfg"]


class ConfigError(ValueError):
    """A configuration or command-line value that d2dist cannot run with.

    The message names the key, the value given, what is expected and how to fix it;
    ``tools/train_net.py`` prints it without a traceback.
    """


def add_distill_config(cfg: CN) -> None:
    """Add d2dist's keys to a Detectron2 config, in place.

    Writes only under ``cfg.MODEL.DISTILL``, so it can be added to any Detectron2 project's
    config next to that project's own ``add_*_config`` calls.
    """
    cfg.MODEL.DISTILL = CN()


def get_cfg() -> CN:
    """Detectron2's default config with the keys of every model d2dist supports.

    That is Detectron2's defaults, DeepLab's keys (``detectron2.projects.deeplab``, so DeepLab
    students and teachers can be configured) and d2dist's ``MODEL.DISTILL``.
    """
    cfg = _d2_get_cfg()
    add_deeplab_config(cfg)
    add_distill_config(cfg)
    return cfg

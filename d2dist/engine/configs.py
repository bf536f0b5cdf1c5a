"""A Distiller config seen as its student's: what evaluation, export and a project's data code
build from it, for yacs configs and LazyConfig ``model`` nodes alike."""

from detectron2.config import CfgNode
from detectron2.utils.registry import locate
from omegaconf import DictConfig

from ..errors import ConfigError
from ..modeling import Distiller

__all__ = [
    "data_config",
    "for_evaluation",
    "is_distiller_node",
    "lazy_target",
    "student_config",
    "student_meta_architecture",
]


def student_meta_architecture(cfg: CfgNode) -> str:
    """The meta-architecture of ``cfg``'s model: a Distiller config's student's, else its own."""
    if cfg.MODEL.META_ARCHITECTURE == "Distiller":
        return cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    return cfg.MODEL.META_ARCHITECTURE


def student_config(cfg: CfgNode) -> CfgNode:
    """The student's own config: the Distiller config without ``MODEL.DISTILL``."""
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        raise ConfigError(
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}: not a Distiller config, "
            "so there is no student to export."
        )
    scfg = cfg.clone()
    scfg.defrost()
    scfg.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    scfg.MODEL.pop("DISTILL")
    return scfg


def data_config(cfg: CfgNode) -> CfgNode:
    """``cfg`` as a project's data and evaluation code should see it: a Distiller config with
    its student's ``MODEL.META_ARCHITECTURE`` (projects choose their mapper from it, e.g.
    DeepLab's and PointRend's ``build_train_loader`` test ``"SemanticSegmentor" in
    cfg.MODEL.META_ARCHITECTURE``); every other key as it is. A plain config is returned as is."""
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        return cfg
    out = cfg.clone()
    out.defrost()
    out.MODEL.META_ARCHITECTURE = student_meta_architecture(cfg)
    out.freeze()
    return out


def lazy_target(node):
    """What a LazyConfig node's ``_target_`` names (a dotted name located), None for a node
    without one or a value that is not a node."""
    target = node.get("_target_") if isinstance(node, (DictConfig, dict)) else None
    return locate(target) if isinstance(target, str) else target


def is_distiller_node(node) -> bool:
    """Whether a LazyConfig node instantiates d2dist's Distiller (or a subclass)."""
    target = lazy_target(node)
    return isinstance(target, type) and issubclass(target, Distiller)


def for_evaluation(cfg):
    """What evaluation and prediction build: for a Distiller, its student alone (no teacher, none
    of its files read; a Distiller checkpoint or a plain student checkpoint loads into it); any
    other model as it is. ``cfg`` is a yacs config (returns :func:`student_config` of a
    Distiller config) or a LazyConfig ``model`` node (returns its ``student`` node)::

        model = build_model(d2dist.engine.for_evaluation(cfg))        # yacs
        model = instantiate(d2dist.engine.for_evaluation(cfg.model))  # LazyConfig
    """
    if isinstance(cfg, CfgNode):
        return student_config(cfg) if cfg.MODEL.META_ARCHITECTURE == "Distiller" else cfg
    return cfg.student if is_distiller_node(cfg) else cfg

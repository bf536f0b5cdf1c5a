"""d2dist's configuration: Detectron2's yacs config plus d2dist's keys.

Project keys. A Detectron2 project (PointRend, DeepLab, Panoptic-DeepLab, your own) adds its keys
with an ``add_<project>_config(cfg)`` function, which must run before a config file that uses
them is merged. d2dist takes them in two ways:

- the *defaults the student's config was merged into*: :func:`add_distill_config` records a copy
  of ``cfg`` as it is when called (Detectron2's defaults plus every ``add_*_config`` applied before
  it), and the teacher's yacs config starts from that copy. So call it last, after your project's
  config functions; d2dist's tools do so with the functions named by ``--config-function``
  (:func:`get_cfg`);
- ``MODEL.DISTILL.TEACHER.CONFIG_FUNCTIONS``: dotted names of further functions applied to the
  teacher's config only (a teacher from another project than the student).
"""

import importlib
from typing import Callable, Iterable, List, Union

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as _d2_get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from .errors import ConfigError

__all__ = [
    "ConfigError",
    "merge_config_file",
    "add_distill_config",
    "add_fcos_config",
    "config_defaults",
    "get_cfg",
    "resolve_config_function",
]

# Where add_distill_config keeps the defaults of the config it was added to: in the CfgNode's
# instance __dict__, next to yacs's own flags, so it is copied by clone() but never dumped.
_DEFAULTS = "_d2dist_defaults"


def add_distill_config(cfg: CN) -> None:
    """Add d2dist's keys to a Detectron2 config, in place.

    Writes only under ``cfg.MODEL.DISTILL``, so it can be added to any Detectron2 project's
    config next to that project's own ``add_*_config`` calls. Used with
    ``MODEL.META_ARCHITECTURE: "Distiller"``; the rest of ``cfg.MODEL`` configures the student.

    Call it after the project's own config functions and before merging a config file: it
    records ``cfg``'s defaults at that point, from which the teacher's config starts (see the
    module docstring and :func:`config_defaults`).
    """
    d = cfg.MODEL.DISTILL = CN()
    # The student: any registered meta-architecture, configured by the rest of cfg.MODEL.
    d.STUDENT_META_ARCHITECTURE = "GeneralizedRCNN"
    # Weight of the student's own losses in the total.
    d.STUDENT_LOSS_WEIGHT = 1.0

    d.TEACHER = CN()
    # The teacher's own Detectron2 config: a path, or "model_zoo:<path in Detectron2's zoo>".
    d.TEACHER.CONFIG_FILE = ""
    # Or a LazyConfig .py file (its `model` is instantiated; TEACHER.OPTS are then "key=value"
    # overrides, as on lazyconfig_train_net.py's command line).
    # Its trained weights (path or any URL Detectron2's checkpointer reads); required.
    d.TEACHER.WEIGHTS = ""
    # Dotted names of config functions (e.g. "detectron2.projects.point_rend.add_pointrend_config")
    # applied to a yacs teacher's config before its file is merged, on top of the defaults the
    # student's config started from: for a teacher from another Detectron2 project.
    d.TEACHER.CONFIG_FUNCTIONS = []
    # KEY VALUE overrides of the teacher config, as on a command line.
    d.TEACHER.OPTS = []
    # Run the teacher under torch.autocast with this dtype: "", "bfloat16" or "float16".
    d.TEACHER.AUTOCAST = ""
    # Run the teacher in channels_last memory format (its weights and input images); often
    # faster for convolutions on recent GPUs, especially with AUTOCAST. Results are unchanged.
    d.TEACHER.CHANNELS_LAST = False

    # Distillation terms, by name in d2dist's DISTILL_LOSS_REGISTRY; each is configured by the
    # namespace of the same name below.
    d.LOSSES = []

    # Schedule of every distillation term's weight: linear warm-up from 0 over WARMUP_ITERS
    # iterations, and 0 from STOP_ITER on (-1: never stops).
    d.WEIGHT_SCHEDULE = CN()
    d.WEIGHT_SCHEDULE.WARMUP_ITERS = 0
    d.WEIGHT_SCHEDULE.STOP_ITER = -1

    # Feature mimic: MSE between adapted student and teacher features, summed over levels.
    d.MIMIC = CN()
    d.MIMIC.WEIGHT = 1.0
    d.MIMIC.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    # "auto" (identity when channels match, else 1x1 conv), "IdentityAdapter", "Conv1x1Adapter"
    d.MIMIC.ADAPTER = "auto"
    d.MIMIC.ADAPTER_NORM = ""  # "", "BN", "GN", "SyncBN", ... (Detectron2's get_norm)

    # Hinton's KD on logits (softmax KL; binary KL per sigmoid logit for dense heads).
    d.KD = CN()
    d.KD.WEIGHT = 1.0
    d.KD.TAU = 1.0
    # "auto" (roi for R-CNN, dense for RetinaNet / FCOS, pixel for semantic segmentation),
    # "roi", "dense" or "pixel"
    d.KD.TARGET = "auto"

    # ReviewKD (Chen et al., CVPR 2021): ABF chain on the student's levels + HCL against the
    # teacher's. Reference weights (COCO Faster R-CNN): R101->R18 1.2, R101->R50 1.0.
    d.REVIEWKD = CN()
    d.REVIEWKD.WEIGHT = 1.0
    d.REVIEWKD.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    d.REVIEWKD.MID_CHANNELS = 256
    d.REVIEWKD.NORM = "BN"  # after the ABF convolutions, as in the authors' code

    # DIST (Huang et al., NeurIPS 2022): Pearson relation matching of predictions.
    d.DIST = CN()
    d.DIST.WEIGHT = 1.0
    d.DIST.BETA = 1.0  # inter-class term
    d.DIST.GAMMA = 1.0  # intra-class term
    d.DIST.TAU = 1.0  # softmax temperature (RoI and pixel logits; dense heads use sigmoid)
    d.DIST.TARGET = "auto"  # "auto", "roi", "dense" or "pixel"
    # Dense heads: "location" (the authors' reference: all A*K channels of a location form one
    # row) or "anchor" (rows of K classes per anchor: a different method, opt-in).
    d.DIST.DENSE_MODE = "location"
    # Pixel logits: drop pixels whose ground truth (at the head's resolution) is the ignore
    # label. The authors keep them (False).
    d.DIST.MASK_IGNORE = False

    # DIST+ (Huang et al., TPAMI 2025) feature term: DIST on FPN features, d2dist's documented
    # reconstruction (the paper is not openly available; see README). Rows are positions,
    # columns channels; adapters map student to teacher widths.
    d.DIST_FEATURE = CN()
    d.DIST_FEATURE.WEIGHT = 1.0
    d.DIST_FEATURE.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    d.DIST_FEATURE.BETA = 1.0
    d.DIST_FEATURE.GAMMA = 1.0
    d.DIST_FEATURE.TAU = 1.0
    d.DIST_FEATURE.NORMALIZE = "none"  # "none" or "softmax" (over channels, with TAU)
    d.DIST_FEATURE.ADAPTER = "auto"
    d.DIST_FEATURE.ADAPTER_NORM = ""

    # DIST+ teacher acclimation (reconstruction): identity-initialised trainable maps of the
    # teacher's outputs for the DIST and DIST_FEATURE terms (a temperature for logits, a
    # per-channel affine map for features), trained on the distillation loss and anchored to the
    # unmodified teacher by LAMBDA * |theta - identity|^2; trained from START_ITER, frozen from
    # STOP_ITER (-1: never).
    d.ACCLIMATION = CN()
    d.ACCLIMATION.ENABLED = False
    # "output": the maps above (DIST: a temperature; DIST_FEATURE: per-channel affine);
    # "head": the teacher's classification layer made trainable (a copy initialised from the
    # teacher), anchored by LAMBDA * KL(teacher || acclimated) (DIST only). Both reconstructions.
    d.ACCLIMATION.MODE = "output"
    d.ACCLIMATION.LAMBDA = 1.0
    d.ACCLIMATION.START_ITER = 0
    d.ACCLIMATION.STOP_ITER = -1

    # PKD (Cao et al., NeurIPS 2022): MSE of per-channel standardised features. Reference
    # weights: 6 for Faster R-CNN on p2-p5, 10 for RetinaNet / FCOS on p3-p6.
    d.PKD = CN()
    d.PKD.WEIGHT = 6.0
    d.PKD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    # The paper compares FPNs of equal width ("auto" is then the identity); for other widths
    # "auto" maps the student with a 1x1 conv first (d2dist's addition, not in the paper).
    d.PKD.ADAPTER = "auto"
    d.PKD.ADAPTER_NORM = ""

    # CWD (Shu et al., ICCV 2021): KL of per-channel spatial distributions. TARGET "features"
    # (IN_FEATURES; reference tau 1, weight 5-10) or "pixel" (segmentation logits; reference
    # tau 4, weight 3).
    d.CWD = CN()
    d.CWD.WEIGHT = 5.0
    d.CWD.TAU = 1.0
    d.CWD.TARGET = "features"
    d.CWD.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    d.CWD.ADAPTER = "auto"
    d.CWD.ADAPTER_NORM = ""

    # MGD (Yang et al., ECCV 2022): masked generative distillation on FPN levels. WEIGHT is the
    # paper's alpha (the loss is a sum over channels and positions): the authors' COCO configs
    # use 5e-7, LAMBDA 0.45 on p2-p5 for two-stage detectors (the defaults here) and 2e-5, 0.65
    # on p3-p7 for one-stage ones.
    d.MGD = CN()
    d.MGD.WEIGHT = 5e-7
    d.MGD.LAMBDA = 0.45  # the fraction of masked positions
    d.MGD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    d.MGD.ADAPTER = "auto"  # a 1x1 conv (with bias) when the widths differ, as the authors'
    d.MGD.ADAPTER_NORM = ""

    # FGD (Yang et al., CVPR 2022): focal (foreground / background, teacher attention), attention
    # and global (context-block) losses on FPN levels of detectors. Defaults: the authors' Faster
    # R-CNN settings; RetinaNet: TAU 0.5, ALPHA 1e-3, BETA 5e-4, GAMMA 5e-4, LAMBDA 5e-6 on p3-p7;
    # FCOS: 0.8, 1.6e-3, 8e-4, 8e-4, 8e-6.
    d.FGD = CN()
    d.FGD.WEIGHT = 1.0
    d.FGD.TAU = 0.5
    d.FGD.ALPHA = 5e-5  # foreground
    d.FGD.BETA = 2.5e-5  # background
    d.FGD.GAMMA = 5e-5  # attention
    d.FGD.LAMBDA = 5e-7  # global relation
    d.FGD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    d.FGD.ADAPTER = "auto"
    d.FGD.ADAPTER_NORM = ""
    # How boxes are mapped onto a level: "stride" (x / stride, the padded grid) or "image" (as
    # the authors' code: x / unpadded image width * map width, which stretches padded images).
    d.FGD.MASK_MODE = "stride"

    # CrossKD (Wang et al., CVPR 2024) for RetinaNet / FCOS students: the student's head features
    # after its DEPTH-th conv (0: the FPN level) run through the teacher's remaining head.
    # Defaults: the authors' RetinaNet settings; FCOS: DEPTH 2, CLS_WEIGHT 0.4, REG_WEIGHT 0.75.
    d.CROSSKD = CN()
    d.CROSSKD.WEIGHT = 1.0
    d.CROSSKD.DEPTH = 3
    d.CROSSKD.CLS_WEIGHT = 1.0
    d.CROSSKD.REG_WEIGHT = 1.0
    d.CROSSKD.BETA = 1.0  # the exponent of the quality-focal KD

    # Initialise the student's parameters whose names start with one of these prefixes from the
    # teacher's parameters of the same name and shape (e.g. ["backbone.fpn_", "backbone.top_block",
    # "head"]: a one-stage student's neck and head), at the start of a run (not when resuming),
    # after MODEL.WEIGHTS. The authors of MGD, FGD and CrossKD do this in their one-stage COCO
    # configs ("inheriting"), and their reported gains include it. Empty: off.
    d.INHERIT = []

    defaults = cfg.clone()
    defaults.__dict__.pop(_DEFAULTS, None)
    cfg.__dict__[_DEFAULTS] = defaults


def config_defaults(cfg: CN) -> CN:
    """A fresh copy of the defaults ``cfg`` was built on (recorded by :func:`add_distill_config`:
    Detectron2's defaults plus the config functions applied before it), or d2dist's
    :func:`get_cfg` for a config without that record."""
    defaults = cfg.__dict__.get(_DEFAULTS)
    if defaults is None:
        return get_cfg()
    defaults = defaults.clone()
    defaults.defrost()
    return defaults


ConfigFunction = Union[str, Callable[[CN], None]]


def resolve_config_function(name: ConfigFunction, key: str) -> Callable[[CN], None]:
    """The function named ``"package.module.function"`` (a callable is returned as it is).

    ``key`` names where the name was given, for the error message.
    """
    if callable(name):
        return name
    module, _, attr = str(name).rpartition(".")
    fix = (
        "Give the dotted name of a function that adds a project's keys to a config, e.g. "
        "detectron2.projects.point_rend.add_pointrend_config, importable in this Python."
    )
    if not module:
        raise ConfigError(f"{key} {name!r} is not a dotted name 'package.module.function'. {fix}")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ConfigError(f"{key} {name!r}: cannot import {module!r} ({e}). {fix}") from e
    except AttributeError:
        raise ConfigError(f"{key} {name!r}: module {module!r} has no {attr!r}. {fix}") from None
    if not callable(fn):
        raise ConfigError(f"{key} {name!r} is a {type(fn).__name__}, not a function. {fix}")
    return fn


def apply_config_functions(cfg: CN, names: Iterable[ConfigFunction], key: str) -> List[str]:
    """Apply the named config functions to ``cfg`` in order; returns their names."""
    applied = []
    for name in names:
        fn = resolve_config_function(name, key)
        fn(cfg)
        applied.append(getattr(fn, "__module__", "") + "." + getattr(fn, "__name__", repr(fn)))
    return applied


def add_fcos_config(cfg: CN) -> None:
    """Add ``MODEL.FCOS`` so that Detectron2's FCOS can be built from a yacs config.

    Upstream Detectron2 builds FCOS only through LazyConfig; d2dist registers a yacs builder
    (meta-architecture ``"FCOS"``) that reads these keys. Defaults are upstream's.
    """
    f = cfg.MODEL.FCOS = CN()
    f.NUM_CLASSES = 80
    f.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    f.NUM_CONVS = 4
    f.HEAD_NORM = "GN"
    f.PRIOR_PROB = 0.01
    f.CENTER_SAMPLING_RADIUS = 1.5
    f.FOCAL_LOSS_ALPHA = 0.25
    f.FOCAL_LOSS_GAMMA = 2.0
    f.SCORE_THRESH_TEST = 0.2
    f.TOPK_CANDIDATES_TEST = 1000
    f.NMS_THRESH_TEST = 0.6


def get_cfg(*config_functions: ConfigFunction) -> CN:
    """Detectron2's default config with the keys of every model d2dist supports.

    That is Detectron2's defaults, DeepLab's keys (``detectron2.projects.deeplab``), FCOS's
    (:func:`add_fcos_config`), then ``config_functions`` (callables or dotted names of a project's
    ``add_*_config``, e.g. ``"detectron2.projects.point_rend.add_pointrend_config"``), and last
    d2dist's ``MODEL.DISTILL`` (so the teacher's config starts from all of them).
    """
    cfg = _d2_get_cfg()
    add_deeplab_config(cfg)
    add_fcos_config(cfg)
    apply_config_functions(cfg, config_functions, "--config-function")
    add_distill_config(cfg)
    return cfg


def merge_config_file(cfg: CN, path: str, what: str) -> None:
    """``cfg.merge_from_file(path)``, with the file's own faults as :class:`ConfigError` s that
    name ``what`` (e.g. "config file 'x.yaml'"): invalid YAML, a top level that is not a mapping,
    a missing ``_BASE_`` file, a ``_BASE_`` chain that loops. (Unknown keys and wrong value types
    are the caller's to explain.)"""
    try:
        cfg.merge_from_file(path)
    except RecursionError:
        raise ConfigError(
            f"{what}: its _BASE_ chain loops (a file is its own base, directly or through others); "
            "make the chain end in a file without _BASE_."
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {e}") from e
    except FileNotFoundError as e:
        raise ConfigError(
            f"{what}: the file {e.filename!r} it names (as _BASE_) does not exist; a _BASE_ path is "
            "relative to the file that names it."
        ) from e
    except AttributeError as e:
        if "has no attribute 'items'" not in str(e):
            raise
        raise ConfigError(
            f"{what} (or a file of its _BASE_ chain) is not a mapping of config keys ({e}): a "
            "config file holds `KEY: value` lines, e.g. `MODEL:` then indented keys."
        ) from e

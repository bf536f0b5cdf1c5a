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

import difflib
import importlib
import math
from typing import Callable, Iterable, List, Sequence, Union

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as _d2_get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from .errors import ConfigError, RunFault, a_type, os_error_cause

__all__ = [
    "ConfigError",
    "DEEPLAB_HEAD_DEFAULTS",
    "add_d2dist_deeplab_config",
    "check_pixel_statistics",
    "closest_key",
    "merge_config_file",
    "merge_overrides",
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
    # "auto" (identity when channels match, else 1x1 conv), "IdentityAdapter", "Conv1x1Adapter",
    # "TorchInitConv1x1Adapter" (PyTorch's default init, as mmrazor's align modules)
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


# The keys of d2dist's DeepLabV3AuxHead under MODEL.SEM_SEG_HEAD, with the values that turn its
# two parts off (a config without them, e.g. a user's own get_cfg, builds the head with these).
DEEPLAB_HEAD_DEFAULTS = {"HEAD_CONV": False, "HEAD_DROPOUT": 0.1, "AUX_IN_FEATURE": "",
                         "AUX_CONV_DIM": 64, "AUX_DROPOUT": 0.1, "AUX_LOSS_WEIGHT": 0.4}  # fmt: skip


def add_d2dist_deeplab_config(cfg: CN) -> None:
    """Add the keys of d2dist's DeepLab parts: under ``MODEL.SEM_SEG_HEAD``, those of
    ``DeepLabV3AuxHead`` (:mod:`d2dist.modeling.heads`): a 3x3 block before the classifier
    (``HEAD_CONV``, ``HEAD_DROPOUT``) and an auxiliary FCN head for training
    (``AUX_IN_FEATURE``, ``AUX_CONV_DIM``, ``AUX_DROPOUT``, ``AUX_LOSS_WEIGHT``); under
    ``MODEL.RESNETS``, ``HALF_DILATION_IN_FIRST_BLOCK`` of the dilated ResNet-18/34
    (:mod:`d2dist.modeling.backbone`). Defaults: all off; when on, the values of the DeepLabV3 of
    CIRKD and DIST's authors."""
    for key, value in DEEPLAB_HEAD_DEFAULTS.items():
        cfg.MODEL.SEM_SEG_HEAD[key] = value
    cfg.MODEL.RESNETS.HALF_DILATION_IN_FIRST_BLOCK = False


def get_cfg(*config_functions: ConfigFunction) -> CN:
    """Detectron2's default config with the keys of every model d2dist supports.

    That is Detectron2's defaults, DeepLab's keys (``detectron2.projects.deeplab``) with those of
    d2dist's DeepLab parts (:func:`add_d2dist_deeplab_config`), FCOS's
    (:func:`add_fcos_config`), then ``config_functions`` (callables or dotted names of a project's
    ``add_*_config``, e.g. ``"detectron2.projects.point_rend.add_pointrend_config"``), and last
    d2dist's ``MODEL.DISTILL`` (so the teacher's config starts from all of them).
    """
    cfg = _d2_get_cfg()
    add_deeplab_config(cfg)
    add_d2dist_deeplab_config(cfg)
    add_fcos_config(cfg)
    apply_config_functions(cfg, config_functions, "--config-function")
    add_distill_config(cfg)
    return cfg


# The end of every message about a key or a value type.
KEYS_AND_TYPES = (
    "Keys and value types must be those of Detectron2's config (see detectron2/config/defaults.py) "
    "or d2dist's MODEL.DISTILL (README)."
)
# What an unknown key may mean besides a typo (callers with more to say pass their own hint).
PROJECT_KEYS = (
    " A key of a Detectron2 project (PointRend, Panoptic-DeepLab, your own) needs that project's "
    "config function applied before the file is merged (d2dist's tools: --config-function "
    "MODULE.FUNCTION)."
)
# Files that Detectron2 would take for old (v1) configs and upgrade (detectron2.config.compat's
# guess_version): their keys are left to that upgrade, not checked here.
_V1_KEYS = ("MODEL.WEIGHT", "TEST.AUG_ON")


def merge_config_file(cfg: CN, path: str, what: str, hint: str = PROJECT_KEYS) -> None:
    """``cfg.merge_from_file(path)``, with every fault as a :class:`ConfigError` that names
    ``what`` (e.g. "config file 'x.yaml'"): invalid YAML, a top level that is not a mapping, a
    missing ``_BASE_`` file, a ``_BASE_`` chain that loops, and, checked before anything is merged,
    an unknown key (with the closest valid key, then ``hint``) and a value of the wrong type (see
    :func:`merge_overrides`)."""
    try:
        loaded = CN.load_yaml_with_base(path, allow_unsafe=True)
        if isinstance(loaded, dict) and _latest_version(cfg, loaded):
            _check_tree(cfg, loaded, [], cfg, what, hint)
        cfg.merge_from_file(path)  # (reads the file again: Detectron2's versions and upgrades)
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
    except OSError as e:  # unreadable: a permission, a directory, a device error
        raise RunFault(
            f"{what}: could not read {e.filename or path!r}: {os_error_cause(e)}. Make the file "
            "(and every file of its _BASE_ chain) readable for this user."
        ) from e
    except AttributeError as e:
        if "has no attribute 'items'" not in str(e):
            raise
        raise ConfigError(
            f"{what} (or a file of its _BASE_ chain) is not a mapping of config keys ({e}): a "
            "config file holds `KEY: value` lines, e.g. `MODEL:` then indented keys."
        ) from e


def merge_overrides(cfg: CN, opts: Sequence, where: str, hint: str = PROJECT_KEYS) -> None:
    """``cfg.merge_from_list(opts)`` (``KEY VALUE`` pairs, as on a command line), each pair checked
    first: an unknown key is a :class:`ConfigError` naming the closest valid key (then ``hint``),
    and so is a value that is not of the key's type (yacs's rule: the type of the value the key
    has, a list for a tuple and the reverse), with these additions: ``None`` for a number or a
    flag, and a list whose items are not of the kind of the current items (numbers, strings).
    ``where`` names the overrides in messages (e.g. "command-line overrides")."""
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(
            f"{where}: {opts} is not a list of KEY VALUE pairs (it has an odd length); give each "
            "key followed by its value."
        )
    for key, value in zip(opts[0::2], opts[1::2]):
        if not (cfg.key_is_deprecated(key) or cfg.key_is_renamed(key)):  # else yacs's handling
            _check_pair(cfg, str(key), value, where, hint)
        cfg.merge_from_list([key, value])  # one by one: a key may be given twice


def _check_pair(cfg: CN, key: str, value, where: str, hint: str) -> None:
    node, parts = cfg, key.split(".")
    for part in parts[:-1]:
        if not (isinstance(node, CN) and part in node):
            break
        node = node[part]
    else:
        if isinstance(node, CN) and parts[-1] in node:
            _check_value(key, CN._decode_cfg_value(value), node[parts[-1]], where)
            return
        if isinstance(node, CN) and node.is_new_allowed():
            return
    _unknown(cfg, key, where, "Non-existent key", hint)


def closest_key(cfg: CN, key: str) -> str:
    """The key of ``cfg`` nearest to ``key`` (an unknown dotted key), "" when none is close: among
    the keys under the deepest group ``key`` names correctly first, then among all of them."""
    node, prefix = cfg, []
    for part in key.split(".")[:-1]:
        if not isinstance(node.get(part), CN):
            break
        node, prefix = node[part], prefix + [part]
    for scope, names in ((node, prefix), (cfg, [])):
        keys = _dotted_keys(scope, ".".join(names))
        match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
        if match:
            return match[0]
    return ""


def check_pixel_statistics(cfg: CN, where: str) -> None:
    """``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` of ``cfg`` (``where``: whose config, for messages):
    finite numbers, one per channel each, standard deviations > 0 (images are divided by them: a
    zero makes every value infinite, and the first step NaN)."""
    mean, std = list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)
    if not all(is_number(x) and math.isfinite(x) for x in mean):
        raise ConfigError(
            f"{where}: MODEL.PIXEL_MEAN={mean}: the channel means must be finite numbers."
        )
    check_pixel_std(std, f"{where}: MODEL.PIXEL_STD")
    if len(mean) != len(std):
        raise ConfigError(
            f"{where}: MODEL.PIXEL_MEAN={mean} and MODEL.PIXEL_STD={std} must have one value per "
            "image channel each (the same length)."
        )


def check_pixel_std(std: Sequence, key: str) -> None:
    """``std``, the pixel standard deviations ``key`` gives (yacs's ``MODEL.PIXEL_STD``, a
    LazyConfig model's ``pixel_std``): finite numbers > 0."""
    if not all(is_number(x) and math.isfinite(x) and x > 0 for x in std):
        raise ConfigError(
            f"{key}={list(std)}: the channel standard deviations must be finite and > 0 (the "
            "images are divided by them; use 1.0 for a channel not to be scaled, as Detectron2's "
            "ImageNet-initialised configs do: [1.0, 1.0, 1.0])."
        )


def _check_tree(cfg: CN, tree: dict, path: List[str], node: CN, where: str, hint: str) -> None:
    """The keys and values of a loaded config file (``tree``) against ``cfg`` (at ``node``)."""
    for key, value in tree.items():
        full = ".".join(path + [key])
        if key not in node:
            if node.is_new_allowed() or cfg.key_is_deprecated(full) or cfg.key_is_renamed(full):
                continue  # yacs's own handling
            _unknown(cfg, full, where, "Non-existent config key", hint)
        value = CN._decode_cfg_value(value)
        if isinstance(node[key], CN) and isinstance(value, dict):
            _check_tree(cfg, value, path + [key], node[key], where, hint)
        else:
            _check_value(full, value, node[key], where)


def _unknown(cfg: CN, key: str, where: str, words: str, hint: str) -> None:
    close = closest_key(cfg, key)
    close = f" The closest key is {close}." if close else ""
    raise ConfigError(f"{where}: {words}: {key}. {KEYS_AND_TYPES}{close}{hint}")


def _check_value(key: str, value, current, where: str) -> None:
    """``value`` (decoded as yacs decodes it) for ``key``, whose value is ``current``."""
    if current is None:
        return  # yacs lets a key without a value take any
    expected = _kind_of(current)
    fix = ""
    if isinstance(current, CN):
        ok = isinstance(value, dict)
    elif value is None:  # yacs lets None in; a number or flag cannot be None
        ok = not isinstance(current, (int, float))
    elif isinstance(current, (list, tuple)):
        ok = isinstance(value, (list, tuple)) and _items_fit(value, current)
    else:
        ok = type(value) is type(current)
        if isinstance(current, float) and type(value) is int:
            fix = f": write {float(value)!r}"
    if ok:
        return
    given = "None" if value is None else f"{value!r}, {a_type(value, items=True)}"
    raise ConfigError(
        f"{where}: config key: {key} takes {expected} (like its current value, {current!r}), but "
        f"was given {given}{fix}. {KEYS_AND_TYPES}"
    )


def _items_fit(value, current) -> bool:
    """The items of a list for a key whose list holds only numbers (or only strings) are so too."""
    for kind in (is_number, lambda x: isinstance(x, str)):
        if current and all(kind(x) for x in current):
            return all(kind(x) for x in value)
    return True


def _kind_of(current) -> str:
    if isinstance(current, CN):
        return "a group of keys (a mapping)"
    if isinstance(current, bool):
        return "True or False"
    if isinstance(current, (list, tuple)):
        items = ""
        if current and all(is_number(x) for x in current):
            items = " of numbers"
        elif current and all(isinstance(x, str) for x in current):
            items = " of strings"
        return f"a list{items}"
    return a_type(current)


def is_number(x) -> bool:
    """An int or a float, not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _dotted_keys(node: CN, prefix: str) -> List[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}.{key}" if prefix else key
        keys.append(full)
        if isinstance(value, CN):
            keys += _dotted_keys(value, full)
    return keys


def _latest_version(cfg: CN, loaded: dict) -> bool:
    """Whether Detectron2 merges the loaded file as a config of ``cfg``'s version (else it
    upgrades an old one first, renaming keys: those are left to it)."""
    if "VERSION" in loaded:
        return loaded["VERSION"] == cfg.get("VERSION")
    return not any(_has(loaded, key) for key in _V1_KEYS)


def _has(tree: dict, key: str) -> bool:
    for part in key.split("."):
        if not (isinstance(tree, dict) and part in tree):
            return False
        tree = tree[part]
    return True

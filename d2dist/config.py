"""d2dist's configuration: Detectron2's yacs config plus d2dist's keys.

Project keys. A Detectron2 project (PointRend, DeepLab, Panoptic-DeepLab, your own) adds its keys
with an ``add_<project>_config(cfg)`` function, which must run before a config file that uses
them is merged. d2dist takes them in two ways:

- the *defaults the student's config was merged into*: :func:`add_distill_config` records in
  ``MODEL.DISTILL.TEACHER.BASE_DEFAULTS`` what ``cfg``'s defaults when it is called (Detectron2's
  plus every ``add_*_config`` applied before it) add to d2dist's own, and the teacher's yacs config
  starts from d2dist's defaults plus that record (:func:`config_defaults`; the record is saved with
  the run's config). So call it last, after your project's config functions; d2dist's tools do so
  with the functions named by ``--config-function`` (:func:`get_cfg`);
- ``MODEL.DISTILL.TEACHER.CONFIG_FUNCTIONS``: dotted names of further functions applied to the
  teacher's config only (a teacher from another project than the student).

Distillation terms declare their own namespaces under ``MODEL.DISTILL`` in their own files
(:func:`register_distill_namespaces`); :func:`add_distill_config` writes the keys they share."""

import contextlib
import copy
import difflib
import importlib
import math
from typing import Callable, Dict, Iterable, List, Sequence, Union

import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as _d2_get_cfg
from detectron2.projects.deeplab import add_deeplab_config

from .errors import ConfigError, RunFault, a_type, os_error_cause
from .file_io import PREFIX, local_path

__all__ = [
    "CfgNode",
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
    "register_distill_namespaces",
    "resolve_config_function",
]

# Where add_distill_config records what the defaults of the config it is added to add to d2dist's
# own: MODEL.DISTILL.TEACHER.<this key> (see config_defaults).
BASE_DEFAULTS = "BASE_DEFAULTS"

# The functions that declare namespaces under MODEL.DISTILL (see register_distill_namespaces).
_NAMESPACE_SOURCES: List[Callable[[], Dict[str, CN]]] = []


def register_distill_namespaces(source: Callable[[], Dict[str, CN]]) -> None:
    """Have :func:`add_distill_config` add the namespaces ``source()`` returns (``{NAME: CfgNode of
    its keys and defaults}``) under ``MODEL.DISTILL``, next to the shared keys.

    :mod:`d2dist.modeling` registers its sources when imported (``import d2dist`` does it): the
    distillation terms (each term declares its namespace in its own file,
    :meth:`d2dist.modeling.terms.DistillTerm.config_namespace`; the source reads the term registry
    each time, so a term registered before the config is built has its namespace in it) and
    acclimation. A source is called by every :func:`add_distill_config`.
    """
    if source not in _NAMESPACE_SOURCES:
        _NAMESPACE_SOURCES.append(source)


def add_distill_config(cfg: CN) -> None:
    """Add d2dist's keys to a Detectron2 config, in place.

    Writes only under ``cfg.MODEL.DISTILL``, so it can be added to any Detectron2 project's
    config next to that project's own ``add_*_config`` calls. Used with
    ``MODEL.META_ARCHITECTURE: "Distiller"``; the rest of ``cfg.MODEL`` configures the student.

    The keys shared by all terms are written here; the namespace of each distillation term (and
    ``ACCLIMATION``) comes from the term's own file (:func:`register_distill_namespaces`), for the
    terms registered when this runs.

    Call it after the project's own config functions and before merging a config file: it
    records in ``MODEL.DISTILL.TEACHER.BASE_DEFAULTS`` what ``cfg``'s defaults at that point add
    to d2dist's own, from which the teacher's config starts (see the module docstring and
    :func:`config_defaults`).
    """
    record = _difference(cfg, _base_cfg(), "")
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
    # Written by add_distill_config, not to be set: what the defaults this config was built on add
    # to d2dist's own (Detectron2's, DeepLab's, FCOS's): the keys of the project config functions
    # applied before add_distill_config and the defaults they changed. A yacs teacher's config
    # starts from d2dist's defaults plus these, also when the run's saved config.yaml is loaded.
    d.TEACHER[BASE_DEFAULTS] = record

    # Distillation terms, by name in d2dist's DISTILL_TERM_REGISTRY; each is configured by the
    # namespace of the same name in capitals (declared in the term's own file).
    d.LOSSES = []

    # Schedule of every distillation term's weight: linear warm-up from 0 over WARMUP_ITERS
    # iterations, and 0 from STOP_ITER on (-1: never stops).
    d.WEIGHT_SCHEDULE = CN()
    d.WEIGHT_SCHEDULE.WARMUP_ITERS = 0
    d.WEIGHT_SCHEDULE.STOP_ITER = -1

    # Initialise the student's parameters whose names start with one of these prefixes from the
    # teacher's parameters of the same name and shape (e.g. ["backbone.fpn_", "backbone.top_block",
    # "head"]: a one-stage student's neck and head), at the start of a run (not when resuming),
    # after MODEL.WEIGHTS. The authors of MGD, FGD and CrossKD do this in their one-stage COCO
    # configs ("inheriting"), and their reported gains include it. Empty: off.
    d.INHERIT = []

    for source in _NAMESPACE_SOURCES:
        for key, namespace in source().items():
            if key in d:
                raise ConfigError(
                    f"MODEL.DISTILL.{key} is declared twice: a distillation term's namespace is "
                    "its class name in capitals, which must differ from the other namespaces and "
                    f"keys of MODEL.DISTILL ({sorted(d)}); rename the term's class."
                )
            if not isinstance(namespace, CN):
                raise TypeError(
                    f"the namespace MODEL.DISTILL.{key} must be declared as a CfgNode, not a "
                    f"{type(namespace).__name__}"
                )
            d[key] = namespace


def config_defaults(cfg: CN) -> CN:
    """A fresh copy of the defaults ``cfg`` was built on: d2dist's own (:func:`get_cfg` without
    config functions) plus what ``MODEL.DISTILL.TEACHER.BASE_DEFAULTS`` records (the keys and
    defaults of the config functions applied before :func:`add_distill_config`), with
    ``MODEL.DISTILL`` at its defaults. A config without that record gives d2dist's
    :func:`get_cfg`.

    The record is part of the config, so a run's saved config.yaml, however it is loaded (merged
    into :func:`get_cfg` with the project's config functions, or with new keys allowed), gives the
    same defaults; so does a config in which a project's function only changed defaults, merged
    into plain :func:`get_cfg`. Tuples of the record come back as lists where d2dist's own defaults
    lack the key (as the YAML file has them). Keys of d2dist's own defaults that ``cfg`` lacks
    (e.g. DeepLab's, when the config started from Detectron2's ``get_cfg``) are not recorded: the
    copy has them with their defaults.
    """
    defaults = _base_cfg()
    record = cfg.MODEL.get("DISTILL", CN()).get("TEACHER", CN()).get(BASE_DEFAULTS)
    if isinstance(record, CN):
        _apply(defaults, record)
    add_distill_config(defaults)
    return defaults


class CfgNode(CN):
    """Detectron2's ``CfgNode`` whose files' ``_BASE_`` may also be a ``d2dist://`` path.

    Detectron2 (through fvcore) takes a ``_BASE_`` that is not absolute or a URL as relative to
    the file that names it, so ``_BASE_: "d2dist://configs/Base-RCNN-FPN.yaml"`` would become
    ``<folder>/d2dist://configs/...``; this class reads it as the ``d2dist://`` path
    (:func:`d2dist.file_io.local_path`), so a user's config can start from a config d2dist ships
    wherever both are. :func:`get_cfg` returns one; ``clone()``, ``dump()``, pickling and merging
    work as for Detectron2's.

    Only the root of a config is of this class: its nodes stay Detectron2's ``CfgNode``, as the
    nodes a project's ``add_*_config`` adds are (yacs merges a node only into one of the same
    class). :func:`merge_config_file` reads ``d2dist://`` bases into a config of Detectron2's own
    ``get_cfg()`` too.
    """

    @classmethod
    def load_yaml_with_base(cls, filename, allow_unsafe: bool = False):
        if isinstance(filename, str) and PREFIX in filename:
            # fvcore has joined a d2dist:// _BASE_ to the folder of the file naming it.
            filename = local_path(filename[filename.index(PREFIX) :])
        return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)

    @classmethod
    def _create_config_tree_from_dict(cls, dic, key_list):
        return CN._create_config_tree_from_dict(dic, key_list)  # nodes: Detectron2's class

    @classmethod
    def _decode_cfg_value(cls, value):
        return CN._decode_cfg_value(value)  # a dict value: a node of Detectron2's class


@contextlib.contextmanager
def _reading_d2dist_bases(cfg: CN):
    """Inside the block, ``cfg.merge_from_file`` reads ``d2dist://`` bases (see :class:`CfgNode`)
    also when ``cfg`` is Detectron2's own ``CfgNode`` (a user's config): its class is d2dist's
    subclass for the block's duration only."""
    kind = type(cfg)
    if isinstance(cfg, CfgNode) or kind is not CN:
        yield
        return
    object.__setattr__(cfg, "__class__", CfgNode)  # (CfgNode's own __setattr__ sets config keys)
    try:
        yield
    finally:
        object.__setattr__(cfg, "__class__", kind)


def _base_cfg() -> CN:
    """d2dist's own defaults: Detectron2's, DeepLab's with d2dist's DeepLab parts', FCOS's."""
    cfg = CfgNode(_d2_get_cfg())
    add_deeplab_config(cfg)
    add_d2dist_deeplab_config(cfg)
    add_fcos_config(cfg)
    add_repeat_factor_config(cfg)
    return cfg


def add_repeat_factor_config(cfg: CN) -> None:
    """Declare ``DATASETS.TRAIN_REPEAT_FACTOR`` (default ``[]``): ``[[dataset name, factor], ...]``,
    how often each image of a training set is drawn with ``DATALOADER.SAMPLER_TRAIN
    WeightedTrainingSampler``. Detectron2's loader reads this key (detectron2/data/build.py) but its
    defaults do not declare it, so a config file could not set it. The share of unlabeled images in
    a batch is set with it (:func:`d2dist.data.repeat_factors_for_fraction`)."""
    if "TRAIN_REPEAT_FACTOR" not in cfg.DATASETS:
        cfg.DATASETS.TRAIN_REPEAT_FACTOR = []


def _plain(value):
    """A config value as its YAML dump writes it (tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _difference(node: CN, base: CN, path: str) -> CN:
    """The keys of ``node`` that ``base`` lacks or holds with another value (``MODEL.DISTILL``
    left out), as a node that accepts new keys at every level (so that a dumped config merges
    back); tuples as lists."""
    out = CN(new_allowed=True)
    for key, value in node.items():
        full = f"{path}{key}"
        if full == "MODEL.DISTILL":
            continue
        other = base.get(key)
        if isinstance(value, CN):
            part = _difference(value, other if isinstance(other, CN) else CN(), f"{full}.")
            if part or not isinstance(other, CN):
                out[key] = part
        elif key not in base or _plain(value) != _plain(other):
            out[key] = _plain(value)
    return out


def _apply(node: CN, record: CN) -> None:
    """Write ``record`` (of :func:`_difference`) into ``node``: new keys added, values replaced
    (a list where ``node`` holds a tuple becomes a tuple again)."""
    for key, value in record.items():
        if isinstance(value, CN):
            if not isinstance(node.get(key), CN):
                node[key] = CN()
            _apply(node[key], value)
        elif isinstance(node.get(key), tuple) and isinstance(value, list):
            node[key] = tuple(value)
        else:
            node[key] = copy.deepcopy(value)


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
    cfg = _base_cfg()
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
    ``what`` (e.g. "config file 'x.yaml'"), and ``d2dist://`` bases read whatever ``cfg``'s class
    (:class:`CfgNode`): invalid YAML, a top level that is not a mapping, a
    missing ``_BASE_`` file, a ``_BASE_`` chain that loops, and, checked before anything is merged,
    an unknown key (with the closest valid key, then ``hint``) and a value of the wrong type (see
    :func:`merge_overrides`)."""
    try:
        loaded = CfgNode.load_yaml_with_base(path, allow_unsafe=True)
        if isinstance(loaded, dict) and _latest_version(cfg, loaded):
            _check_tree(cfg, loaded, [], cfg, what, hint)
        with _reading_d2dist_bases(cfg):  # reads the file again: Detectron2's versions, upgrades
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
            "relative to the file that names it, or a 'd2dist://configs/...' path."
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

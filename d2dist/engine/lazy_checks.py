"""Checks of a LazyConfig (``.py``) run's config when it is read, before anything is built.

:func:`apply_overrides` applies ``key=value`` overrides one at a time, each checked first: an
override changes a key the config has; a new key (``train.max_iterr=1``) is refused, naming the
closest existing key, except an argument added to a node with a ``_target_`` (checked against its
target's signature, below) or a key written ``+key=value`` (added on purpose).

:func:`check_lazy_config` then checks the nodes the run instantiates (``model``, the data loaders
and evaluator, and when training ``optimizer`` and ``lr_multiplier``), recursively:

- each ``_target_`` given by name can be imported (else the closest name of its module is named);
- each argument of a node is a parameter of its target (``inspect.signature``; a target with
  ``**kwargs`` takes any);
- a value whose parameter is annotated with a plain type (``int``, ``float``, ``bool``, ``str``,
  ``Optional`` / ``Union`` / sequences of them, a class for a plain value) is of that type. Sound,
  not complete: only a value certainly wrong is refused (``None``, interpolations, nodes and
  other annotations are not judged; an int is a float, an integral float an int);
- the datasets named by ``dataloader.*.dataset.names`` (of Detectron2's
  ``get_detection_dataset_dicts``) are registered (the training set only when training);
- a ``pixel_std`` argument holds finite standard deviations > 0;
- the ``train`` settings d2dist's loop reads, and the batch size and workers of Detectron2's data
  loaders, are of their types and ranges (as ``SOLVER.*`` of a yacs config);
- a teacher (``teacher_from_file`` / ``Teacher``) that trains a student does not run under float16
  autocast on the CPU.
"""

import collections.abc
import difflib
import importlib
import inspect
import math
import types
import typing
from typing import Iterator, List, Optional, Sequence

import torch
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog, build_detection_train_loader
from detectron2.data import get_detection_dataset_dicts
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..config import check_pixel_std, is_number
from ..errors import ConfigError, a_type, with_article
from ..modeling.lazy import teacher_from_file
from ..modeling.teacher import FLOAT16_ON_CPU, Teacher

__all__ = ["apply_overrides", "check_lazy_config"]

# train.<key>: (the type, the least value, what it is); the keys d2dist's LazyConfig loop reads.
_TRAIN = {
    "max_iter": (int, 1, "iterations to train"),
    "eval_period": (int, 0, "iterations between evaluations; 0: once, after the last"),
    "log_period": (int, 1, "iterations between log lines"),
    "checkpointer.period": (int, 1, "iterations between checkpoints"),
}
# Arguments of Detectron2's training loader, which has no annotations: (type, least value).
_KNOWN = {build_detection_train_loader: {"total_batch_size": (int, 1), "num_workers": (int, 0)}}
_TEACHERS = (teacher_from_file, Teacher)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], path: str) -> DictConfig:
    """``LazyConfig.apply_overrides(cfg, overrides)`` one override at a time, each key checked
    first (see the module docstring). ``path`` is the config file, for messages."""
    for override in overrides:
        key, sep, _ = str(override).partition("=")
        if sep and not key.startswith(("+", "~")):
            _check_override_key(cfg, key, str(override))
        try:
            LazyConfig.apply_overrides(cfg, [override])
        except Exception as e:  # hydra's grammar and OmegaConf: any exception is possible
            raise ConfigError(
                f"could not load {path!r} with overrides {list(overrides)}: {override!r}: "
                f"{type(e).__name__}: {e}"
            ) from e
    return cfg


def check_lazy_config(cfg: DictConfig, *, training: bool) -> None:
    """The checks of the module docstring on a loaded LazyConfig (``train.device`` resolved)."""
    roots = ["model", "dataloader"] + (["optimizer", "lr_multiplier"] if training else [])
    # (the teacher's autocast matters when it runs: in training, not for --eval-only)
    device = str(cfg.train.get("device", "cpu")) if training and "train" in cfg else ""
    for root in roots:
        node = _child(cfg, root)
        if root == "dataloader" and isinstance(node, DictConfig):
            for name in node.keys():
                if training or name != "train":
                    _walk(_child(node, name), f"dataloader.{name}", device)
        elif node is not None:
            _walk(node, root, device)
    _check_datasets(cfg, training)
    if training and isinstance(_child(cfg, "train"), DictConfig):
        _check_train(cfg.train)


# ---- overrides


def _check_override_key(cfg: DictConfig, key: str, override: str) -> None:
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, ListConfig):
            if not (part.isdigit() and int(part) < len(node)):
                return  # OmegaConf explains it
            node = node._get_node(int(part))
            continue
        if not isinstance(node, DictConfig):
            return  # a value, not a node: LazyConfig explains it ("is not a config")
        if part in node.keys():  # (a key whose value is ??? too)
            node = node._get_node(part)
            continue
        if i == len(parts) - 1 and "_target_" in node:
            return  # an argument of a node: checked against its target's signature
        where = ".".join(parts[:i]) or "the config"
        raise ConfigError(
            f"{override}: {where} has no key {part!r} (an override changes a key the config has; "
            f"a new key is most likely a typo){_closest_key(cfg, node, parts[:i], part)}. To add a "
            f"key on purpose, write +{key}=... or set it in the config file."
        )


def _closest_key(cfg: DictConfig, node: DictConfig, prefix: List[str], part: str) -> str:
    names = [str(k) for k in node.keys()]
    match = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
    if match:
        return f"; the closest is {'.'.join(prefix + match)}"
    full = ".".join(prefix + [part])
    match = difflib.get_close_matches(full, list(_dotted_keys(cfg, "")), n=1, cutoff=0.6)
    if match:
        return f"; the closest is {match[0]}"
    return f"; it has {sorted(names)}"


def _dotted_keys(node, prefix: str) -> Iterator[str]:
    if isinstance(node, DictConfig):
        for key in node.keys():
            full = f"{prefix}.{key}" if prefix else str(key)
            yield full
            yield from _dotted_keys(node._get_node(key), full)


# ---- nodes


def _child(node, key):
    """``node[key]`` as a node (DictConfig / ListConfig), None when it is absent or a value."""
    if not isinstance(node, DictConfig) or key not in node.keys():
        return None
    child = node._get_node(key)
    return child if isinstance(child, (DictConfig, ListConfig)) else None


def _walk(node, path: str, device: str) -> None:
    if isinstance(node, ListConfig):
        for i in range(len(node)):
            child = node._get_node(i)
            if isinstance(child, (DictConfig, ListConfig)):
                _walk(child, f"{path}.{i}", device)
        return
    if not isinstance(node, DictConfig):
        return
    if "_target_" in node:
        _check_node(node, path, device)
    for key in node.keys():
        child = _child(node, key)
        if child is not None and key != "_target_":
            _walk(child, f"{path}.{key}", device)


def _target(node: DictConfig, path: str):
    """The resolved ``_target_`` of ``node``, None when it is built by another node or is an
    interpolation (not judged here)."""
    if OmegaConf.is_interpolation(node, "_target_") or _child(node, "_target_") is not None:
        return None
    target = node["_target_"]
    if isinstance(target, str):
        try:
            target = locate(target)
        except ImportError as e:
            raise ConfigError(
                f"{path}._target_={node['_target_']!r} cannot be imported"
                f"{_missing_name(node['_target_'])}. Give the dotted name of a class or function "
                "importable in this Python (e.g. detectron2.modeling.ResNet), or the object "
                "itself: LazyCall(ResNet)(...)."
            ) from e
    if not callable(target):
        raise ConfigError(
            f"{path}._target_={node['_target_']!r} is {a_type(target)}, not a class or function "
            "to call."
        )
    return target


def _missing_name(name: str) -> str:
    """Which part of a dotted name is missing, and the closest name there."""
    module, _, attr = name.rpartition(".")
    while module:
        try:
            found = importlib.import_module(module)
        except ImportError:
            module, _, attr = module.rpartition(".")
            continue
        close = difflib.get_close_matches(attr, [n for n in dir(found) if not n.startswith("_")])
        return f" ({module} has no {attr!r}" + (f"; the closest is {close[0]!r})" if close else ")")
    return f" (no module {name.split('.')[0]!r})"


def _check_node(node: DictConfig, path: str, device: str) -> None:
    target = _target(node, path)
    if target is None:
        return
    name = getattr(target, "__qualname__", repr(target))
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without one: not judged
        return
    params = signature.parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = {n: p for n, p in params.items() if p.kind in kinds}
    any_key = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in node.keys():
        if key == "_target_":
            continue
        if key not in named:
            if any_key:
                continue
            close = difflib.get_close_matches(str(key), list(named), n=1)
            raise ConfigError(
                f"{path}.{key}: {name} takes no argument {key!r}"
                + (f"; the closest is {close[0]!r}" if close else "")
                + f". Its arguments are {list(named)} ({getattr(target, '__module__', '')}."
                f"{name})."
            )
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        if isinstance(node._get_node(key), DictConfig):
            continue  # a node or a mapping: built (and checked) on its own
        value = _value(node, key)
        _check_type(value, named[key], f"{path}.{key}", f"{name}'s {key}")
        known = _KNOWN.get(target, {}).get(key)
        if known:
            _check_range(f"{path}.{key}", value, *known, f"{name}'s {key}")
        # (a pixel_std not a list of numbers is its annotation's to judge)
        if key == "pixel_std" and isinstance(value, (list, tuple)) and all(map(is_number, value)):
            check_pixel_std(value, f"{path}.{key}")
        if target in _TEACHERS and key == "autocast" and value == "float16" and device:
            if torch.device(device).type == "cpu":
                raise ConfigError(
                    f"{path}.autocast='float16' with train.device={device!r}: {FLOAT16_ON_CPU}"
                )


def _value(node: DictConfig, key):
    """A node's argument as plain Python (a list's interpolated items stay as their text)."""
    child = node._get_node(key)
    if isinstance(child, ListConfig):
        return OmegaConf.to_container(child, resolve=False)
    return node[key]


# ---- types from annotations


def _check_type(value, param: inspect.Parameter, where: str, what: str) -> None:
    if _fits(param.annotation, value) is False:
        raise ConfigError(
            f"{where}={value!r}: {what} is {_describe(param.annotation)}, not "
            f"{a_type(value, items=True)}. Give a value of that type."
        )


def _fits(annotation, value) -> Optional[bool]:
    """Whether ``value`` fits ``annotation``: True, False (certainly not), None (not judged)."""
    if annotation is inspect.Parameter.empty or isinstance(annotation, str) or value is None:
        return None
    if _is_unjudged(value):
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        results = [_fits(a, value) for a in args]
        return True if True in results else None if None in results else False
    if annotation is type(None):
        return False
    if annotation in (int, float, bool, str):
        return _scalar_fits(annotation, value)
    if origin is None and isinstance(annotation, type) and annotation is not typing.Any:
        # a class: a plain value from the config file is passed as it is, so it is one or not
        if isinstance(value, (str, int, float, bool)):
            try:
                return isinstance(value, annotation)
            except TypeError:  # a class that cannot be asked (a typing construct)
                return None
        return None
    if origin in (list, tuple, collections.abc.Sequence) and args:
        if not isinstance(value, (list, tuple)):
            return None  # some take a single value too
        if origin is tuple and len(args) == len(value) and Ellipsis not in args:
            results = [_fits(a, v) for a, v in zip(args, value)]
        else:
            results = [_fits(args[0], v) for v in value]
        return False if False in results else True if all(results) else None
    return None


def _scalar_fits(kind, value) -> Optional[bool]:
    if isinstance(value, bool):
        return kind in (bool, int, float) or False
    if isinstance(value, int):
        return kind in (int, float) or (None if kind is bool else False)
    if isinstance(value, float):
        if kind is int:
            return math.isfinite(value) and value == int(value) or False
        return kind is float or False
    if isinstance(value, str):
        return kind is str
    if isinstance(value, (list, tuple, dict)):
        return False
    return None  # an object given in the config file (a callable, ...)


def _is_unjudged(value) -> bool:
    """An interpolation (or a list item that is one), a node, a mapping."""
    if isinstance(value, str):
        return "${" in value
    return isinstance(value, (dict, DictConfig))


def _describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        kinds = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(kinds) + (" or None" if type(None) in args else "")
    if origin in (list, tuple, collections.abc.Sequence) and args:
        return f"a list of {_describe(args[0]).split(' ', 1)[-1]}s"
    if isinstance(annotation, type):
        return with_article(annotation.__name__)
    return str(annotation)


# ---- values


def _check_range(where: str, value, kind, least: int, what: str) -> None:
    if not (isinstance(value, kind) and not isinstance(value, bool) and value >= least):
        raise ConfigError(
            f"{where}={value!r}: {what} must be {with_article(kind.__name__)} >= {least}."
        )


def _check_train(train: DictConfig) -> None:
    """``train.*`` as d2dist's loop reads them (the LazyConfig counterpart of ``SOLVER.*``)."""
    for key, (kind, least, meaning) in _TRAIN.items():
        node, *rest = key.split(".")
        holder = _child(train, node) if rest else train
        leaf = rest[0] if rest else node
        if not isinstance(holder, DictConfig) or leaf not in holder:
            continue
        if OmegaConf.is_interpolation(holder, leaf):
            continue
        value = holder[leaf]
        if isinstance(value, kind) and not isinstance(value, bool):
            if value >= least:
                continue
            problem = f"train.{key}={value!r}:"
        else:
            problem = f"train.{key}={value!r} is {a_type(value)};"
        raise ConfigError(
            f"{problem} it must be {with_article(kind.__name__)} >= {least} ({meaning})."
        )


def _check_datasets(cfg: DictConfig, training: bool) -> None:
    loaders = _child(cfg, "dataloader")
    if not isinstance(loaders, DictConfig):
        return
    registered = DatasetCatalog.list()
    for name in loaders.keys():
        dataset = _child(_child(loaders, name), "dataset")
        if (not training and name == "train") or not isinstance(dataset, DictConfig):
            continue
        if "names" not in dataset or OmegaConf.is_interpolation(dataset, "names"):
            continue
        if _target(dataset, f"dataloader.{name}.dataset") is not get_detection_dataset_dicts:
            continue  # another dataset function: what its `names` mean is its own
        names = _value(dataset, "names")
        for dataset_name in [names] if isinstance(names, str) else list(names):
            if not isinstance(dataset_name, str) or dataset_name in registered:
                continue
            close = difflib.get_close_matches(dataset_name, registered, n=1)
            ours = sorted(n for n in registered if n.startswith("d2dist_"))
            raise ConfigError(
                f"dataloader.{name}.dataset.names names {dataset_name!r}, which is not a "
                "registered dataset"
                + (f"; the closest is {close[0]!r}" if close else "")
                + f". d2dist's built-in ones are {ours}; Detectron2's (coco_2017_train, "
                "cityscapes_fine_*, ...) need their files under $DETECTRON2_DATASETS (see "
                "datasets/README.md); register your own with DatasetCatalog.register (or "
                "register_coco_instances) before the run, e.g. in the config file."
            )

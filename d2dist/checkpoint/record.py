"""What a checkpoint was trained with, and the check that ``--resume`` continues the same run.

Every checkpoint that d2dist's trainers write holds a *run record* (the checkpoint's ``d2dist``
entry): the run's whole config (flattened: the student's config files and ``_BASE_`` chain, or its
LazyConfig and the files it imports, are all in it) and, for a Distiller, its teacher's weights and
every file its config was built from (the config file, then its ``_BASE_`` chain, or the files a
LazyConfig teacher imports), with the SHA-256 of their contents. Resuming compares the record with
the run being started: any difference (a changed term, weight, schedule, student, teacher, or
teacher file contents, each named by its key or its file) stops the resume with the differences
listed, unless the user asks for it (``--allow-config-change``, or ``D2DIST_ALLOW_CONFIG_CHANGE=1``
for a project's own script). Keys that only steer how the run is executed (output directory,
device, workers, evaluation and checkpoint periods) may change, and so may the number of
iterations (``SOLVER.MAX_ITER``: to extend a run). A checkpoint without a record (another
program's) is resumed with a warning that says what could not be checked; a garbled record is an
error.
"""

import ast
import hashlib
import logging
import os
from typing import Dict, List, Optional, Tuple

import yaml

from ..errors import UNREADABLE_CHECKPOINT, ConfigError, a_type
from ..file_io import PREFIX, local_path

__all__ = [
    "ALLOWED_CHANGES",
    "check_resume",
    "saved_record",
    "config_change_allowed",
    "config_changes",
    "config_files",
    "file_sha256",
    "flatten",
    "run_record",
    "yaml_tree",
]

# Keys that may differ between a run and its resumption: they do not change what is trained.
ALLOWED_CHANGES = (
    "OUTPUT_DIR",
    "MODEL.DEVICE",
    "MODEL.WEIGHTS",  # read only when a run starts
    "SOLVER.MAX_ITER",  # to extend (or end earlier) a run
    "DATALOADER.NUM_WORKERS",
    "TEST.EVAL_PERIOD",
    "SOLVER.CHECKPOINT_PERIOD",
    "VIS_PERIOD",
    "CUDNN_BENCHMARK",
    "MODEL.DISTILL.TEACHER.CONFIG_FILE",  # a file may move: its contents are compared
    "MODEL.DISTILL.TEACHER.WEIGHTS",
    # LazyConfig
    "train.output_dir",
    "train.device",
    "train.init_checkpoint",
    "train.max_iter",
    "train.eval_period",
    "train.log_period",
    "train.checkpointer.period",
    "dataloader.train.num_workers",
    "dataloader.test.num_workers",
    "model.teacher.config_file",
    "model.teacher.weights",
)
ENV = "D2DIST_ALLOW_CONFIG_CHANGE"

logger = logging.getLogger(__name__)


def config_change_allowed(given: Optional[bool] = None) -> bool:
    """Whether a run may resume a checkpoint of another config (then loaded leniently): ``given``
    (``--allow-config-change`` of d2dist's tools), or, when None (a project's own script, which
    has no such flag), whether the environment sets ``D2DIST_ALLOW_CONFIG_CHANGE=1``."""
    if given is not None:
        return bool(given)
    return os.environ.get(ENV, "") == "1"


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's contents (for URLs: of the local copy Detectron2 caches)."""
    from detectron2.utils.file_io import PathManager

    local = PathManager.get_local_path(path)
    h = hashlib.sha256()
    with open(local, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def flatten(tree, prefix: str = "") -> Dict[str, str]:
    """``{"A.B": repr(value)}`` for every leaf of a nested mapping."""
    import torch

    out: Dict[str, str] = {}
    if isinstance(tree, torch.nn.Module):  # e.g. a LazyConfig optimizer's model: its type only
        return {prefix[:-1]: f"<{type(tree).__name__}>"}
    if isinstance(tree, dict):
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    out[prefix[:-1]] = _text(tree)
    return out


def _text(value) -> str:
    """``repr(value)``, made the same in every process: functions and classes (a LazyConfig's
    ``_target_``) by their qualified name, objects with a default repr by their type."""
    if isinstance(value, list):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_text(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_text(v)}" for k, v in value.items()) + "}"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', None)}.{value.__qualname__}"
    text = repr(value)
    if " at 0x" in text:  # the default repr: an address
        return f"<{type(value).__module__}.{type(value).__qualname__}>"
    return text


def _config_tree(cfg) -> dict:
    from detectron2.config import CfgNode
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, CfgNode):
        return yaml.safe_load(cfg.dump())
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=False)
    return dict(cfg)


def config_files(path: str) -> List[str]:
    """The files a config file is built from: ``path``, then, for a yacs ``.yaml`` file, its
    ``_BASE_`` chain (each base after the file that names it, resolved as Detectron2 resolves it),
    or, for a LazyConfig ``.py`` file, the files it imports relatively (``from .common import x``,
    as ``LazyConfig.load`` finds them), recursively; ``d2dist://`` paths as the files they name.
    URLs and files that cannot be read are left out (building from them reports them)."""
    files: List[str] = []

    def visit(file: str) -> None:
        file = _local(file)
        if file in files or not os.path.isfile(file):
            return
        files.append(file)
        for other in _lazy_imports(file) if file.endswith(".py") else _bases(file):
            visit(other)

    visit(path)
    return files


class _BaseLoader(yaml.SafeLoader):
    """YAML without constructing Python objects (``!!python/...`` tags read as None): only
    ``_BASE_`` is looked for."""


_BaseLoader.add_multi_constructor("", lambda loader, tag, node: None)


def yaml_tree(path: str) -> dict:
    """The mapping a YAML config file holds, read without constructing Python objects; ``{}`` for
    a file that cannot be read or holds no mapping (merging it reports that)."""
    try:
        with open(path) as f:
            tree = yaml.load(f, Loader=_BaseLoader)
    except (OSError, yaml.YAMLError):
        return {}
    return tree if isinstance(tree, dict) else {}


def _local(path: str) -> str:
    """The file a ``d2dist://`` path names (as given where it names none)."""
    try:
        return local_path(path)
    except FileNotFoundError:
        return path


def _bases(path: str) -> List[str]:
    tree = yaml_tree(path)
    bases = tree.get("_BASE_")
    bases = [bases] if isinstance(bases, str) else bases if isinstance(bases, list) else []
    out = []
    for base in (b for b in bases if isinstance(b, str)):
        base = os.path.expanduser(base) if base.startswith("~") else base
        if base.startswith(("https://", "http://")):
            continue
        if base.startswith(PREFIX):  # d2dist.config.CfgNode reads it so
            out.append(_local(base))
            continue
        out.append(base if base.startswith("/") else os.path.join(os.path.dirname(path), base))
    return out


def _lazy_imports(path: str) -> List[str]:
    try:
        with open(path) as f:
            tree = ast.parse(f.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level and node.module:
            file = os.path.dirname(path)
            for _ in range(node.level - 1):
                file = os.path.dirname(file)
            file = os.path.join(file, *node.module.split("."))
            out.append(file if file.endswith(".py") else file + ".py")
    return out


def run_record(cfg, teacher=None) -> dict:
    """The record of a run: its config (flattened) and, for a loaded
    :class:`~d2dist.modeling.Teacher`, the fingerprints of its files, computed here: its weights
    (the file it loaded) and each file of :func:`config_files` (``config_files``: ``[path,
    sha256]`` pairs)."""
    record = {"config": flatten(_config_tree(cfg)), "teacher": None}
    if teacher is not None:
        config_file = getattr(teacher, "config_path", "")
        files = [[f, file_sha256(f)] for f in config_files(config_file)] if config_file else []
        record["teacher"] = {
            "source": teacher.source,
            "weights": teacher.weights,
            "weights_sha256": file_sha256(teacher.weights_file),
            "config_sha256": files[0][1] if files else "",
            "config_files": files,
        }
    return record


def config_changes(saved: Optional[dict], current: dict) -> List[str]:
    """The differences between a checkpoint's record and the current run's, one line each
    (nothing for a checkpoint without a record, or keys of :data:`ALLOWED_CHANGES`)."""
    if not saved:
        return []
    changes = []
    before, after = saved.get("config", {}), current.get("config", {})
    for key in sorted(set(before) | set(after)):
        if key in ALLOWED_CHANGES or before.get(key) == after.get(key):
            continue
        changes.append(f"{key}: {before.get(key, '(absent)')} -> {after.get(key, '(absent)')}")
    t_before, t_after = saved.get("teacher") or {}, current.get("teacher") or {}
    if t_before.get("weights_sha256") != t_after.get("weights_sha256"):
        changes.append(
            f"teacher weights (contents): {_short(t_before.get('weights_sha256'))} -> "
            f"{_short(t_after.get('weights_sha256'))} ({t_before.get('weights', '')} -> "
            f"{t_after.get('weights', '')})"
        )
    return changes + _teacher_config_changes(t_before, t_after)


def _teacher_config_changes(before: dict, after: dict) -> List[str]:
    """The teacher's config files whose contents differ, each under its own path (a file may
    move: ``TEACHER.CONFIG_FILE`` is an allowed change, its contents are compared)."""
    old, new = _files(before), _files(after)
    if "config_files" not in before:  # a record of an earlier d2dist: the config file alone
        new = new[:1]
    changes = []
    for i in range(max(len(old), len(new))):
        path0, sha0 = old[i] if i < len(old) else ("", "")
        path1, sha1 = new[i] if i < len(new) else ("", "")
        if sha0 == sha1:
            continue
        if i == 0:
            role = "teacher config file"
        elif (new or old)[0][0].endswith(".py"):
            role = "file the teacher config imports"
        else:
            role = "teacher config's _BASE_ file"
        moved = f" (was {path0!r})" if path0 and path1 and path0 != path1 else ""
        changes.append(
            f"{role} {path1 or path0 or '(unknown)'!r} (contents): {_short(sha0)} -> "
            f"{_short(sha1)}{moved}"
        )
    return changes


def _files(teacher: dict) -> List[Tuple[str, str]]:
    if "config_files" in teacher:
        return [(str(path), str(sha)) for path, sha in teacher["config_files"]]
    return [("", teacher["config_sha256"])] if teacher.get("config_sha256") else []


def _short(sha) -> str:
    return sha[:12] if sha else "(none)"


def check_resume(
    saved: Optional[dict], current: dict, checkpoint: str, allowed: bool = False
) -> None:
    """Refuse to resume from ``checkpoint`` when its run record differs from the current run's,
    listing the differences (unless changes are allowed). A checkpoint without a record is
    resumed with a warning; a garbled record is a :class:`ConfigError` (a warning when changes
    are allowed)."""
    if saved is None:
        readable, _ = _read_record(checkpoint)
        if readable:  # (one that cannot be read is reported by the load itself)
            logger.warning(
                f"--resume: the checkpoint {checkpoint} holds no run record (another program "
                "wrote it, or a d2dist from before run records), so the config it was trained "
                "with, its teacher's weights and its teacher's config files cannot be compared "
                "with this run's: it is resumed with this run's config as given. Make sure that "
                "is the run's own config (its OUTPUT_DIR's config.yaml); the checkpoints this run "
                "writes hold a record."
            )
        return
    problem = _garbled(saved)
    if problem:
        message = (
            f"the run record of {checkpoint!r} (its 'd2dist' entry) is garbled ({problem}), so "
            "d2dist cannot check that this run continues with the config it was trained with."
        )
        if allowed:
            logger.warning(f"--resume: {message} Resumed without the check (changes allowed).")
            return
        raise ConfigError(
            f"--resume: {message} If this is the run's own config (its OUTPUT_DIR's "
            "config.yaml) and the checkpoint's weights are sound, resume with "
            f"--allow-config-change (in your own train_net: {ENV}=1), which skips the check; else "
            "resume from an earlier checkpoint of the run (name it in OUTPUT_DIR/last_checkpoint) "
            "or start a new run in another OUTPUT_DIR."
        )
    changes = config_changes(saved, current)
    if not changes:
        return
    listed = "\n  ".join(changes)
    if allowed:
        logger.warning(f"--resume continues {checkpoint} with these changes (allowed):\n  {listed}")
        return
    raise ConfigError(
        f"--resume would continue {checkpoint} with another configuration than it was trained "
        f"with:\n  {listed}\nThe checkpoint is valid: resume with the run's own config (its "
        "config.yaml), start a new run in another OUTPUT_DIR, or pass --allow-config-change "
        f"(in your own train_net: {ENV}=1) to continue it with these changes on purpose."
    )


def _garbled(record) -> str:
    """What is wrong with a saved run record, "" when it has the layout :func:`run_record`
    writes."""
    if not isinstance(record, dict):
        return f"{a_type(record)}, not a mapping"
    config = record.get("config")
    if not isinstance(config, dict):
        return f"its 'config' is {a_type(config)}, not a mapping of keys to values"
    bad = [k for k, v in config.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        return f"config entries that are not text: {bad[:5]}"
    teacher = record.get("teacher")
    if teacher is None:
        return ""
    if not isinstance(teacher, dict):
        return f"its 'teacher' is {a_type(teacher)}, not a mapping"
    for key in ("source", "weights", "weights_sha256", "config_sha256"):
        if not isinstance(teacher.get(key, ""), str):
            return f"its teacher's {key!r} is {a_type(teacher[key])}, not text"
    files = teacher.get("config_files", [])
    pairs = isinstance(files, list) and all(
        isinstance(f, (list, tuple)) and len(f) == 2 and all(isinstance(x, str) for x in f)
        for f in files
    )
    return "" if pairs else "its teacher's 'config_files' is not a list of [path, sha256] pairs"


def _read_record(checkpoint: str):
    """``(readable, record)``: whether the checkpoint file can be read (memory-mapped, without
    loading its tensors) and its ``d2dist`` entry (None when it has none)."""
    import torch

    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    except UNREADABLE_CHECKPOINT:
        return False, None
    return True, data.get("d2dist") if isinstance(data, dict) else None


def saved_record(checkpoint: str) -> Optional[dict]:
    """The run record of a checkpoint file, read without loading its tensors (memory-mapped);
    None for a checkpoint without one or a file that cannot be read that way (the checkpointer's
    own load then reports it). It is returned as saved: :func:`check_resume` checks its layout."""
    return _read_record(checkpoint)[1]

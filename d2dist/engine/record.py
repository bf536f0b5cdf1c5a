"""What a checkpoint was trained with, and the check that ``--resume`` continues the same run.

Every checkpoint that d2dist's trainers write holds a *run record* (the checkpoint's ``d2dist``
entry): the run's whole config and, for a Distiller, its teacher's config file and weights with
the SHA-256 of their contents. Resuming compares the record with the run being started: any
difference (a changed term, weight, schedule, student, teacher, or teacher file contents) stops
the resume with the differences listed, unless the user asks for it (``--allow-config-change``,
or ``D2DIST_ALLOW_CONFIG_CHANGE=1`` for a project's own script). Keys that only steer how the run
is executed (output directory, device, workers, evaluation and checkpoint periods) may change, and
so may the number of iterations (``SOLVER.MAX_ITER``: to extend a run).
"""

import hashlib
import os
from typing import Dict, List, Optional

import yaml

from ..errors import UNREADABLE_CHECKPOINT, ConfigError

__all__ = [
    "ALLOWED_CHANGES",
    "check_resume",
    "saved_record",
    "allow_config_change",
    "changes_allowed",
    "config_changes",
    "file_sha256",
    "flatten",
    "run_record",
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
_ALLOW = {"value": False}


def allow_config_change(allow: bool) -> None:
    """Let ``--resume`` continue a run whose config changed (``--allow-config-change``)."""
    _ALLOW["value"] = bool(allow)


def changes_allowed() -> bool:
    """Whether this run may resume a checkpoint of another config (then loaded leniently)."""
    return _ALLOW["value"] or os.environ.get(ENV, "") == "1"


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


def run_record(cfg, teacher=None) -> dict:
    """The record of a run: its config (flattened) and its teacher's files' fingerprints."""
    record = {"config": flatten(_config_tree(cfg)), "teacher": None}
    if teacher is not None:
        config_file = getattr(teacher, "config_path", "")
        record["teacher"] = {
            "source": teacher.source,
            "weights": teacher.weights,
            "weights_sha256": teacher.weights_sha256,
            "config_sha256": file_sha256(config_file) if config_file else "",
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
    for key, what in (("weights_sha256", "teacher weights (contents)"),
                      ("config_sha256", "teacher config file (contents)")):  # fmt: skip
        if t_before.get(key) != t_after.get(key):
            changes.append(
                f"{what}: {t_before.get(key, '(none)')[:12]} -> {t_after.get(key, '(none)')[:12]}"
                f" ({t_before.get('weights', '')} -> {t_after.get('weights', '')})"
            )
    return changes


def check_resume(saved: Optional[dict], current: dict, checkpoint: str) -> None:
    """Refuse to resume from ``checkpoint`` when its run record differs from the current run's,
    listing the differences (unless changes are allowed)."""
    changes = config_changes(saved, current)
    if not changes or changes_allowed():
        return
    listed = "\n  ".join(changes)
    raise ConfigError(
        f"--resume would continue {checkpoint} with another configuration than it was trained "
        f"with:\n  {listed}\nThe checkpoint is valid: resume with the run's own config (its "
        "config.yaml), start a new run in another OUTPUT_DIR, or pass --allow-config-change "
        f"(in your own train_net: {ENV}=1) to continue it with these changes on purpose."
    )


def saved_record(checkpoint: str) -> Optional[dict]:
    """The run record of a checkpoint file, read without loading its tensors (memory-mapped);
    None for a checkpoint without one or a file that cannot be read that way (the checkpointer's
    own load then reports it)."""
    import torch

    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    except UNREADABLE_CHECKPOINT:  # the real load explains it
        return None
    return data.get("d2dist") if isinstance(data, dict) else None

"""Export the student of a Distiller run as a plain Detectron2 checkpoint and config.

The Python side of ``d2dist-export`` (``tools/export_student.py``)::

    from d2dist.config import get_cfg
    from d2dist.engine import export_student, run_checkpoint

    cfg = get_cfg()
    cfg.merge_from_file("output/my_run/config.yaml")  # the run's own config (all its overrides)
    weights, config = export_student(cfg, run_checkpoint("output/my_run"), "student.pth")

``weights`` (``student.pth``) and ``config`` (``student.yaml``) are then plain Detectron2: e.g.
``c = detectron2.config.get_cfg(); c.merge_from_file(config); DefaultPredictor(c)``. A LazyConfig
run exports with :func:`export_lazy_student` (same arguments; a ``LazyConfig.load``-ed config).
"""

import copy
import logging
import os
from typing import List, Tuple

import torch
from detectron2.config import CfgNode, LazyConfig, instantiate
from detectron2.config import get_cfg as d2_get_cfg
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from ..config import config_defaults
from ..errors import UNREADABLE_CHECKPOINT, ConfigError, RunFault, is_write_failure, os_error_cause
from ..modeling.meta_arch.state import split_distiller_state
from .configs import is_distiller_node, student_config

__all__ = ["export_lazy_student", "export_student", "plain_student_config", "run_checkpoint"]

logger = logging.getLogger(__name__)


def _plain(value):
    """Tuples as lists (a config file gives lists where defaults are tuples), for comparison."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _prune(node: CfgNode, base: CfgNode, defaults: CfgNode, path: str, kept: List[str]) -> None:
    """Remove from ``node`` the keys absent from ``base`` whose value is their default; the
    others absent from ``base`` (a project's keys in use) are listed in ``kept``."""
    for key in list(node):
        full = f"{path}{key}"
        value = node[key]
        in_base = base is not None and key in base
        default = defaults.get(key) if isinstance(defaults, CfgNode) else None
        if isinstance(value, CfgNode):
            _prune(value, base[key] if in_base else None, default, f"{full}.", kept)
            if not in_base and not value:
                del node[key]
        elif not in_base:
            if _plain(value) == _plain(default):
                del node[key]
            else:
                kept.append(full)


def plain_student_config(cfg: CfgNode) -> Tuple[CfgNode, List[str]]:
    """The student's config as a plain Detectron2 config, and the project keys it still uses.

    From :func:`student_config`, keys that plain ``detectron2.config.get_cfg()`` lacks are left
    out where they hold their default (DeepLab's and FCOS's keys, which d2dist's own config adds,
    and any project's); those set to something else are kept and returned, so that merging the
    file needs only the config functions of the student's own project. ``MODEL.DEVICE`` is left
    out (the loading machine's default applies).
    """
    scfg = student_config(cfg)
    kept: List[str] = []
    _prune(scfg, d2_get_cfg(), config_defaults(cfg), "", kept)
    scfg.MODEL.pop("DEVICE")
    return scfg, kept


def run_checkpoint(run_dir: str) -> str:
    """The checkpoint a run directory ends with: the one its ``last_checkpoint`` names."""
    tag = os.path.join(run_dir, "last_checkpoint")
    if not os.path.isfile(tag):
        raise ConfigError(
            f"run directory {run_dir!r} has no last_checkpoint: it holds no finished or "
            "interrupted training run (give --checkpoint FILE instead)."
        )
    with open(tag) as f:
        name = f.read().strip()
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise ConfigError(f"{tag} names {name!r}, which is not in {run_dir!r}.")
    return path


def _student_weights(checkpoint: str, output: str, overwrite: bool = False):
    """The student's entries of a Distiller checkpoint (named as in the student alone) and the
    names of the Distiller's own modules it held; refuses to write over the checkpoint itself."""
    if not os.path.isfile(checkpoint):
        raise ConfigError(f"checkpoint {checkpoint!r} does not exist")
    if os.path.isdir(output) or output.endswith(os.sep):
        raise ConfigError(f"--output {output!r} is a directory; give the file to write (.pth).")
    if _is_same(output, checkpoint):
        raise ConfigError(
            f"--output {output!r} is the checkpoint being exported: it would replace the run's "
            "checkpoint (optimizer, scheduler, adapters) by the student alone. Write the student "
            "to another file, e.g. student.pth next to it."
        )
    existing = [p for p in (output, os.path.splitext(output)[0] + ".yaml") if os.path.exists(p)]
    if existing and not overwrite:
        raise ConfigError(
            f"--output {output!r}: {' and '.join(repr(p) for p in existing)} exist already (an "
            "earlier export?), and an export never replaces files silently. Pass --overwrite to "
            "replace them, or choose another --output."
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except UNREADABLE_CHECKPOINT as e:  # a file that is not a checkpoint
        raise ConfigError(
            f"could not read checkpoint {checkpoint!r}: {type(e).__name__}: {str(e)[:300]}"
        ) from e
    if not isinstance(state, dict):
        raise ConfigError(f"{checkpoint!r} is not a checkpoint (it holds a {type(state).__name__})")
    model_state = state.get("model", state)
    weights, dropped = split_distiller_state(model_state)
    if not (dropped or _is_distiller_run(state.get("d2dist"))):
        raise ConfigError(
            f"{checkpoint!r} is not a checkpoint of a Distiller run (it holds no distillation "
            "terms' entries, nor a record of a Distiller config): a plain model's checkpoint "
            "needs no export (it loads into the student as it is)."
        )
    return dict(weights), dropped


def _is_distiller_run(record) -> bool:
    """Whether a checkpoint's run record (:mod:`.record`) is that of a Distiller config."""
    config = (record or {}).get("config", {})
    if config.get("MODEL.META_ARCHITECTURE") == "'Distiller'":
        return True
    target = config.get("model._target_", "")
    return "Distiller" in target


def _is_same(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    )


def _strict_load(model, weights: dict, checkpoint: str) -> None:
    """Load ``weights`` strictly into ``model``, a mismatch being a :class:`ConfigError`."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise ConfigError(
            f"the student weights of {checkpoint!r} do not fit the student of this config "
            f"({str(e)[:600]}). Export with the run's own config: --run-dir OUTPUT_DIR, or the "
            "--config-file and overrides the run was trained with."
        ) from e


def _save(obj, path: str) -> None:
    """``torch.save`` through a Python file: a failed write is then an ``OSError`` with its errno
    (PyTorch's own writer reports a full disk as "unexpected pos")."""
    with open(path, "wb") as f:
        torch.save(obj, f)


def _write_atomically(files) -> None:
    """``(path, write(tmp_path))`` pairs: the files appear only once all of them are completely
    written. A failure to write (a full disk, a read-only directory) is a
    :class:`~d2dist.errors.RunFault` naming the file and the cause, and leaves every path as it
    was (nothing half-exported)."""
    written = []
    try:
        for path, write in files:
            tmp = path + ".tmp"
            written.append(tmp)
            try:
                write(tmp)
            except Exception as e:
                if not is_write_failure(e):
                    raise
                raise RunFault(
                    f"could not write {path!r}: {os_error_cause(e)}. Nothing was exported (no "
                    "file was replaced); free space or choose another --output."
                ) from e
        for (path, _), tmp in zip(files, written):
            os.replace(tmp, path)
    finally:
        for tmp in written:
            if os.path.exists(tmp):
                os.remove(tmp)


def export_lazy_student(
    cfg, checkpoint: str, output: str, *, overwrite: bool = False
) -> Tuple[str, str]:
    """:func:`export_student` for a LazyConfig run (its ``model`` a Distiller): the student's
    LazyConfig (the run's config with ``model`` = its ``model.student`` and
    ``train.init_checkpoint`` = the exported weights) is saved with ``LazyConfig.save``, which
    plain Detectron2 loads (``LazyConfig.load`` + ``instantiate(cfg.model)``)."""
    if not is_distiller_node(cfg.model):
        raise ConfigError("the LazyConfig's model is not a d2dist Distiller: no student to export")
    weights, dropped = _student_weights(checkpoint, output, overwrite)
    model = instantiate(cfg.model.student)
    _strict_load(model, weights, checkpoint)  # verify before writing anything
    scfg = copy.deepcopy(cfg)
    scfg.model = cfg.model.student
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    scfg.train.init_checkpoint = os.path.relpath(os.path.abspath(output))
    config_path = os.path.splitext(output)[0] + ".yaml"
    _write_atomically(
        [
            (
                output,
                lambda tmp: _save({"model": weights, "__author__": "d2dist export"}, tmp),
            ),
            (config_path, lambda tmp: LazyConfig.save(scfg, tmp)),
        ]
    )
    logger.info(
        f"Exported the student ({len(weights)} tensors; dropped {dropped}) to {output} with its "
        f"LazyConfig {config_path}"
    )
    return output, config_path


def export_student(
    cfg: CfgNode, checkpoint: str, output: str, *, overwrite: bool = False
) -> Tuple[str, str]:
    """Write the student's weights to ``output`` (.pth) and its config next to it (.yaml).

    Example (see the module docstring)::

        weights, config = export_student(cfg, "output/my_run/model_final.pth", "student.pth")

    Args:
        cfg: the run's config: a Distiller config (e.g. the run directory's ``config.yaml``
            merged into :func:`d2dist.config.get_cfg`, with the project's config functions the
            run used).
        checkpoint: a checkpoint of that run (:func:`run_checkpoint` gives the last one).
        output: the weights file to write; the config goes to the same name with ``.yaml``.
        overwrite: replace the files of an earlier export at ``output`` (otherwise a
            :class:`~d2dist.errors.ConfigError`).

    The weights are the student's entries of a Distiller checkpoint (see
    :func:`~d2dist.modeling.meta_arch.state.split_distiller_state`): no teacher, adapters or
    other training-only modules. They are checked by loading them
    strictly into a model built from the written config. The config is plain Detectron2
    (:func:`plain_student_config`) and names the weights by a path relative to the working
    directory. Both files appear only once completely written.

    Returns:
        the paths of the weights and the config.
    """
    scfg, kept = plain_student_config(cfg)
    weights, dropped = _student_weights(checkpoint, output, overwrite)
    # Verify before writing anything: strict load into the plain student, on the CPU (built from
    # the whole config: the written one leaves out keys at their defaults, which the loading
    # side's config functions supply).
    check = student_config(cfg)
    check.MODEL.DEVICE = "cpu"
    check.MODEL.WEIGHTS = ""
    model = build_model(check)
    _strict_load(model, weights, checkpoint)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    scfg.MODEL.WEIGHTS = os.path.relpath(os.path.abspath(output))
    config_path = os.path.splitext(output)[0] + ".yaml"

    def write_config(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(scfg.dump())

    _write_atomically(
        [
            (
                output,
                lambda tmp: _save({"model": weights, "__author__": "d2dist export"}, tmp),
            ),
            (config_path, write_config),
        ]
    )
    meta = META_ARCH_REGISTRY.get(scfg.MODEL.META_ARCHITECTURE)
    if meta.__module__.startswith("d2dist."):
        logger.warning(
            f"The student's meta-architecture {scfg.MODEL.META_ARCHITECTURE!r} is registered by "
            f"d2dist ({meta.__module__}; Detectron2 builds it from LazyConfig only), so loading "
            "the exported config needs `import d2dist` (and d2dist.config.get_cfg())."
        )
    logger.info(
        f"Exported the student ({len(weights)} tensors; dropped {dropped}) to {output} with its "
        f"config {config_path}"
        + (f"; it uses project keys {kept}: merge it after that project's config function"
           if kept else "")  # fmt: skip
    )
    return output, config_path

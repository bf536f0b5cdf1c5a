"""The pieces of ``tools/train_net.py``: config set-up with validation, the run, the launcher."""

import logging
import math
import os
from typing import Callable, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser, hooks
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..checkpoint import EvalCheckpointer, resume_or_load
from ..checkpoint.record import config_files, yaml_tree
from ..config import (
    KEYS_AND_TYPES,
    check_pixel_statistics,
    get_cfg,
    merge_config_file,
    merge_overrides,
)
from ..data.checks import register_coco_format
from ..data.unlabeled import register_image_folder
from ..errors import ConfigError
from ..modeling.teacher import FLOAT16_ON_CPU
from .configs import for_evaluation
from .run import add_run_arguments, prepare_run, release_run, resolve_device
from .teacher_eval import check_distiller_for_eval_teacher, check_teacher_results
from .trainer import Trainer, check_test_augmentation

__all__ = [
    "argument_parser",
    "evaluate",
    "load_config",
    "register_coco_datasets",
    "setup",
    "train_or_eval",
]

logger = logging.getLogger(__name__)


# What an unknown key of the student's config may mean besides a typo.
_PROJECT_KEYS = (
    " A key of a Detectron2 project (PointRend, Panoptic-DeepLab, your own) needs that project's "
    "config function: pass --config-function MODULE.FUNCTION, e.g. --config-function "
    "detectron2.projects.point_rend.add_pointrend_config (docs/own_project.md, 'Project keys'). "
    "A dataset of your own in COCO format needs no key: --coco-dataset NAME "
    "ANNOTATIONS.json IMAGE_DIR registers it."
)


def _merge(cfg: CfgNode, merge: Callable, value, source: str) -> None:
    """``merge(value)``; what yacs itself still refuses (a renamed key, an assertion of a config
    upgrade) as a :class:`ConfigError` naming ``source``. Unknown keys and wrong value types are
    refused before, by :func:`~d2dist.config.merge_config_file` and
    :func:`~d2dist.config.merge_overrides`, with the closest key and the expected type."""
    try:
        merge(value)
    except ConfigError:
        raise
    except (KeyError, ValueError, AssertionError, TypeError) as e:
        hint = _PROJECT_KEYS if "Non-existent" in str(e) else ""
        raise ConfigError(f"{source}: {e}. {KEYS_AND_TYPES}{hint}") from e


def register_coco_datasets(datasets: Sequence[Sequence[str]]) -> None:
    """Register ``(name, annotations.json, image_dir)`` COCO-format datasets (``--coco-dataset``)
    as Detectron2's ``register_coco_instances`` does (evaluated by its COCOEvaluator), loaded by
    :func:`d2dist.data.load_coco_format`: a file that cannot be used (invalid JSON, an image
    without ``file_name``, an unknown ``category_id``) is a :class:`DataError` naming the entry,
    and the records are checked when a trainer loads them (:mod:`d2dist.data.checks`).

    A name registered already with the same files is left as it is (each process of a
    multi-process run, or a second run in one process, registers again).
    """
    for name, json_file, image_root in datasets:
        for what, path, test in (("annotation file", json_file, os.path.isfile),
                                 ("image directory", image_root, os.path.isdir)):  # fmt: skip
            if not test(path):
                raise ConfigError(
                    f"--coco-dataset {name} {json_file} {image_root}: the {what} {path!r} does "
                    f"not exist (working directory {os.getcwd()})."
                )
        if name in DatasetCatalog.list():
            meta = MetadataCatalog.get(name)
            same = (
                getattr(meta, "json_file", None) == json_file
                and getattr(meta, "image_root", None) == image_root
            )
            if same:
                continue
            raise ConfigError(
                f"--coco-dataset {name} ...: a dataset named {name!r} is registered already "
                f"(json_file={getattr(meta, 'json_file', None)!r}); choose another name."
            )
        register_coco_format(name, json_file, image_root)
        logger.info(f"Registered the COCO-format dataset {name!r}: {json_file}, {image_root}")


def _resolve_device(cfg: CfgNode, opts: Sequence[str]) -> None:
    explicit = "MODEL.DEVICE" in list(opts)[::2]
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE, explicit, "MODEL.DEVICE")


def _check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f"MODEL.DEVICE={device!r} is not a device PyTorch knows ({e}); use 'cpu', 'cuda' or "
            "'cuda:N'."
        ) from e
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"MODEL.DEVICE={device!r}: d2dist trains on 'cpu' or 'cuda' devices.")


def _check_solver(cfg: CfgNode, training: bool) -> None:
    """Values Detectron2 accepts but cannot run with (a zero period divides by zero mid-run).
    Their types were checked when they were merged (:func:`~d2dist.config.merge_overrides`)."""
    s = cfg.SOLVER
    checks = [
        ("SOLVER.IMS_PER_BATCH", s.IMS_PER_BATCH, s.IMS_PER_BATCH >= 1, "at least 1"),
        ("SOLVER.CHECKPOINT_PERIOD", s.CHECKPOINT_PERIOD, s.CHECKPOINT_PERIOD >= 1,
         "at least 1 (iterations between checkpoints)"),
        ("TEST.EVAL_PERIOD", cfg.TEST.EVAL_PERIOD, cfg.TEST.EVAL_PERIOD >= 0,
         ">= 0 (0: evaluate once, after the last iteration)"),
    ]  # fmt: skip
    if training:
        checks += [
            ("SOLVER.MAX_ITER", s.MAX_ITER, s.MAX_ITER >= 1, "at least 1 (iterations to train)"),
            (
                "SOLVER.BASE_LR",
                s.BASE_LR,
                math.isfinite(s.BASE_LR) and s.BASE_LR > 0,
                "> 0 (and finite)",
            ),
        ]
    for key, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{key}={value!r}: must be {expected}.")


def _check_teacher_autocast(cfg: CfgNode) -> None:
    """A Distiller's ``TEACHER.AUTOCAST`` on the (resolved) device of the run."""
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        return
    autocast = cfg.MODEL.DISTILL.TEACHER.AUTOCAST
    if autocast == "float16" and torch.device(cfg.MODEL.DEVICE).type == "cpu":
        raise ConfigError(
            f"MODEL.DISTILL.TEACHER.AUTOCAST={autocast!r} with MODEL.DEVICE="
            f"{cfg.MODEL.DEVICE!r}: {FLOAT16_ON_CPU}"
        )


def _setting(tree: dict, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _check_student_meta_architecture(cfg: CfgNode, config_file: str, opts: Sequence[str]) -> None:
    """A Distiller config whose student's files describe another meta-architecture than
    ``STUDENT_META_ARCHITECTURE``, left at its default ('GeneralizedRCNN'): e.g. a RetinaNet
    config made a Distiller by ``META_ARCHITECTURE: "Distiller"`` alone."""
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        return
    key = "MODEL.DISTILL.STUDENT_META_ARCHITECTURE"
    files = [(path, yaml_tree(path)) for path in config_files(config_file)]  # most derived first
    if key in list(opts)[::2] or any(_setting(tree, key) is not None for _, tree in files):
        return  # set on purpose
    student = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    for path, tree in files:
        described = _setting(tree, "MODEL.META_ARCHITECTURE")
        if described in (None, "Distiller"):
            continue
        if described != student:
            raise ConfigError(
                f"{key}={student!r} (its default) cannot be built from this config: "
                f"{os.path.normpath(path)} describes a {described} (MODEL.META_ARCHITECTURE: "
                f"{described!r}), and a Distiller's student is the model the rest of cfg.MODEL "
                f"configures. Set {key} {described!r}, in the config file or on the command line."
            )
        return


def check_batch_split(cfg: CfgNode, world_size: int) -> None:
    """``SOLVER.IMS_PER_BATCH`` is split evenly between the processes of a run."""
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} images per step cannot be split "
            f"evenly between {world_size} processes (--num-gpus x --num-machines): use a multiple "
            f"of {world_size}, e.g. SOLVER.IMS_PER_BATCH "
            f"{max(world_size, cfg.SOLVER.IMS_PER_BATCH // world_size * world_size)}."
        )


def _check_datasets(cfg: CfgNode, training: bool) -> None:
    registered = set(DatasetCatalog.list())
    if training and not cfg.DATASETS.TRAIN:
        raise ConfigError("DATASETS.TRAIN is empty: name at least one registered training set.")
    for key in (["DATASETS.TRAIN"] if training else []) + ["DATASETS.TEST"]:
        for name in cfg.DATASETS.get(key.split(".")[1]):
            if name not in registered:
                ours = sorted(n for n in registered if n.startswith("d2dist_"))
                raise ConfigError(
                    f"{key} names {name!r}, which is not a registered dataset. d2dist's built-in "
                    f"ones are {ours}; Detectron2's (coco_2017_train, cityscapes_fine_*, ...) "
                    f"need their files under $DETECTRON2_DATASETS (see datasets/README.md); "
                    "register your own with DatasetCatalog.register before building the trainer, "
                    "or, for a dataset in COCO format, with --coco-dataset NAME JSON IMAGE_DIR."
                )


def load_config(
    config_file: str,
    opts: Sequence[str],
    *,
    training: bool = True,
    config_functions: Sequence[str] = (),
    coco_datasets: Sequence[Sequence[str]] = (),
    image_folders: Sequence[Sequence[str]] = (),
) -> CfgNode:
    """The validated (not frozen) config of ``config_file`` with ``KEY VALUE`` overrides ``opts``.

    ``config_functions`` (dotted names, ``--config-function``) add a project's keys before the
    file is merged (the teacher's config starts from them too); ``coco_datasets`` are registered
    first (:func:`register_coco_datasets`), and ``image_folders`` (``(name, folder)``, ``--image-folder``)
    as unlabeled datasets (:func:`d2dist.data.register_image_folder`). Checks the file, the keys (an unknown one with the
    closest valid key) and the value types as they are merged, then the solver, the pixel
    statistics, a teacher's autocast on the device, the datasets (the training sets too if
    ``training``) and resolves ``MODEL.DEVICE``; every problem is a :class:`ConfigError` that says
    how to fix it.
    """
    if not config_file:
        raise ConfigError("--config-file is required: the YAML config of the model to train.")
    try:
        exists = PathManager.isfile(config_file)  # a path, or d2dist://configs/... (file_io)
    except FileNotFoundError as e:  # d2dist:// in an installed d2dist without its configs
        raise ConfigError(f"--config-file: {e}") from e
    if not exists:
        raise ConfigError(
            f"--config-file {config_file!r} does not exist (working directory: "
            f"{os.getcwd()}). Configs that ship with d2dist are under configs/, from anywhere "
            "d2dist://configs/<path>."
        )
    register_coco_datasets(coco_datasets)
    for name, folder in image_folders:
        register_image_folder(name, folder)
    cfg = get_cfg(*config_functions)
    what, where = f"config file {config_file!r}", "command-line overrides"
    _merge(cfg, lambda path: merge_config_file(cfg, path, what, _PROJECT_KEYS), config_file, what)
    _merge(cfg, lambda pairs: merge_overrides(cfg, pairs, where, _PROJECT_KEYS), opts, where)
    _check_student_meta_architecture(cfg, config_file, opts)
    _check_device(cfg.MODEL.DEVICE)
    _resolve_device(cfg, opts)
    _check_solver(cfg, training)
    check_pixel_statistics(cfg, f"the config ({config_file!r} with the command-line overrides)")
    _check_teacher_autocast(cfg)
    _check_datasets(cfg, training=training)
    if training and cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
        raise ConfigError(
            f"SOLVER.AMP.ENABLED is True but MODEL.DEVICE is {cfg.MODEL.DEVICE!r}: Detectron2's "
            "AMPTrainer runs CUDA autocast and a CUDA GradScaler only. Train on a GPU, or pass "
            "SOLVER.AMP.ENABLED False on the CPU (a teacher can still run in bfloat16 there with "
            "MODEL.DISTILL.TEACHER.AUTOCAST, though on CPUs without native bfloat16 it is slower)."
        )
    return cfg


def setup(args) -> CfgNode:
    """Build, validate and freeze the config of a ``train_net.py`` run, then set up logging.

    CPU runs flush subnormal floats to zero (:mod:`d2dist.engine.subnormals`).

    Args:
        args: parsed ``detectron2.engine.default_argument_parser()`` arguments.
    """
    cfg = load_config(
        args.config_file,
        args.opts,
        training=not args.eval_only,
        config_functions=getattr(args, "config_function", None) or (),
        coco_datasets=getattr(args, "coco_dataset", None) or (),
        image_folders=getattr(args, "image_folder", None) or (),
    )
    if args.eval_only and not cfg.MODEL.WEIGHTS and not args.resume:
        raise ConfigError(
            "--eval-only needs trained weights: pass MODEL.WEIGHTS /path/to/model_final.pth, or "
            "--resume to evaluate the last checkpoint in OUTPUT_DIR."
        )
    check_batch_split(cfg, comm.get_world_size())
    cfg.freeze()
    prepare_run(cfg, args, output_dir=cfg.OUTPUT_DIR, device=cfg.MODEL.DEVICE)
    return cfg


def argument_parser():
    """Detectron2's ``default_argument_parser`` plus d2dist's options (``--eval-teacher``)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--config-function",
        action="append",
        default=[],
        metavar="MODULE.FUNCTION",
        help="a Detectron2 project's config function to apply before the config file is merged "
        "(e.g. detectron2.projects.point_rend.add_pointrend_config), for configs with that "
        "project's keys; the teacher's config starts from it too. Repeat for several",
    )
    parser.add_argument(
        "--coco-dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a dataset in COCO format under NAME (annotations JSON, image directory), "
        "to name it in DATASETS.TRAIN / DATASETS.TEST. Repeat for several",
    )
    add_run_arguments(parser)
    parser.add_argument(
        "--eval-teacher",
        action="store_true",
        help="before distilling, evaluate the teacher on DATASETS.TEST (results in "
        "OUTPUT_DIR/teacher_eval/), so that a teacher that did not load is caught at once: a "
        "teacher scoring NaN or 0 stops the run",
    )
    parser.add_argument(
        "--ignore-teacher-check",
        action="store_true",
        help="with --eval-teacher: train even if the teacher scores NaN or 0",
    )
    return parser


def evaluate(cfg: CfgNode, resume: bool) -> dict:
    """``--eval-only``: evaluate ``MODEL.WEIGHTS`` (or, with ``resume``, OUTPUT_DIR's last
    checkpoint). For a Distiller config only the student is built and loaded (from a Distiller
    checkpoint's student entries, or a plain student checkpoint): no teacher is needed. With
    ``TEST.AUG.ENABLED`` the results of test-time augmentation follow (``<dataset>_TTA``)."""
    eval_cfg = for_evaluation(cfg)
    if cfg.TEST.AUG.ENABLED:
        check_test_augmentation(eval_cfg, Trainer)
    model = Trainer.build_model(eval_cfg)
    checkpointer = EvalCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    resume_or_load(checkpointer, cfg.MODEL.WEIGHTS, resume=resume)
    results = Trainer.test(eval_cfg, model)
    if cfg.TEST.AUG.ENABLED:
        results.update(Trainer.test_with_TTA(eval_cfg, model))
    return results


def _test_with_tta(trainer) -> dict:
    results = trainer.test_with_TTA(trainer.cfg, trainer.model)
    trainer._last_eval_results = {**(trainer._last_eval_results or {}), **results}
    return results


def train_or_eval(cfg: CfgNode, args):
    """Train (``--resume`` continues from OUTPUT_DIR) or, with ``--eval-only``, evaluate; then
    release the output directory :func:`setup` took.

    With ``--eval-teacher`` a Distiller's teacher is evaluated first
    (:meth:`~d2dist.engine.DistillationMixin.evaluate_teacher`). Returns the evaluation results
    of the run (a dict of metrics per dataset).
    """
    try:
        eval_teacher = getattr(args, "eval_teacher", False)  # every rank: evaluation is sharded
        if eval_teacher:
            check_distiller_for_eval_teacher(cfg)
        check = not getattr(args, "ignore_teacher_check", False)
        if args.eval_only:
            if eval_teacher:
                Trainer.evaluate_teacher(cfg)
            return evaluate(cfg, args.resume)
        trainer = Trainer(cfg)
        # loads the teacher of a Distiller too
        trainer.resume_or_load(args.resume, getattr(args, "allow_config_change", False) or None)
        if cfg.TEST.AUG.ENABLED:  # after the last iteration, after the plain evaluation
            trainer.register_hooks([hooks.EvalHook(0, lambda: _test_with_tta(trainer))])
        if eval_teacher:
            teacher = trainer.distiller.teacher_wrapper
            results = trainer.evaluate_teacher(cfg, teacher)
            if check:
                check_teacher_results(results, teacher.weights)
        trainer.train()
        # DefaultTrainer.train() returns them only when TEST.EXPECTED_RESULTS is set.
        return trainer._last_eval_results
    finally:
        release_run(args)  # the output directory's lock, taken by setup()

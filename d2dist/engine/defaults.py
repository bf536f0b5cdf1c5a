"""The pieces of ``tools/train_net.py``: config set-up with validation, the run, the launcher."""

import errno
import json
import logging
import math
import os
import re
import sys
import tempfile
from typing import Callable, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser, default_setup, hooks, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import (
    KEYS_AND_TYPES,
    check_pixel_statistics,
    get_cfg,
    merge_config_file,
    merge_overrides,
)
from ..data.checks import register_coco_format
from ..errors import D2DIST_ERRORS, ConfigError, RunFault, os_error_cause
from ..modeling.teacher import FLOAT16_ON_CPU
from .export import student_config
from .record import allow_config_change
from .rundir import config_text, keeping_earlier_config, resume_target
from .runlock import lock_output_dir, release_output_dir
from .subnormals import flush_subnormals, log_subnormal_mode
from .trainer import EvalCheckpointer, Trainer, check_test_augmentation, explained_load
from .trainer import remove_partials

__all__ = [
    "add_run_arguments",
    "argument_parser",
    "evaluate",
    "evaluate_teacher",
    "launch_cli",
    "load_config",
    "plain_text_logs",
    "register_coco_datasets",
    "resolve_device",
    "setup",
    "train_or_eval",
]

logger = logging.getLogger(__name__)


# What an unknown key of the student's config may mean besides a typo.
_PROJECT_KEYS = (
    " A key of a Detectron2 project (PointRend, Panoptic-DeepLab, your own) needs that project's "
    "config function: pass --config-function MODULE.FUNCTION, e.g. --config-function "
    "detectron2.projects.point_rend.add_pointrend_config (README, 'Using d2dist in your "
    "project'). A dataset of your own in COCO format needs no key: --coco-dataset NAME "
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
    from detectron2.data import MetadataCatalog

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


def resolve_device(device: str, explicit: bool, key: str, sep: str = " ") -> str:
    """The device a run uses: the CPU when the config asks for CUDA (Detectron2's default) and
    no GPU exists, with a warning. A CUDA device given explicitly on the command line is an
    error instead: the user asked for a GPU, so it is never silently replaced.

    ``key`` and ``sep`` write the setting in messages (``MODEL.DEVICE cpu``, ``train.device=cpu``).
    """
    if not device.startswith("cuda") or torch.cuda.is_available():
        return device
    if explicit:
        raise ConfigError(
            f"{key}{sep}{device} was given on the command line, but PyTorch "
            f"{torch.__version__} sees no CUDA device (torch.cuda.is_available() is False). "
            f"Run on a machine with a GPU, or pass {key}{sep}cpu."
        )
    logger.warning(f"No CUDA device is available: running on the CPU ({key}{sep}cpu).")
    return "cpu"


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


def check_output_dir(out: str, resume: bool, training: bool) -> None:
    """``out`` must be a writable directory; a training run without ``resume`` must not find an
    earlier run's checkpoints there (Detectron2 would overwrite them), and one with ``resume``
    must find the one to continue (:func:`~d2dist.engine.rundir.resume_target`)."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out) as probe:  # room for a start: 1 MiB
            probe.write(b"\0" * (1 << 20))
            probe.flush()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunFault(
                f"OUTPUT_DIR {out!r}: {os_error_cause(e)}, so the run could write neither its "
                "config nor a checkpoint; nothing was written. Free space there, or choose an "
                "OUTPUT_DIR on another disk."
            ) from e
        raise ConfigError(
            f"OUTPUT_DIR {out!r} is not a writable directory ({os_error_cause(e)}). Pass one "
            "that is, e.g. `OUTPUT_DIR ./output/my_run` at the end of the command line "
            "(LazyConfig: train.output_dir=./output/my_run)."
        ) from e
    # Detectron2 would silently overwrite an earlier run's checkpoints, or start over when there
    # is none to resume: refuse instead (d2dist.engine.rundir).
    if training:
        resume_target(out, resume)


def load_config(
    config_file: str,
    opts: Sequence[str],
    *,
    training: bool = True,
    config_functions: Sequence[str] = (),
    coco_datasets: Sequence[Sequence[str]] = (),
) -> CfgNode:
    """The validated (not frozen) config of ``config_file`` with ``KEY VALUE`` overrides ``opts``.

    ``config_functions`` (dotted names, ``--config-function``) add a project's keys before the
    file is merged (the teacher's config starts from them too); ``coco_datasets`` are registered
    first (:func:`register_coco_datasets`). Checks the file, the keys (an unknown one with the
    closest valid key) and the value types as they are merged, then the solver, the pixel
    statistics, a teacher's autocast on the device, the datasets (the training sets too if
    ``training``) and resolves ``MODEL.DEVICE``; every problem is a :class:`ConfigError` that says
    how to fix it.
    """
    if not config_file:
        raise ConfigError("--config-file is required: the YAML config of the model to train.")
    if not os.path.isfile(config_file):
        raise ConfigError(
            f"--config-file {config_file!r} does not exist (working directory: "
            f"{os.getcwd()}). Configs that ship with d2dist are under configs/."
        )
    register_coco_datasets(coco_datasets)
    cfg = get_cfg(*config_functions)
    what, where = f"config file {config_file!r}", "command-line overrides"
    _merge(cfg, lambda path: merge_config_file(cfg, path, what, _PROJECT_KEYS), config_file, what)
    _merge(cfg, lambda pairs: merge_overrides(cfg, pairs, where, _PROJECT_KEYS), opts, where)
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


class _PlainText(logging.Filter):
    """Drops terminal colour codes from a logger's records: Detectron2's ``default_setup`` logs
    the config file's contents highlighted for a terminal, which would put escape codes into
    ``log.txt``."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*m")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "\x1b[" in message:
            record.msg, record.args = self._ANSI.sub("", message), ()
        return True


def plain_text_logs() -> None:
    """Keep terminal colour codes out of the logs (``log.txt``) of Detectron2's logger (call
    before ``default_setup``, which logs the highlighted config through it)."""
    logger = logging.getLogger("detectron2")
    if not any(isinstance(f, _PlainText) for f in logger.filters):
        logger.addFilter(_PlainText())


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
    )
    # Before any computation starts PyTorch's thread pool (each thread inherits the mode).
    flushed = flush_subnormals(cfg.MODEL.DEVICE)
    allow_config_change(getattr(args, "allow_config_change", False))
    if args.eval_only and not cfg.MODEL.WEIGHTS and not args.resume:
        raise ConfigError(
            "--eval-only needs trained weights: pass MODEL.WEIGHTS /path/to/model_final.pth, or "
            "--resume to evaluate the last checkpoint in OUTPUT_DIR."
        )
    check_batch_split(cfg, comm.get_world_size())
    check_output_dir(cfg.OUTPUT_DIR, resume=args.resume, training=not args.eval_only)
    if comm.is_main_process():  # the run owns OUTPUT_DIR until it ends (train_or_eval)
        lock_output_dir(cfg.OUTPUT_DIR)
        remove_partials(cfg.OUTPUT_DIR)  # what an interrupted save of an earlier run left
    cfg.freeze()
    plain_text_logs()
    # default_setup writes config.yaml: an earlier one is kept (d2dist.engine.rundir)
    text = config_text(cfg) if comm.is_main_process() else ""
    with keeping_earlier_config(cfg.OUTPUT_DIR, text, eval_only=args.eval_only):
        default_setup(cfg, args)
    # d2dist's own messages (teacher, resolved targets, DDP) into the console and log.txt too,
    # as Detectron2's projects do for theirs.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2dist")
    log_subnormal_mode(flushed)
    return cfg


def add_run_arguments(parser) -> None:
    """d2dist's options of every training entry point (yacs and LazyConfig)."""
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue the run even though its config (or its teacher's files) "
        "differs from what its last checkpoint was trained with (listed otherwise, and refused)",
    )


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


def _check_distiller_for_eval_teacher(cfg: CfgNode) -> None:
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        raise ConfigError(
            f"--eval-teacher evaluates a distillation run's teacher, but MODEL.META_ARCHITECTURE "
            f"is {cfg.MODEL.META_ARCHITECTURE!r}; a plain model is evaluated with --eval-only."
        )


def evaluate_teacher(cfg: CfgNode, teacher=None, trainer=None) -> dict:
    """Evaluate the teacher of a Distiller config on ``cfg.DATASETS.TEST``.

    Args:
        cfg: the Distiller config.
        teacher: its :class:`~d2dist.modeling.Teacher` when one is built already (the trainer's:
            it is not built twice); else it is built from ``cfg``. Its weights are loaded (once,
            strictly) if they are not yet.
        trainer: the trainer class whose ``test`` (and so ``build_evaluator``) scores it; default
            d2dist's :class:`Trainer` (a project's own: ``Trainer.evaluate_teacher(cfg)`` of
            :class:`DistillationMixin`).

    The teacher runs with its own input settings (format, test sizes) and is scored by the
    evaluator of each test dataset. Results are logged and written to
    ``OUTPUT_DIR/teacher_eval/results.json``.
    """
    from ..modeling.teacher import build_teacher

    _check_distiller_for_eval_teacher(cfg)
    if not cfg.DATASETS.TEST:
        raise ConfigError(
            "--eval-teacher evaluates the teacher on DATASETS.TEST, which is empty: name the test "
            "set(s), e.g. DATASETS.TEST \"('coco_2017_val',)\"."
        )
    teacher = (teacher or build_teacher(cfg)).load()
    # A yacs teacher runs with its own test settings; a LazyConfig one with the student's
    # test-time resizing, in its own channel order.
    tcfg = (teacher.cfg if teacher.cfg is not None else cfg).clone()
    tcfg.defrost()
    tcfg.INPUT.FORMAT = teacher.input_format
    tcfg.DATASETS.TEST = cfg.DATASETS.TEST
    tcfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "teacher_eval")
    tcfg.freeze()
    if comm.is_main_process():
        os.makedirs(tcfg.OUTPUT_DIR, exist_ok=True)
    logger.info("Evaluating the teacher (%s) on %s", teacher.weights, list(cfg.DATASETS.TEST))
    results = (trainer or Trainer).test(tcfg, teacher.model)
    if comm.is_main_process():  # the evaluators return the results on the main process only
        with open(os.path.join(tcfg.OUTPUT_DIR, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        logger.info("Teacher evaluation: %s", json.dumps(results))
    return results


MAIN_METRICS = ("AP", "mIoU", "PQ")


def check_teacher_results(results: dict, weights: str) -> None:
    """Stop when the teacher's evaluation says it cannot teach: a main metric (AP, mIoU, PQ) that
    is NaN ("No predictions from the model") or 0 for every task. Decided on the main process
    (which has the results) and shared with the others, so every process stops."""
    bad = None
    if comm.is_main_process():
        found = []

        def walk(node, path):
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, f"{path}/{k}" if path else str(k))
            elif path.rsplit("/", 1)[-1] in MAIN_METRICS:
                found.append((path, float(node)))

        walk(results or {}, "")
        useless = [(p, v) for p, v in found if math.isnan(v) or v == 0]
        if not found or len(useless) == len(found):
            bad = ", ".join(f"{p} = {v}" for p, v in found) or "no metric at all"
    bad = comm.all_gather(bad)[0]
    if bad:
        raise ConfigError(
            f"--eval-teacher: the teacher ({weights}) scores {bad} on DATASETS.TEST, so it cannot "
            "teach: check MODEL.DISTILL.TEACHER.WEIGHTS (trained for this dataset, its classes in "
            "the same order?) and its config. To train anyway, pass --ignore-teacher-check."
        )


def evaluate(cfg: CfgNode, resume: bool) -> dict:
    """``--eval-only``: evaluate ``MODEL.WEIGHTS`` (or, with ``resume``, OUTPUT_DIR's last
    checkpoint). For a Distiller config only the student is built and loaded (from a Distiller
    checkpoint's student entries, or a plain student checkpoint): no teacher is needed. With
    ``TEST.AUG.ENABLED`` the results of test-time augmentation follow (``<dataset>_TTA``)."""
    distilled = cfg.MODEL.META_ARCHITECTURE == "Distiller"
    eval_cfg = student_config(cfg) if distilled else cfg
    if cfg.TEST.AUG.ENABLED:
        check_test_augmentation(eval_cfg, Trainer)
    model = Trainer.build_model(eval_cfg)
    checkpointer = EvalCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    with explained_load(checkpointer, cfg.MODEL.WEIGHTS, resume):
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    results = Trainer.test(eval_cfg, model)
    if cfg.TEST.AUG.ENABLED:
        results.update(Trainer.test_with_TTA(eval_cfg, model))
    return results


def _test_with_tta(trainer) -> dict:
    results = trainer.test_with_TTA(trainer.cfg, trainer.model)
    trainer._last_eval_results = {**(trainer._last_eval_results or {}), **results}
    return results


def train_or_eval(cfg: CfgNode, args):
    """Train (``--resume`` continues from OUTPUT_DIR) or, with ``--eval-only``, evaluate.

    With ``--eval-teacher`` a Distiller's teacher is evaluated first (:func:`evaluate_teacher`).
    Returns the evaluation results of the run (a dict of metrics per dataset).
    """
    try:
        eval_teacher = getattr(args, "eval_teacher", False)  # every rank: evaluation is sharded
        if eval_teacher:
            _check_distiller_for_eval_teacher(cfg)
        check = not getattr(args, "ignore_teacher_check", False)
        if args.eval_only:
            if eval_teacher:
                evaluate_teacher(cfg)
            return evaluate(cfg, args.resume)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)  # loads the teacher of a Distiller too
        if cfg.TEST.AUG.ENABLED:  # after the last iteration, after the plain evaluation
            trainer.register_hooks([hooks.EvalHook(0, lambda: _test_with_tta(trainer))])
        if eval_teacher:
            teacher = trainer.checkpointer.model.teacher_wrapper
            results = evaluate_teacher(cfg, teacher)
            if check:
                check_teacher_results(results, teacher.weights)
        trainer.train()
        # DefaultTrainer.train() returns them only when TEST.EXPECTED_RESULTS is set.
        return trainer._last_eval_results
    finally:
        release_output_dir(cfg.OUTPUT_DIR)  # taken by setup()


def _cpu_processes(args) -> bool:
    """Whether ``--num-gpus N`` asks for N CPU processes: ``MODEL.DEVICE cpu`` (LazyConfig:
    ``train.device=cpu``) on the command line of a machine without CUDA (Detectron2's launcher
    then uses the gloo backend).
    """
    opts = list(args.opts)
    devices = [v for k, v in zip(opts[::2], opts[1::2]) if k == "MODEL.DEVICE"]
    devices += [o.split("=", 1)[1] for o in opts if o.startswith("train.device=")]  # LazyConfig
    return bool(devices) and devices[-1] == "cpu" and not torch.cuda.is_available()


def launch_cli(main: Callable, args) -> int:
    """Run ``main(args)`` through Detectron2's ``launch``; a :class:`ConfigError` exits with 2.

    ``--num-gpus N`` starts N processes, one per GPU (NCCL), or, with ``MODEL.DEVICE cpu`` on a
    machine without CUDA, N CPU processes (gloo). A :class:`ConfigError` raised in any of them
    is printed like one of a single process. Returns the process exit status.
    """
    prog = os.path.basename(sys.argv[0])
    try:
        gpus = torch.cuda.device_count()
        if args.num_gpus > 1 and args.num_gpus > gpus and not _cpu_processes(args):
            raise ConfigError(
                f"--num-gpus {args.num_gpus} asks for {args.num_gpus} GPUs per machine, but "
                f"{gpus} CUDA devices are visible. Pass --num-gpus {max(gpus, 1)} or run on a "
                "machine with more GPUs (on a machine without CUDA, --num-gpus N MODEL.DEVICE cpu "
                "runs N CPU processes with the gloo backend)."
            )
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except D2DIST_ERRORS as e:
        print(f"{prog}: error: {_last_message(str(e), type(e))}", file=sys.stderr)
        return 2
    except torch.multiprocessing.ProcessRaisedException as e:
        # A worker's exception arrives as its formatted traceback; show a ConfigError's or
        # DataError's message alone, as for one process.
        text = str(e)
        for kind in D2DIST_ERRORS:
            if f"{kind.__module__}.{kind.__name__}: " in text:
                print(f"{prog}: error: {_last_message(text, kind)}", file=sys.stderr)
                return 2
        raise
    return 0


def _last_message(text: str, kind) -> str:
    """The message of the innermost ``kind`` error in ``text`` (an exception re-raised from a
    data-loading or training worker carries the worker's traceback in its message)."""
    marker = f"{kind.__name__}: "
    if "Traceback" in text and marker in text:
        text = text[text.rindex(marker) + len(marker) :]
    return text.strip()

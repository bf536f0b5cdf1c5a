"""Training and evaluation from LazyConfig (``.py``) configs: ``tools/lazyconfig_train_net.py``.

It follows upstream Detectron2's ``tools/lazyconfig_train_net.py`` (same flags, same config
layout: ``model``, ``dataloader.{train,test,evaluator}``, ``optimizer``, ``lr_multiplier`` and
``train`` as in ``configs/common/train.py``), with d2dist's additions, for plain models and
Distillers alike:

- a Distiller's teacher weights are loaded (strictly) before training, and
  ``train.init_checkpoint`` initialises its *student* (``--resume`` restores the whole run);
- ``--eval-only`` of a Distiller builds and evaluates its student alone (``model.student``): no
  teacher is built or needed;
- DDP through :func:`d2dist.engine.create_ddp_model` (CPU processes too; unused parameters found
  when the Distiller needs it), atomic checkpoints, the output-directory guard, subnormal
  flushing on the CPU, and a :class:`ConfigError` (exit 2) for a config that cannot run.
"""

import logging
import os
from typing import Sequence

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import get_detection_dataset_dicts
from detectron2.engine import default_argument_parser, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import (
    AtomicCheckpointer,
    EvalCheckpointer,
    config_change_allowed,
    resume_or_load,
)
from ..data.checks import checked_dataset_dicts
from ..data.unlabeled import register_image_folder
from ..errors import ConfigError
from ..file_io import local_path
from .configs import for_evaluation, lazy_target
from .data_checks import check_lazy_classes, check_unlabeled_datasets, dataset_names
from .faults import CheckedMapper, preemption_hooks, stopping_on_signals
from .lazy_checks import apply_overrides, check_lazy_config
from .run import add_run_arguments, prepare_run, release_run, resolve_device
from .steps import CheckedAMPTrainer, CheckedSimpleTrainer
from .trainer import create_ddp_model

__all__ = [
    "do_test",
    "do_train",
    "lazy_argument_parser",
    "lazy_main",
    "lazy_setup",
    "load_lazy_config",
]

logger = logging.getLogger(__name__)
_REQUIRED = ("model", "train")


def lazy_argument_parser():
    """Detectron2's ``default_argument_parser`` (upstream's lazyconfig_train_net flags) plus
    d2dist's run options (``--allow-config-change``, ``--debug``)."""
    parser = default_argument_parser()
    add_run_arguments(parser)
    return parser


def load_lazy_config(path: str, opts: Sequence[str], *, training: bool = True):
    """The checked LazyConfig of ``path`` with ``key=value`` overrides ``opts``: its nodes
    (model, dataloader, optimizer, lr_multiplier, train when ``training``), typos, targets,
    arguments, value types and datasets, checked before anything is built; the device resolved.
    Every problem is a :class:`ConfigError` that says how to fix it."""
    if not path:
        raise ConfigError("--config-file is required: the LazyConfig (.py) file of the run.")
    try:
        path = local_path(path)  # d2dist://configs/...: the file (relative imports beside it)
    except FileNotFoundError as e:  # d2dist:// in an installed d2dist without its configs
        raise ConfigError(f"--config-file: {e}") from e
    if not os.path.isfile(path):
        raise ConfigError(
            f"--config-file {path!r} does not exist (working directory {os.getcwd()})"
        )
    if not path.endswith(".py"):
        raise ConfigError(
            f"--config-file {path!r} is not a LazyConfig .py file; yacs YAML configs run with "
            "tools/train_net.py."
        )
    try:
        cfg = LazyConfig.load(path)
    except Exception as e:  # a user's Python config: any exception is possible
        raise ConfigError(
            f"could not load {path!r} with overrides {list(opts)}: {type(e).__name__}: {e}"
        ) from e
    cfg = apply_overrides(cfg, list(opts), path)  # each one's key checked first
    missing = [k for k in _REQUIRED if k not in cfg]
    if training:
        missing += [k for k in ("optimizer", "lr_multiplier") if k not in cfg]
        if "dataloader" not in cfg or "train" not in cfg.get("dataloader", {}):
            missing.append("dataloader.train")
    if missing:
        raise ConfigError(
            f"{path!r} defines no {missing}: a LazyConfig run needs model, dataloader.train / "
            ".test / .evaluator, optimizer, lr_multiplier and train (as Detectron2's "
            "configs/common/train.py)."
        )
    _resolve_device(cfg, opts)
    # Typos, targets, arguments, value types, datasets: before anything is built.
    check_lazy_config(cfg, training=training)
    return cfg


def lazy_setup(args):
    """Load ``args.config_file`` with ``args.opts`` (``key=value``; :func:`load_lazy_config`) and
    prepare the run (:func:`~d2dist.engine.run.prepare_run`). Returns the config."""
    for name, folder in getattr(args, "image_folder", None) or ():  # --image-folder
        register_image_folder(name, folder)
    cfg = load_lazy_config(args.config_file, args.opts, training=not args.eval_only)
    prepare_run(cfg, args, output_dir=cfg.train.output_dir, device=cfg.train.device)
    return cfg


def _resolve_device(cfg, opts) -> None:
    """As for yacs configs (:func:`resolve_device`), for ``train.device``."""
    explicit = any(str(o).startswith("train.device=") for o in opts)
    device = str(cfg.train.get("device", "cuda"))
    cfg.train.device = resolve_device(device, explicit, "train.device", sep="=")


def do_test(cfg, model):
    """Evaluate ``model`` with ``dataloader.test`` and ``dataloader.evaluator`` (upstream's); the
    test set is checked when it is loaded (:func:`_checked_test_loader`)."""
    if "evaluator" in cfg.dataloader:
        ret = inference_on_dataset(
            model, _checked_test_loader(cfg), instantiate(cfg.dataloader.evaluator)
        )
        print_csv_format(ret)
        return ret
    return {}


def _checked_dataset(node, split: str):
    """The LazyConfig dataset node ``node`` of ``dataloader.<split>`` as one that checks its
    records when loaded: Detectron2's ``get_detection_dataset_dicts`` becomes
    :func:`d2dist.data.checked_dataset_dicts` with the same arguments; a node that checks already
    stays; None for any other loader (which d2dist cannot check)."""
    target = lazy_target(node)
    if target is checked_dataset_dicts:
        return node
    if target is not get_detection_dataset_dicts:
        return None
    args = OmegaConf.to_container(node, resolve=True)
    args.pop("_target_")
    return L(checked_dataset_dicts)(
        **args,
        training=split == "train",
        key=f"dataloader.{split}.dataset.names",
        filter_key=f"dataloader.{split}.dataset.filter_empty",
    )


def _checked_test_loader(cfg):
    """``dataloader.test`` instantiated with its dataset, Detectron2's
    ``get_detection_dataset_dicts``, replaced by :func:`d2dist.data.checked_dataset_dicts` (as a
    test set: nothing dropped; a set without annotations refused before evaluation). The config
    itself is left as it is."""
    test = cfg.dataloader.test
    original = test.get("dataset")
    checked = _checked_dataset(original, "test")
    if checked is None:
        return instantiate(test)
    test.dataset = checked
    try:
        return instantiate(test)
    finally:
        test.dataset = original


def _evaluate(cfg, resume: bool):
    """``--eval-only``: a Distiller's student alone, or the plain model."""
    model = instantiate(for_evaluation(cfg.model))
    model.to(cfg.train.device)
    checkpointer = EvalCheckpointer(model, save_dir=cfg.train.output_dir)
    weights = cfg.train.init_checkpoint
    if not weights and not resume:
        raise ConfigError(
            "--eval-only needs trained weights: pass train.init_checkpoint=/path/to/"
            "model_final.pth, or --resume to evaluate the last checkpoint in train.output_dir."
        )
    resume_or_load(checkpointer, weights, resume=resume)
    return do_test(cfg, create_ddp_model(model))


def _checked_train_loader(cfg):
    """``dataloader.train`` instantiated with its mapper inside :class:`CheckedMapper` (an unusable
    image stops the run, named) and its dataset, Detectron2's ``get_detection_dataset_dicts``,
    replaced by :func:`d2dist.data.checked_dataset_dicts` (each dataset checked when it is
    loaded); then the classes of the train and test datasets and the model are compared
    (:func:`~d2dist.engine.data_checks.check_lazy_classes`). The config itself is left as it is:
    other nodes may refer to the mapper's place, as ``dataloader.test.mapper.image_format`` does
    in Detectron2's configs."""
    train = cfg.dataloader.train
    if "mapper" not in train:  # a loader of the user's own: its errors stop the run unnamed
        logger.warning(
            "dataloader.train has no 'mapper' node: d2dist cannot wrap it to name an unusable "
            "image (a failing iteration still saves the last complete one before the run stops)."
        )
        return instantiate(train)
    names = train.dataset.get("names", []) if "dataset" in train else []
    original, original_dataset = train.mapper, train.get("dataset")
    # Resolved where it stands, then wrapped: its own interpolations keep their meaning.
    mapper = (
        OmegaConf.to_container(original, resolve=True)
        if isinstance(original, DictConfig)
        else original
    )
    train.mapper = L(CheckedMapper)(mapper=mapper, datasets=names)
    checked = _checked_dataset(original_dataset, "train")
    if checked is not None:
        train.dataset = checked
    else:
        logger.warning(
            "dataloader.train.dataset is not Detectron2's get_detection_dataset_dicts: d2dist "
            "does not check its records (d2dist.data.checked_dataset_dicts takes the same "
            "arguments and checks them)."
        )
    try:
        loader = instantiate(train)
    finally:
        train.mapper = original
        if original_dataset is not None:
            train.dataset = original_dataset
    check_lazy_classes(cfg)
    return loader


def do_train(args, cfg):
    """Train as upstream's ``do_train``, with d2dist's initialisation, DDP and checkpoints."""
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    names = dataset_names(cfg.dataloader.train.get("dataset", None))
    check_unlabeled_datasets(names, model, key="dataloader.train.dataset.names")
    train_loader = _checked_train_loader(cfg)

    ddp = dict(cfg.train.ddp)
    if getattr(model, "needs_find_unused_parameters", False):
        ddp["find_unused_parameters"] = True
    wrapped = create_ddp_model(model, **ddp)
    steps = CheckedAMPTrainer if cfg.train.amp.enabled else CheckedSimpleTrainer
    trainer = steps(wrapped, train_loader, optim)
    results = {}

    def evaluate():
        results.clear()
        results.update(do_test(cfg, wrapped) or {})
        return results

    checkpointer = AtomicCheckpointer(wrapped, cfg.train.output_dir, trainer=trainer)
    trainer.checkpointer = checkpointer  # a failed iteration first saves the last complete one
    first, preemption = preemption_hooks(checkpointer)
    trainer.register_hooks(
        [
            first,  # first: a signal stops the iteration's evaluation and checkpoints at once
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if comm.is_main_process()
                else None
            ),
            preemption,  # last: after the iteration's other hooks
        ]
    )
    resuming = args.resume and checkpointer.has_checkpoint()
    allowed = config_change_allowed(getattr(args, "allow_config_change", False) or None)
    resume_or_load(
        checkpointer,
        cfg.train.init_checkpoint,
        resume=args.resume,
        cfg=cfg,
        allow_config_change=allowed,
    )
    start_iter = trainer.iter + 1 if resuming else 0
    with stopping_on_signals(trainer, preemption):  # restores the handlers in every case
        trainer.train(start_iter, cfg.train.max_iter)
    return dict(results)  # the last evaluation's (the EvalHook runs one after the last step)


def lazy_main(args):
    """The ``main`` of ``tools/lazyconfig_train_net.py``: train, or evaluate with ``--eval-only``.

    Returns the (last) evaluation results, a dict of metrics per task, as upstream prints them.
    """
    cfg = lazy_setup(args)
    try:
        if args.eval_only:
            return _evaluate(cfg, args.resume)
        return do_train(args, cfg)
    finally:
        release_run(args)  # the output directory's lock, taken by lazy_setup()

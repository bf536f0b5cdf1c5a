"""d2dist's trainers: Detectron2's ``DefaultTrainer`` with :class:`DistillationMixin`, which
trains d2dist Distillers as well as plain models.

The mixin extends Detectron2 through its extension points: the trainer's ``build_*`` methods
(the model, the optimizer, DDP, the checkpointer, the hooks), its ``run_step`` / ``after_step``
/ ``train`` methods, and hooks. One step of ``DefaultTrainer.__init__`` is not an extension point:
it wraps the model with Detectron2's ``create_ddp_model(model, broadcast_buffers=False)``, whose
``device_ids`` PyTorch refuses for a model on the CPU (d2dist's CPU processes with gloo) and which
cannot pass ``find_unused_parameters`` (a Distiller whose terms stop or start). So every trainer
with the mixin builds ``DefaultTrainer``'s parts through :class:`DefaultTrainerParts`, whose
``__init__`` builds each of them, in ``DefaultTrainer.__init__``'s order, through the trainer's
``build_*`` methods (:meth:`DistillationMixin.build_ddp_model` and
:meth:`DistillationMixin.build_checkpointer` included). It is placed right before
``DefaultTrainer`` in the trainer's method resolution order, after any base class of a project's
own: so such a class's ``__init__`` runs as it would with ``DefaultTrainer`` alone
(``tests/engine/test_trainer.py`` also checks that ``DefaultTrainer.__init__`` still builds what
:class:`DefaultTrainerParts` builds, in the same order).
"""

import contextlib
import contextvars
import logging
import os
import weakref
from collections import OrderedDict
from typing import Optional

from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.modeling import GeneralizedRCNN, GeneralizedRCNNWithTTA
from detectron2.projects.deeplab.build_solver import (
    build_lr_scheduler as build_deeplab_lr_scheduler,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import AtomicCheckpointer, config_change_allowed, resume_or_load
from ..errors import ConfigError
from ..evaluation import build_evaluator
from ..modeling import Distiller
from .configs import data_config, student_config, student_meta_architecture
from .data_checks import check_dataset_classes, check_unlabeled_datasets
from .faults import preemption_hook_of, preemption_hooks, stopping_on_signals
from .loaders import test_loader, train_loader
from .optim import clip_full_model
from .rundir import check_output_dir
from .runlock import OutputDirLock
from .steps import reporting_d2dist_errors, saving_last_complete, stopping_without_traceback
from .teacher_eval import evaluate_teacher

__all__ = [
    "DefaultTrainerParts",
    "DistillationMixin",
    "Trainer",
    "check_test_augmentation",
    "create_ddp_model",
]

logger = logging.getLogger(__name__)
_BUILDING_TO_TRAIN = contextvars.ContextVar("d2dist_building_to_train", default=False)


def create_ddp_model(model: nn.Module, **kwargs) -> nn.Module:
    """Detectron2's ``create_ddp_model``, for CPU processes (gloo) too, and with
    ``find_unused_parameters`` set when the model says some of its parameters may go unused.

    With one process the model is returned as is. Detectron2 passes ``device_ids=[local rank]``,
    which DDP refuses for a module on the CPU; there it passes none. A model with a
    ``needs_find_unused_parameters`` attribute (the :class:`~d2dist.modeling.Distiller`: a
    weight schedule that stops, or acclimation that starts late or freezes) gets
    ``find_unused_parameters=True``: parameters unused in a step then keep ``grad=None`` on every
    rank (so the optimizer leaves them alone), where plain DDP would fail at the next step.
    """
    if comm.get_world_size() == 1:
        return model
    if all(p.device.type == "cpu" for p in model.parameters()):
        kwargs["device_ids"] = None
    kwargs.setdefault(
        "find_unused_parameters", bool(getattr(model, "needs_find_unused_parameters", False))
    )
    return d2_create_ddp_model(model, **kwargs)


class DefaultTrainerParts(DefaultTrainer):
    """The parts ``DefaultTrainer.__init__`` builds (see the module docstring for why d2dist
    builds them), each through the trainer's own ``build_*`` method, in the same order. The data
    loader is built from :func:`~d2dist.engine.configs.data_config` (a project's
    ``build_train_loader`` sees a Distiller config as its student's), and checked against the
    model (:func:`~d2dist.engine.data_checks.check_dataset_classes`) before training."""

    def __init__(self, cfg):
        super(DefaultTrainer, self).__init__()  # TrainerBase's: DefaultTrainer's is built here
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        token = _BUILDING_TO_TRAIN.set(True)
        try:
            model = self.build_model(cfg)
        finally:
            _BUILDING_TO_TRAIN.reset(token)
        optimizer = self.build_optimizer(cfg, model)
        plain = getattr(type(self).build_train_loader, "__func__", None) is getattr(
            DefaultTrainer.build_train_loader, "__func__", None
        )  # Detectron2's own loader
        check_unlabeled_datasets(cfg.DATASETS.TRAIN, model, plain_loader=plain,
                                 filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)  # fmt: skip
        data_loader = self.build_train_loader(data_config(cfg))
        check_dataset_classes(cfg, model)  # before training: datasets, student, teacher agree
        model = self.build_ddp_model(cfg, model)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())


class _DistillationTrainerType(type):
    """The type of the trainers with :class:`DistillationMixin`: puts
    :class:`DefaultTrainerParts` right before ``DefaultTrainer`` in their method resolution
    order (after every base class of a project's own)."""

    def mro(cls):
        order = super().mro()
        if DefaultTrainer in order and DefaultTrainerParts not in order:
            order.insert(order.index(DefaultTrainer), DefaultTrainerParts)
        return order


class DistillationMixin(metaclass=_DistillationTrainerType):
    """Makes a Detectron2 ``DefaultTrainer`` (or a subclass of it) train d2dist Distillers as well
    as plain models. It goes first among the bases of a project's own trainer::

        class Trainer(DistillationMixin, DefaultTrainer):  # was: class Trainer(DefaultTrainer)
            ...

    A project's own base class (``class Trainer(DistillationMixin, ProjectTrainer)``) keeps its
    ``__init__`` and its methods. What the mixin changes, for every model:

    - DDP: :meth:`build_ddp_model` wraps with d2dist's :func:`create_ddp_model` (CPU processes
      with gloo too; ``find_unused_parameters`` when the model needs it).
    - Checkpoints are written atomically (:meth:`build_checkpointer`:
      :class:`~d2dist.checkpoint.AtomicCheckpointer`); ``resume_or_load`` without ``resume``
      refuses an ``OUTPUT_DIR`` that holds an earlier run's checkpoints; a run owns its
      ``OUTPUT_DIR`` while it trains; an iteration that fails saves the last complete one first;
      SIGTERM / SIGINT stop the run with a checkpoint; d2dist's log messages go to the console
      and ``OUTPUT_DIR/log.txt``.

    For a Distiller only (plain models load as in Detectron2):

    - :meth:`resume_or_load` loads the teacher's weights (strictly, from its own source) and
      initialises the *student* from ``MODEL.WEIGHTS`` (an ImageNet backbone, a plain student
      checkpoint, a Distiller checkpoint: its ``student.`` entries); ``--resume`` restores the
      whole run (student, adapters, optimizer, scheduler, iteration) from ``OUTPUT_DIR``.
    """

    def __init__(self, cfg):
        if not isinstance(self, DefaultTrainer):
            raise TypeError(
                f"{type(self).__name__}: DistillationMixin goes before DefaultTrainer (or a "
                "subclass of it) among the bases, e.g. class Trainer(DistillationMixin, "
                "DefaultTrainer)."
            )
        if not logging.getLogger("d2dist").handlers:  # a project's own script: d2dist's messages
            setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2dist")
        if cfg.TEST.AUG.ENABLED:
            check_test_augmentation(cfg, type(self))
        super().__init__(cfg)  # every base's __init__ (DefaultTrainer's: DefaultTrainerParts)
        model = self._trainer.model
        if comm.get_world_size() > 1:
            assert isinstance(model, DistributedDataParallel), type(model)
            logger.info(
                "DistributedDataParallel over %d processes wraps %s (find_unused_parameters=%s)",
                comm.get_world_size(),
                type(model.module).__name__,
                model.find_unused_parameters,
            )

    @property
    def distiller(self) -> Optional[Distiller]:
        """The Distiller this trainer trains (without DDP), None for a plain model."""
        model = self.checkpointer.model  # the checkpointer's: unwrapped from DDP
        return model if isinstance(model, Distiller) else None

    @classmethod
    def build_ddp_model(cls, cfg, model: nn.Module) -> nn.Module:
        """The model wrapped for a multi-process run: :func:`create_ddp_model` (the model itself
        with one process)."""
        return create_ddp_model(model, broadcast_buffers=False)

    def build_checkpointer(self, cfg, model: nn.Module) -> AtomicCheckpointer:
        """The run's checkpointer: :class:`~d2dist.checkpoint.AtomicCheckpointer` in
        ``OUTPUT_DIR`` (Detectron2's ``DetectionCheckpointer``, atomic and recording the run)."""
        return AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))

    @classmethod
    def build_optimizer(cls, cfg, model):
        """The optimizer of the trainer's other bases, plus ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE
        "full_model"``: the norm of all gradients together clipped at ``CLIP_VALUE`` (what
        mmdetection's ``grad_clip`` does, and the MGD, FGD and CrossKD FCOS recipes use), besides
        Detectron2's per-parameter "value" and "norm"."""
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
            return super().build_optimizer(cfg, model)
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False  # Detectron2 knows "value" and "norm" only
        return clip_full_model(super().build_optimizer(cfg, model), clip.CLIP_VALUE, clip.NORM_TYPE)

    @classmethod
    def build_model(cls, cfg):
        """The model of ``cfg``, built by the trainer's other bases. For a Distiller config, the
        Distiller when the trainer builds it to train; called from outside (as upstream
        ``train_net.py``'s ``--eval-only`` does: ``Trainer.build_model(cfg)``, a checkpointer,
        ``Trainer.test``), its student alone: what evaluation and prediction run. No teacher is
        built and none of its files is needed; a Distiller checkpoint or a plain / exported
        student checkpoint loads into it with any checkpointer (see
        :class:`~d2dist.modeling.Distiller`)."""
        if cfg.MODEL.META_ARCHITECTURE == "Distiller" and not _BUILDING_TO_TRAIN.get():
            logger.info(
                "Building the student of the Distiller config for evaluation (the teacher and the "
                "distillation terms are used in training only)"
            )
            return super().build_model(student_config(cfg))
        return super().build_model(cfg)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's ``test``, with the project's ``build_test_loader`` and ``build_evaluator``
        given :func:`data_config` of ``cfg`` (a Distiller config as its student's)."""
        return super().test(data_config(cfg), model, evaluators)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """``TEST.AUG``: evaluate with Detectron2's test-time augmentation
        (``GeneralizedRCNNWithTTA``) of the model, or of a Distiller's student; results under
        ``<dataset>_TTA`` keys, as upstream ``train_net.py`` reports them."""
        student = _evaluated_model(model)
        check_test_augmentation(cfg, cls, student)
        logger.info("Running inference with test-time augmentation ...")
        data = data_config(cfg)
        tta = GeneralizedRCNNWithTTA(data, student)
        folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [cls.build_evaluator(data, name, folder) for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, tta, evaluators)
        return OrderedDict((f"{k}_TTA", v) for k, v in results.items())

    @classmethod
    def evaluate_teacher(cls, cfg, teacher=None) -> dict:
        """``--eval-teacher``: evaluate the teacher of the Distiller config ``cfg`` on
        ``cfg.DATASETS.TEST`` with this trainer's ``test`` (its own ``build_evaluator``), before
        training; ``teacher`` is the one a trainer built already (``trainer.distiller
        .teacher_wrapper``), else one is built. See
        :func:`d2dist.engine.teacher_eval.evaluate_teacher`."""
        return evaluate_teacher(cfg, cls, teacher)

    def build_hooks(self):
        """The trainer's hooks, between the two of a preemptible run (:mod:`.faults`): first,
        :class:`~d2dist.engine.faults.InterruptibleHooks` (a signal then stops evaluations and
        checkpoints at once), last, :class:`~d2dist.engine.faults.PreemptionHook` (on SIGTERM /
        SIGINT a checkpoint of the iteration just completed, then the run ends). The hooks are
        built with :func:`data_config` as ``self.cfg`` (``TEST.PRECISE_BN`` builds a train loader
        with the project's ``build_train_loader``); it is the run's config again afterwards."""
        cfg = self.cfg
        self.cfg = data_config(cfg)
        try:
            built = super().build_hooks()
        finally:
            self.cfg = cfg
        first, last = preemption_hooks(self.checkpointer)
        return [first] + built + [last]

    def run_step(self):
        """One iteration; if it fails (a data fault, a non-finite loss, ...), the state of the
        last complete iteration is saved before the error stops the run (:mod:`.steps`)."""
        with stopping_without_traceback(), saving_last_complete(self, self.checkpointer):
            super().run_step()

    def before_train(self):
        with stopping_without_traceback():
            super().before_train()

    def after_step(self):
        with stopping_without_traceback():
            super().after_step()

    def train(self):
        """Detectron2's training loop, owning ``OUTPUT_DIR`` while it runs
        (:class:`~d2dist.engine.runlock.OutputDirLock`: a second run into it is refused), stopped
        with a checkpoint on SIGTERM / SIGINT (:func:`~d2dist.engine.faults.stopping_on_signals`);
        a d2dist error that stops it is raised as it is, without Detectron2's traceback log
        (:mod:`.steps`)."""
        owning = OutputDirLock(self.cfg.OUTPUT_DIR) if comm.is_main_process() else None
        with owning or contextlib.nullcontext(), reporting_d2dist_errors():
            with stopping_on_signals(self, preemption_hook_of(self)):
                return super().train()

    def resume_or_load(self, resume=True, allow_config_change: Optional[bool] = None):
        """Detectron2's ``resume_or_load`` through :func:`d2dist.checkpoint.resume_or_load` (a
        Distiller's teacher, its student's initialisation, a strict resume of the same run, the
        LR schedule of this config); never over an earlier run's checkpoints without ``resume``.
        ``allow_config_change``: resume a run whose config changed (None: whether the
        environment sets ``D2DIST_ALLOW_CONFIG_CHANGE=1``)."""
        check_output_dir(self.cfg.OUTPUT_DIR, resume=resume, training=True)  # never overwrite
        resuming = resume and self.checkpointer.has_checkpoint()
        resume_or_load(
            self.checkpointer,
            self.cfg.MODEL.WEIGHTS,
            resume=resume,
            cfg=self.cfg,
            allow_config_change=config_change_allowed(allow_config_change),
        )
        # Detectron2's: the trainer's iteration was restored with the checkpoint
        self.start_iter = self.iter + 1 if resuming else 0


def _evaluated_model(model: nn.Module) -> nn.Module:
    """What evaluation runs: ``model`` without DDP, and a Distiller's student."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return model.student if isinstance(model, Distiller) else model


def check_test_augmentation(cfg, trainer: type, model: Optional[nn.Module] = None) -> None:
    """``TEST.AUG.ENABLED`` needs a GeneralizedRCNN (Detectron2's test-time augmentation supports
    nothing else): checked when the trainer is built, so that a run is not refused after it."""
    student = student_meta_architecture(cfg)
    name = type(model).__name__ if model is not None else student
    if (model is not None and not isinstance(model, GeneralizedRCNN)) or (
        model is None and student != "GeneralizedRCNN"
    ):
        raise ConfigError(
            f"TEST.AUG.ENABLED is True, but Detectron2's test-time augmentation "
            f"(GeneralizedRCNNWithTTA) supports GeneralizedRCNN models only and the model "
            f"evaluated is a {name}. Set TEST.AUG.ENABLED False."
        )
    if cfg.MODEL.KEYPOINT_ON or cfg.MODEL.LOAD_PROPOSALS:
        raise ConfigError(
            "TEST.AUG.ENABLED is True, but Detectron2's test-time augmentation supports neither "
            "MODEL.KEYPOINT_ON nor MODEL.LOAD_PROPOSALS. Set TEST.AUG.ENABLED False."
        )
    if (
        model is None
        and cfg.MODEL.META_ARCHITECTURE == "Distiller"
        and trainer.test_with_TTA.__func__ is not DistillationMixin.test_with_TTA.__func__
    ):
        raise ConfigError(
            f"TEST.AUG.ENABLED is True for a Distiller, and {trainer.__name__} has a "
            "test_with_TTA of its own, which the end of training would call with the Distiller "
            "(Detectron2's GeneralizedRCNNWithTTA takes a GeneralizedRCNN only). Remove it: "
            "DistillationMixin.test_with_TTA evaluates the student with test-time augmentation. "
            "Or train with TEST.AUG.ENABLED False and evaluate with --eval-only TEST.AUG.ENABLED "
            "True afterwards (Trainer.build_model then builds the student, which your "
            "test_with_TTA augments)."
        )


class Trainer(DistillationMixin, DefaultTrainer):
    """d2dist's trainer: Detectron2's ``DefaultTrainer`` with :class:`DistillationMixin`, for
    every registered meta-architecture, plain or Distiller.

    Adds only what ``DefaultTrainer`` leaves abstract: :meth:`build_evaluator` picks the official
    evaluator of each test dataset (COCO, semantic segmentation, Cityscapes, ...) from its
    metadata, so that teachers, baselines and distilled students are scored by the same code.
    The LR schedulers are Detectron2's plus the DeepLab project's ``WarmupPolyLR`` (its
    segmentation recipes' schedule). The loaders check their datasets (:mod:`.loaders`).
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_deeplab_lr_scheduler(cfg, optimizer)  # Detectron2's own for other names

    @classmethod
    def build_train_loader(cls, cfg):
        return train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return test_loader(cfg, dataset_name)

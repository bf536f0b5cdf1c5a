"""d2dist's trainers: Detectron2's DefaultTrainer, plus student-only initialisation for distillation."""

import contextlib
import contextvars
import logging
import os
import weakref
from collections import OrderedDict
from typing import List, Optional

import detectron2.data.transforms as T
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.engine import create_ddp_model as d2_create_ddp_model
from detectron2.modeling import GeneralizedRCNN, GeneralizedRCNNWithTTA
from detectron2.projects.deeplab.build_solver import (
    build_lr_scheduler as build_deeplab_lr_scheduler,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from fvcore.common.checkpoint import _strip_prefix_if_present
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import (
    UNREADABLE_CHECKPOINT,
    ConfigError,
    RunFault,
    incompatible_keys,
    is_write_failure,
    os_error_cause,
)
from ..evaluation import build_evaluator
from ..modeling.meta_arch.distiller import split_distiller_state
from .data_checks import check_dataset_classes, test_dataset_dicts, train_dataset_dicts
from .data_checks import weighted_sampler
from .export import student_config, student_meta_architecture
from .faults import (
    CheckedMapper,
    preemption_hook_of,
    preemption_hooks,
    saving_last_complete,
    stopping_on_signals,
    without_tracebacks_of_d2dist_errors,
)
from .record import changes_allowed, check_resume, run_record, saved_record
from .schedule import schedule_from_config, schedulers_of

__all__ = [
    "AtomicCheckpointer",
    "check_test_augmentation",
    "EvalCheckpointer",
    "create_ddp_model",
    "data_config",
    "DistillationMixin",
    "explained_load",
    "initialise_student",
    "resume_or_load",
    "Trainer",
    "DistillTrainer",
    "StudentCheckpointer",
    "trainer_class",
]

_PARTIAL = ".partial"
logger = logging.getLogger(__name__)


def remove_partials(save_dir: str) -> List[str]:
    """Delete what interrupted saves left in ``save_dir`` (``*.partial.pth``, the tag's
    ``last_checkpoint.partial``); returns their names. Only for a directory this run owns."""
    removed = []
    if save_dir and os.path.isdir(save_dir):
        for name in os.listdir(save_dir):
            if name.endswith(_PARTIAL + ".pth") or name == "last_checkpoint" + _PARTIAL:
                try:
                    os.remove(os.path.join(save_dir, name))
                    removed.append(name)
                except FileNotFoundError:
                    pass
    if removed:
        logging.getLogger(__name__).info(
            f"Removed what interrupted saves left in {save_dir}: {removed}"
        )
    return removed


class StudentCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, for a plain model (e.g. a Distiller's student) that may be given
    a Distiller checkpoint: then its student's entries are loaded (either layout, see
    :class:`~d2dist.modeling.Distiller`) and the Distiller's own modules (the terms' adapters)
    left out, with a log line instead of a warning about each of them. Plain student checkpoints
    and Detectron2 / Caffe2 model-zoo files (with Detectron2's name matching) load as in
    Detectron2. A Distiller model loads any of these itself (its ``load_state_dict``)."""

    def _load_model(self, checkpoint):
        from ..modeling import Distiller

        state = checkpoint["model"]
        _strip_prefix_if_present(state, "module.")  # saved from a DDP-wrapped model
        if not isinstance(self.model, Distiller) and not hasattr(self.model, "terms"):
            student, own = split_distiller_state(state)
            if own:
                logger.info(f"Loading the student of a Distiller checkpoint (leaving out {own})")
                checkpoint["model"] = student
        return super()._load_model(checkpoint)


class AtomicCheckpointer(StudentCheckpointer):
    """Detectron2's checkpointer, but a checkpoint appears only once it is completely written,
    records what it was trained with, and loads a run's own checkpoint strictly. A plain model
    given a Distiller checkpoint loads its student (:class:`StudentCheckpointer`).

    - Each checkpoint is written as ``<name>.partial.pth`` and renamed to ``<name>.pth`` (an
      atomic rename on one file system) before ``last_checkpoint`` is updated, itself by an atomic
      rename; a run killed while saving leaves at most a ``.partial`` file, which the next save
      removes, and resumes from the previous complete checkpoint.
    - ``record`` (set by the trainer: :func:`d2dist.engine.record.run_record`) is saved in every
      checkpoint as its ``d2dist`` entry (:func:`d2dist.engine.record.saved_record` reads it).
    - With ``strict`` (set when resuming), a checkpoint that does not fit the model (missing,
      unexpected or mis-shaped keys) is a :class:`ConfigError` listing them, never a warning.
    """

    record: Optional[dict] = None
    strict: bool = False

    def save(self, name: str, **kwargs) -> None:
        """Detectron2's save, atomic; a failure to write (a full disk, a read-only directory) is
        a :class:`~d2dist.errors.RunFault` naming the file, the cause and the last complete
        checkpoint, which stays as it was."""
        final = name
        if self.save_dir and os.path.isdir(self.save_dir) and self.save_to_disk:
            remove_partials(self.save_dir)
            name += _PARTIAL
        if self.record is not None:
            kwargs["d2dist"] = self.record
        try:
            super().save(name, **kwargs)
        except Exception as e:
            if not (self.save_to_disk and is_write_failure(e)):
                raise
            cause = os_error_cause(e, os.path.join(self.save_dir, name + ".pth"))
            remove_partials(self.save_dir)
            last = self.get_checkpoint_file() if self.has_checkpoint() else ""
            kept = (
                f"the last complete checkpoint, {last}, is as it was (last_checkpoint names it)"
                if last
                else "no checkpoint of this run was complete yet"
            )
            raise RunFault(
                f"could not write the checkpoint {os.path.join(self.save_dir, final + '.pth')}: "
                f"{cause}. The run stopped; {kept}. Free space (or fix the "
                "directory) and continue with --resume."
            ) from e

    def _log_incompatible_keys(self, incompatible) -> None:
        if not self.strict:
            return super()._log_incompatible_keys(incompatible)
        problems = incompatible_keys(incompatible)
        if problems:
            raise ConfigError(
                f"the checkpoint being resumed does not fit the model of this config "
                f"({'; '.join(problems)}). Resume with the run's own config (its OUTPUT_DIR's "
                "config.yaml), or start a new run in another OUTPUT_DIR."
            )

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not os.path.isdir(self.save_dir):  # a remote directory: Detectron2's own way
            return super().tag_last_checkpoint(last_filename_basename)
        partial = _PARTIAL + ".pth"
        if last_filename_basename.endswith(partial):
            final = last_filename_basename[: -len(partial)] + ".pth"
            os.replace(
                os.path.join(self.save_dir, last_filename_basename),
                os.path.join(self.save_dir, final),
            )
            last_filename_basename = final
        tag = os.path.join(self.save_dir, "last_checkpoint")
        with open(tag + _PARTIAL, "w") as f:
            f.write(last_filename_basename)
        os.replace(tag + _PARTIAL, tag)


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


class DistillationMixin:
    """Makes a Detectron2 ``DefaultTrainer`` (or a subclass of it) train d2dist Distillers as well
    as plain models. It goes first among the bases of a project's own trainer::

        class Trainer(DistillationMixin, DefaultTrainer):  # was: class Trainer(DefaultTrainer)
            ...

    What it changes, for every model:

    - DDP: the model is wrapped by d2dist's :func:`create_ddp_model` (CPU processes with gloo
      too; ``find_unused_parameters`` when the model needs it). ``DefaultTrainer.__init__`` wraps
      with a module-level function and has no method to override, so this ``__init__`` builds
      the same parts in the same order through the trainer's own ``build_*`` methods (Detectron2
      itself is not changed).
    - Checkpoints are written atomically (:class:`AtomicCheckpointer`); ``resume_or_load``
      without ``resume`` refuses an ``OUTPUT_DIR`` that holds an earlier run's checkpoints;
      d2dist's log messages go to the console and ``OUTPUT_DIR/log.txt``.

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
        super(DefaultTrainer, self).__init__()  # TrainerBase: DefaultTrainer's own parent
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        if not logging.getLogger("d2dist").handlers:  # a project's own script: d2dist's messages
            setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2dist")
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.TEST.AUG.ENABLED:
            check_test_augmentation(cfg, type(self))
        token = _BUILDING_TO_TRAIN.set(True)
        try:
            model = self.build_model(cfg)
        finally:
            _BUILDING_TO_TRAIN.reset(token)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(data_config(cfg))
        check_dataset_classes(cfg, model)  # before training: datasets, student, teacher agree
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())
        if comm.get_world_size() > 1:
            assert isinstance(model, DistributedDataParallel), type(model)
            logger.info(
                "DistributedDataParallel over %d processes wraps %s (find_unused_parameters=%s)",
                comm.get_world_size(),
                type(model.module).__name__,
                model.find_unused_parameters,
            )

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
        """``--eval-teacher`` in a project's own script: evaluate the teacher of the Distiller
        config ``cfg`` on ``cfg.DATASETS.TEST`` with this trainer's ``test`` (its own
        ``build_evaluator``), before training. See :func:`d2dist.engine.evaluate_teacher`."""
        from .defaults import evaluate_teacher

        return evaluate_teacher(cfg, teacher, trainer=cls)

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
        last complete iteration is saved before the error stops the run."""
        with saving_last_complete(self, self.checkpointer):
            super().run_step()

    def train(self):
        """Detectron2's training loop, owning ``OUTPUT_DIR`` while it runs (:mod:`.runlock`: a
        second run into it is refused; d2dist's tools take the lock already at setup), stopped
        with a checkpoint on SIGTERM / SIGINT (:func:`~d2dist.engine.faults.stopping_on_signals`).
        """
        from .runlock import lock_output_dir, release_output_dir

        without_tracebacks_of_d2dist_errors()
        if comm.is_main_process():
            lock_output_dir(self.cfg.OUTPUT_DIR)
        preemption = preemption_hook_of(self)
        try:
            with stopping_on_signals(self, preemption):
                return super().train()
        finally:
            release_output_dir(self.cfg.OUTPUT_DIR)

    def resume_or_load(self, resume=True):
        """Detectron2's ``resume_or_load`` through d2dist's :func:`resume_or_load` (a Distiller's
        teacher, its student's initialisation, a strict resume of the same run, the LR schedule
        of this config); never over an earlier run's checkpoints without ``resume``."""
        from .defaults import check_output_dir

        check_output_dir(self.cfg.OUTPUT_DIR, resume=resume, training=True)  # never overwrite
        resuming = resume and self.checkpointer.has_checkpoint()
        resume_or_load(self.checkpointer, self.cfg.MODEL.WEIGHTS, resume=resume, cfg=self.cfg)
        # Detectron2's: the trainer's iteration was restored with the checkpoint
        self.start_iter = self.iter + 1 if resuming else 0


_BUILDING_TO_TRAIN = contextvars.ContextVar("d2dist_building_to_train", default=False)


def data_config(cfg):
    """``cfg`` as a project's data and evaluation code should see it: a Distiller config with
    its student's ``MODEL.META_ARCHITECTURE`` (projects choose their mapper from it, e.g.
    DeepLab's and PointRend's ``build_train_loader`` test ``"SemanticSegmentor" in
    cfg.MODEL.META_ARCHITECTURE``); every other key as it is. A plain config is returned as is."""
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        return cfg
    out = cfg.clone()
    out.defrost()
    out.MODEL.META_ARCHITECTURE = student_meta_architecture(cfg)
    out.freeze()
    return out


def _evaluated_model(model: nn.Module) -> nn.Module:
    """What evaluation runs: ``model`` without DDP, and a Distiller's student."""
    from ..modeling import Distiller

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


def resume_or_load(checkpointer, weights: str, *, resume: bool, cfg=None) -> dict:
    """``checkpointer.resume_or_load(weights, resume=resume)`` for plain models and Distillers:
    the one way d2dist's trainers start or resume a run, and a drop-in for a project's own
    training loop (upstream ``lazyconfig_train_net.py``, CenterNet2's ``train_net.py``).

    - A Distiller's teacher is loaded (strictly, from its own source, once).
    - Resuming (``resume`` and a checkpoint in the checkpointer's directory) restores the run:
      the model (a Distiller's student and terms) and the checkpointer's other checkpointables
      (optimizer, scheduler, trainer). The LR schedulers keep the settings built from this run's
      config (:func:`~d2dist.engine.schedule.schedule_from_config`), so a larger
      ``SOLVER.MAX_ITER`` extends a run with any scheduler.
    - A new run initialises a Distiller's *student* from ``weights`` (an ImageNet backbone, a
      plain student checkpoint, a Distiller checkpoint), then copies ``MODEL.DISTILL.INHERIT``
      from the teacher; a plain model loads ``weights`` (a Distiller checkpoint: its student).
    - With an :class:`AtomicCheckpointer` and ``cfg``, the checkpoints record the run
      (:mod:`.record`) and a resume must be of the same run, loaded strictly.

    A file that cannot be read or does not fit is a :class:`ConfigError` naming it. Returns what
    the checkpointer's ``resume_or_load`` returns (the checkpoint's other entries, e.g.
    ``iteration``; ``{}`` for a new run).
    """
    from ..modeling import Distiller

    model = checkpointer.model  # unwrapped from DDP by the checkpointer
    distiller = isinstance(model, Distiller)
    atomic = isinstance(checkpointer, AtomicCheckpointer)
    with explained_load(checkpointer, weights, resume) as resuming:
        if distiller:
            model.load_teacher()
        if atomic and cfg is not None:
            checkpointer.record = run_record(cfg, model.teacher_wrapper if distiller else None)
        if resuming:  # only the same run, and its own checkpoint strictly
            last = checkpointer.get_checkpoint_file()
            if atomic and checkpointer.record is not None:
                check_resume(saved_record(last), checkpointer.record, last)
                checkpointer.strict = not changes_allowed()  # else: logged
            schedulers = schedulers_of(checkpointer.checkpointables.values())
            try:
                with schedule_from_config(schedulers, _max_iter(cfg)):
                    return checkpointer.resume_or_load(weights, resume=True)
            finally:
                if atomic:
                    checkpointer.strict = False
        if distiller:
            key = "MODEL.WEIGHTS" if cfg is None or "SOLVER" in cfg else "train.init_checkpoint"
            initialise_student(model, weights, key)
            return {}
        return checkpointer.resume_or_load(weights, resume=False)


def _max_iter(cfg) -> Optional[int]:
    if cfg is None:
        return None
    if "SOLVER" in cfg:
        return cfg.SOLVER.MAX_ITER
    return cfg.train.max_iter if "train" in cfg else None


def initialise_student(distiller: nn.Module, weights: str, key: str) -> None:
    """A new run's start (not a resume): ``weights`` (the setting ``key``; an ImageNet backbone,
    a plain student checkpoint or a Distiller checkpoint) into the Distiller's student only,
    then the parameters the Distiller inherits from its (loaded) teacher
    (``MODEL.DISTILL.INHERIT``)."""
    if weights:
        StudentCheckpointer(distiller.student).load(weights)
    else:
        logger.info(f"{key} is empty: the student starts from its random init.")
    distiller.inherit_from_teacher()


class Trainer(DistillationMixin, DefaultTrainer):
    """d2dist's trainer: Detectron2's ``DefaultTrainer`` with :class:`DistillationMixin`, for
    every registered meta-architecture, plain or Distiller.

    Adds only what ``DefaultTrainer`` leaves abstract: :meth:`build_evaluator` picks the official
    evaluator of each test dataset (COCO, semantic segmentation, Cityscapes, ...) from its
    metadata, so teachers, baselines and distilled students are scored by the same code. The LR
    schedulers are Detectron2's plus the DeepLab project's ``WarmupPolyLR`` (its segmentation
    recipes' schedule). Empty training sets are a :class:`ConfigError` naming the key.
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_deeplab_lr_scheduler(cfg, optimizer)  # Detectron2's own for other names

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's loader; for semantic segmentation with ``INPUT.CROP``, with the DeepLab
        project's augmentations (:func:`sem_seg_train_augmentations`) as its train_net uses.
        ``DATASETS.TRAIN`` is loaded once and checked before training
        (:mod:`d2dist.data.checks`: faults named, boxes outside the images dropped and
        counted)."""
        if cfg.INPUT.CROP.ENABLED and student_meta_architecture(cfg) == "SemanticSegmentor":
            augmentations = sem_seg_train_augmentations(cfg)
            mapper = DatasetMapper(cfg, is_train=True, augmentations=augmentations)
        else:
            mapper = DatasetMapper(cfg, is_train=True)
        # an image that cannot be used stops the run, named (d2dist.engine.faults)
        mapper = CheckedMapper(mapper, cfg.DATASETS.TRAIN)
        sampler = None
        if cfg.DATALOADER.SAMPLER_TRAIN in ("WeightedTrainingSampler",
                                            "WeightedCategoryTrainingSampler"):  # fmt: skip
            per_dataset = train_dataset_dicts(cfg, per_dataset=True)
            dicts = [d for _, records in per_dataset for d in records]
            sampler = weighted_sampler(cfg, per_dataset)
        else:
            dicts = train_dataset_dicts(cfg)
        return build_detection_train_loader(cfg, mapper=mapper, dataset=dicts, sampler=sampler)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's test loader of ``dataset_name``, whose records are checked before
        evaluation (:mod:`d2dist.data.checks`; a test set without annotations cannot be scored)
        and whose classes the model's heads must predict."""
        dicts = test_dataset_dicts(cfg, dataset_name)
        mapper = DatasetMapper(cfg, is_train=False)
        return build_detection_test_loader(
            dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS
        )


def clip_full_model(optimizer, max_norm: float, norm_type: float = 2.0):
    """``optimizer``, its ``step`` first clipping the norm of all its parameters' gradients
    together at ``max_norm`` (the way Detectron2 adds its own gradient clipping: a subclass of
    the optimizer's class)."""
    if not max_norm > 0:
        raise ConfigError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE={max_norm}: the largest gradient norm must be > 0"
        )
    base = type(optimizer)

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
        return base.step(self, closure)

    optimizer.__class__ = type(
        base.__name__ + "WithFullModelGradientClipping", (base,), {"step": step}
    )
    return optimizer


def sem_seg_train_augmentations(cfg):
    """The training augmentations of Detectron2's DeepLab project (its train_net's
    ``build_sem_seg_train_aug``): resize the shortest edge (``INPUT.MIN_SIZE_TRAIN``, multi-scale),
    *then* crop to ``INPUT.CROP.SIZE`` (avoiding crops of mostly one category), then flip. So every
    training image has the crop's size, which a DeepLab head's fixed ASPP pooling kernel needs
    (Detectron2's default mapper crops before resizing, which gives images of other sizes)."""
    augs = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        ),
        T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE,
            cfg.INPUT.CROP.SIZE,
            cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        ),
        T.RandomFlip(),
    ]
    return augs


@contextlib.contextmanager
def explained_load(checkpointer: DetectionCheckpointer, weights: str, resume: bool):
    """Around a ``resume_or_load``: yields whether it resumes (``resume`` and a checkpoint in
    the save directory), and turns a failure to load the checkpoint it loads (that last one, or
    ``weights``) into a :class:`ConfigError` naming the file: one that cannot be read (missing,
    truncated, not a checkpoint), or whose state does not fit the model and optimizer."""
    resuming = resume and checkpointer.has_checkpoint()
    try:
        yield resuming
    except ConfigError:
        raise
    except (ValueError, KeyError) as e:  # the file read; its state does not fit (optimizer...)
        what = "the last checkpoint of OUTPUT_DIR" if resuming else "MODEL.WEIGHTS"
        path = checkpointer.get_checkpoint_file() if resuming else weights
        raise ConfigError(
            f"{what} ({path!r}) was read, but its state does not fit the model and optimizer "
            f"built from this config ({type(e).__name__}: {e}). "
            + (
                "The checkpoint is valid: resume with the run's own config (its config.yaml); "
                "a changed model needs a new run (MODEL.WEIGHTS of that checkpoint starts its "
                "student from it)."
                if resuming
                else "Give a checkpoint of this model."
            )
        ) from e
    except UNREADABLE_CHECKPOINT as e:
        what = "the last checkpoint of OUTPUT_DIR" if resuming else "MODEL.WEIGHTS"
        path = checkpointer.get_checkpoint_file() if resuming else weights
        raise ConfigError(
            f"could not load {what} ({path!r}): {type(e).__name__}: {e}. Give a checkpoint "
            "written by Detectron2 / d2dist (.pth) or a model-zoo file (.pkl)"
            + (
                "; or delete that file and the last_checkpoint entry to resume from an "
                "earlier checkpoint."
                if resuming
                else "."
            )
        ) from e


class EvalCheckpointer(StudentCheckpointer):
    """Loads the weights an evaluation or an export runs on: strictly (a checkpoint that does not
    fit the model is a :class:`ConfigError` naming the file, the model and the fix) and never
    nothing (no file to load is an error too). The model given is the one evaluated (a plain
    model, or a Distiller's student); a Distiller checkpoint gives its student's entries (that is
    how a distilled run is evaluated, with either config), a plain checkpoint its own."""

    def load(self, path: str, checkpointables=None):
        if not path:
            raise ConfigError(
                f"there are no weights to evaluate: no MODEL.WEIGHTS and no checkpoint in "
                f"{self.save_dir!r}. Pass MODEL.WEIGHTS (train.init_checkpoint) or --resume with "
                "the OUTPUT_DIR of a run that saved checkpoints."
            )
        self._path = path
        return super().load(path, checkpointables)

    def _log_incompatible_keys(self, incompatible) -> None:
        problems = incompatible_keys(incompatible)
        if problems:
            raise ConfigError(
                f"{getattr(self, '_path', 'the checkpoint')!r} does not fit the "
                f"{type(self.model).__name__} of this config ({'; '.join(problems)}), so its "
                "weights would not be the ones evaluated. Evaluate a run's checkpoint with that "
                "run's own config (its OUTPUT_DIR/config.yaml), a distilled student exported by "
                "tools/export_student.py with its student.yaml, or a plain model's with its own "
                "config."
            )


# Earlier names: Trainer now trains Distillers and plain models alike.
DistillTrainer = Trainer


def trainer_class(cfg):
    """The trainer for a config: :class:`Trainer`, whatever the meta-architecture."""
    return Trainer

"""d2dist's trainers: Detectron2's DefaultTrainer, plus student-only initialisation for distillation."""

import contextlib
import logging
import os
import weakref

import detectron2.engine.defaults as d2_defaults
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer
from detectron2.projects.deeplab.build_solver import (
    build_lr_scheduler as build_deeplab_lr_scheduler,
)
from detectron2.utils import comm
from fvcore.common.checkpoint import _strip_prefix_if_present
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError
from ..evaluation import build_evaluator

__all__ = [
    "AtomicCheckpointer",
    "create_ddp_model",
    "explained_load",
    "Trainer",
    "DistillTrainer",
    "StudentCheckpointer",
    "trainer_class",
]

_PARTIAL = ".partial"


class AtomicCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, but a checkpoint appears only once it is completely written.

    Each checkpoint is written as ``<name>.partial.pth`` and renamed to ``<name>.pth`` (an atomic
    rename on one file system) before ``last_checkpoint`` is updated, itself by an atomic rename;
    a run killed while saving leaves at most a ``.partial`` file and resumes from the previous
    complete checkpoint.
    """

    def save(self, name: str, **kwargs) -> None:
        if self.save_dir and os.path.isdir(self.save_dir):
            name += _PARTIAL
        super().save(name, **kwargs)

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


logger = logging.getLogger(__name__)

_d2_create_ddp_model = d2_defaults.create_ddp_model


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
    return _d2_create_ddp_model(model, **kwargs)


@contextlib.contextmanager
def _ddp_factory(factory):
    """Make ``DefaultTrainer.__init__`` wrap its model with ``factory`` (its DDP step is a call
    of the module-level ``create_ddp_model``; there is no method to override)."""
    saved = d2_defaults.create_ddp_model
    d2_defaults.create_ddp_model = factory
    try:
        yield
    finally:
        d2_defaults.create_ddp_model = saved


class Trainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` for any registered meta-architecture.

    Adds only what ``DefaultTrainer`` leaves abstract: :meth:`build_evaluator` picks the official
    evaluator of each test dataset (COCO, semantic segmentation, Cityscapes, ...) from its
    metadata, so teachers, baselines and distilled students are scored by the same code. The LR
    schedulers are Detectron2's plus the DeepLab project's ``WarmupPolyLR`` (its segmentation
    recipes' schedule). Checkpoints are written atomically (:class:`AtomicCheckpointer`).
    With several processes the model is wrapped by :func:`create_ddp_model` (GPUs with NCCL,
    or CPU processes with gloo).
    """

    def __init__(self, cfg):
        with _ddp_factory(create_ddp_model):
            super().__init__(cfg)
        model = self._trainer.model
        if comm.get_world_size() > 1:
            assert isinstance(model, DistributedDataParallel), type(model)
            logger.info(
                "DistributedDataParallel over %d processes wraps %s (find_unused_parameters=%s)",
                comm.get_world_size(),
                type(model.module).__name__,
                model.find_unused_parameters,
            )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self):
        # Called by DefaultTrainer.__init__ once its checkpointer exists: swap in the atomic one
        # before the checkpointing hook is built around it.
        self.checkpointer = AtomicCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        return super().build_hooks()

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_deeplab_lr_scheduler(cfg, optimizer)  # Detectron2's own for other names

    @classmethod
    def build_train_loader(cls, cfg):
        try:
            return super().build_train_loader(cfg)
        except AssertionError as e:  # Detectron2 asserts on empty datasets, with no key named
            if "is empty" not in str(e) and "No valid data" not in str(e):
                raise
            filtered = cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
            raise ConfigError(
                f"DATASETS.TRAIN={tuple(cfg.DATASETS.TRAIN)} gives no training images ({e}; "
                f"DATALOADER.FILTER_EMPTY_ANNOTATIONS={filtered} drops images without "
                "annotations). Check the dataset's files (datasets/README.md) and its "
                "registration, or name another dataset."
            ) from e

    def resume_or_load(self, resume=True):
        with explained_load(self.checkpointer, self.cfg.MODEL.WEIGHTS, resume) as resuming:
            self._resume_or_load(resume, resuming)

    def _resume_or_load(self, resume: bool, resuming: bool) -> None:
        super().resume_or_load(resume=resume)


@contextlib.contextmanager
def explained_load(checkpointer: DetectionCheckpointer, weights: str, resume: bool):
    """Around a ``resume_or_load``: yields whether it resumes (``resume`` and a checkpoint in
    the save directory), and turns a failure to read the checkpoint it loads (that last one, or
    ``weights``) into a :class:`ConfigError` naming the file."""
    resuming = resume and checkpointer.has_checkpoint()
    try:
        yield resuming
    except ConfigError:
        raise
    except Exception as e:  # unreadable / corrupt files surface as many exception types
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


class StudentCheckpointer(DetectionCheckpointer):
    """Loads initial weights into a Distiller's student.

    Accepts plain student checkpoints, Detectron2 / Caffe2 model-zoo files (with Detectron2's
    name matching) and checkpoints of a Distiller run (their ``student.`` prefix is removed).
    """

    def _load_model(self, checkpoint):
        _strip_prefix_if_present(checkpoint["model"], "student.")
        return super()._load_model(checkpoint)


class DistillTrainer(Trainer):
    """The trainer of ``MODEL.META_ARCHITECTURE: "Distiller"`` runs.

    The optimizer, DDP and checkpoints hold the student and the distillation modules; the
    teacher is outside all three (see :class:`d2dist.modeling.Distiller`). ``MODEL.WEIGHTS``
    initialises the student only, so it can never overwrite teacher weights; resuming restores
    the whole run (student, adapters, optimizer, scheduler, iteration) from ``OUTPUT_DIR``.
    """

    def _resume_or_load(self, resume: bool, resuming: bool) -> None:
        if resuming:
            return super()._resume_or_load(resume, resuming)
        distiller = self.checkpointer.model  # unwrapped from DDP by the checkpointer
        weights = self.cfg.MODEL.WEIGHTS
        if weights:
            StudentCheckpointer(distiller.student).load(weights)
        else:
            logger.info("MODEL.WEIGHTS is empty: the student starts from its random init.")
        self.start_iter = 0


def trainer_class(cfg):
    """The trainer for a config: :class:`DistillTrainer` for a Distiller, else :class:`Trainer`."""
    return DistillTrainer if cfg.MODEL.META_ARCHITECTURE == "Distiller" else Trainer

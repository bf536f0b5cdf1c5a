"""d2dist's trainers: Detectron2's DefaultTrainer, plus student-only initialisation for distillation."""

import logging

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer
from detectron2.projects.deeplab.build_solver import (
    build_lr_scheduler as build_deeplab_lr_scheduler,
)
from fvcore.common.checkpoint import _strip_prefix_if_present

from ..evaluation import build_evaluator

__all__ = ["Trainer", "DistillTrainer", "StudentCheckpointer", "trainer_class"]

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` for any registered meta-architecture.

    Adds only what ``DefaultTrainer`` leaves abstract: :meth:`build_evaluator` picks the official
    evaluator of each test dataset (COCO, semantic segmentation, Cityscapes, ...) from its
    metadata, so teachers, baselines and distilled students are scored by the same code. The LR
    schedulers are Detectron2's plus the DeepLab project's ``WarmupPolyLR`` (its segmentation
    recipes' schedule).
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_deeplab_lr_scheduler(cfg, optimizer)  # Detectron2's own for other names


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

    def resume_or_load(self, resume=True):
        if resume and self.checkpointer.has_checkpoint():
            return super().resume_or_load(resume=True)
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

"""d2dist's trainer: Detectron2's DefaultTrainer with evaluators chosen from dataset metadata."""

from detectron2.engine import DefaultTrainer

from ..evaluation import build_evaluator

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    """Detectron2's ``DefaultTrainer`` for any registered meta-architecture.

    Adds only what ``DefaultTrainer`` leaves abstract: :meth:`build_evaluator` picks the official
    evaluator of each test dataset (COCO, semantic segmentation, Cityscapes, ...) from its
    metadata, so teachers, baselines and distilled students are scored by the same code.
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

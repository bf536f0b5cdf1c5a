"""Evaluators: Detectron2's official ones, picked from the dataset's metadata."""

import os
from typing import Callable, Dict, List, Optional

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)

from ..data import ensure_generated
from ..errors import ConfigError

__all__ = ["build_evaluator", "EVALUATORS_BY_TYPE"]

# metadata `evaluator_type` -> the evaluators that score it, each built as f(dataset_name, output_dir)
_Factory = Callable[[str, str], DatasetEvaluator]
EVALUATORS_BY_TYPE: Dict[str, List[_Factory]] = {
    "coco": [lambda name, out: COCOEvaluator(name, output_dir=out)],
    "sem_seg": [lambda name, out: SemSegEvaluator(name, distributed=True, output_dir=out)],
    # Detectron2's "separated" COCO panoptic datasets: things, stuff and panoptic quality.
    "coco_panoptic_seg": [
        lambda name, out: SemSegEvaluator(name, distributed=True, output_dir=out),
        lambda name, out: COCOEvaluator(name, output_dir=out),
        lambda name, out: COCOPanopticEvaluator(name, out),
    ],
    "cityscapes_instance": [lambda name, out: CityscapesInstanceEvaluator(name)],
    "cityscapes_sem_seg": [lambda name, out: CityscapesSemSegEvaluator(name)],
    "pascal_voc": [lambda name, out: PascalVOCDetectionEvaluator(name)],
    "lvis": [lambda name, out: LVISEvaluator(name, output_dir=out)],
}


def build_evaluator(
    cfg, dataset_name: str, output_folder: Optional[str] = None
) -> DatasetEvaluator:
    """The official evaluator(s) for ``dataset_name``, chosen by its metadata ``evaluator_type``.

    Args:
        cfg: the run's config (``OUTPUT_DIR`` gives the default output folder).
        dataset_name: a name registered in Detectron2's ``DatasetCatalog``.
        output_folder: where evaluators write predictions; default ``OUTPUT_DIR/inference``.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    ensure_generated(dataset_name)  # a built-in dataset's json_file must exist before COCO reads it
    evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    if evaluator_type not in EVALUATORS_BY_TYPE:
        raise ConfigError(
            f"dataset {dataset_name!r} in DATASETS.TEST has evaluator_type={evaluator_type!r} in its "
            f"metadata; d2dist evaluates {sorted(EVALUATORS_BY_TYPE)}. Set "
            f"MetadataCatalog.get({dataset_name!r}).evaluator_type when registering it, or pass "
            "your own evaluators to Trainer.test()."
        )
    evaluators = [make(dataset_name, output_folder) for make in EVALUATORS_BY_TYPE[evaluator_type]]
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

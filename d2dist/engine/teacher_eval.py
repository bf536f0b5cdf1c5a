"""``--eval-teacher``: the teacher of a Distiller config scored before it teaches, by the
official evaluator of each test dataset, so that a teacher that did not load is caught at once."""

import json
import logging
import math
import os

from detectron2.config import CfgNode
from detectron2.utils import comm

from ..errors import ConfigError
from ..modeling import build_teacher

__all__ = [
    "MAIN_METRICS",
    "check_distiller_for_eval_teacher",
    "check_teacher_results",
    "evaluate_teacher",
]

logger = logging.getLogger(__name__)


def check_distiller_for_eval_teacher(cfg: CfgNode) -> None:
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        raise ConfigError(
            f"--eval-teacher evaluates a distillation run's teacher, but MODEL.META_ARCHITECTURE "
            f"is {cfg.MODEL.META_ARCHITECTURE!r}; a plain model is evaluated with --eval-only."
        )


def evaluate_teacher(cfg: CfgNode, trainer, teacher=None) -> dict:
    """Evaluate the teacher of a Distiller config on ``cfg.DATASETS.TEST`` (what
    ``Trainer.evaluate_teacher(cfg)`` of a :class:`~d2dist.engine.DistillationMixin` trainer does).

    Args:
        cfg: the Distiller config.
        trainer: the trainer class whose ``test`` (and so ``build_evaluator``) scores it.
        teacher: its :class:`~d2dist.modeling.Teacher` when one is built already (the trainer's,
            ``trainer.distiller.teacher_wrapper``: it is not built twice); else it is built from
            ``cfg``. Its weights are loaded (once, strictly) if they are not yet.

    The teacher runs with its own input settings (format, test sizes) and is scored by the
    evaluator of each test dataset. Results are logged and written to
    ``OUTPUT_DIR/teacher_eval/results.json``.
    """
    check_distiller_for_eval_teacher(cfg)
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
    results = trainer.test(tcfg, teacher.model)
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

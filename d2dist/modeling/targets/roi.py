"""Box-classification logits (``roi``): the student's RoI-head logits on the RoIs it sampled,
and the teacher's box head and predictor on those same boxes. What a network must have for it is
checked in :mod:`.logits`.
"""

from typing import List, Tuple

import torch
from torch import Tensor, nn

from .base import TARGET_KIND_REGISTRY, LogitPair, num_branches, repeat_batch
from .logits import _ROI_STRUCTURES, _LogitTargets, _num_stages, _roi_structure

__all__ = ["RoILogits"]


def _teacher_box_features(
    heads: nn.Module, structure: str, stage: int, n_stages: int, features: List[Tensor], boxes
) -> Tuple[Tensor, nn.Module]:
    """What the teacher's box predictor of ``stage`` receives for ``boxes`` (its classifier's
    input), and that predictor."""
    if structure == "res5":  # Res5ROIHeads: the mean of res5 on the pooled features
        return heads.res5(heads.pooler(features, boxes)).mean(dim=[2, 3]), heads.box_predictor
    head = heads.box_head[stage] if n_stages > 1 else heads.box_head
    predictor = heads.box_predictor[stage] if n_stages > 1 else heads.box_predictor
    return head(heads.box_pooler(features, boxes)), predictor


@TARGET_KIND_REGISTRY.register()
class RoILogits(_LogitTargets):
    """Box-classification logits on the RoIs the student's RoI head sampled in this step, and
    the teacher's box head and predictor on those same boxes (rows aligned one to one; Cascade
    R-CNN: every stage's RoIs, each scored by the teacher's matching stage, or its last stage
    if it has fewer): a :class:`LogitPair` (rows, K + 1).

    Either side may be a C4 R-CNN (Res5ROIHeads): its RoIs are the input of its ``pooler``, and
    a C4 teacher scores them as it does its own, with ``res5`` on the pooled features and its
    predictor on their mean (the classifier input). A student with k branches per image
    (TridentNet: RoIs of k x N images, branch-major) has its RoIs pooled from the teacher's
    features repeated k times.
    """

    name = "roi"

    def __init__(self, student, teacher, options, *, input_format):
        super().__init__(student, teacher, options, input_format=input_format)
        n = _num_stages(student)  # one box predictor per (Cascade) stage
        self._roi_paths = (
            ["roi_heads.box_predictor"]
            if n == 1
            else [f"roi_heads.box_predictor.{k}" for k in range(n)]
        )
        self._pooler_path = "roi_heads." + _ROI_STRUCTURES[_roi_structure(student)][0]

    def student_outputs(self) -> List[str]:
        return list(self._roi_paths)

    def student_inputs(self) -> List[str]:
        return [self._pooler_path]

    def teacher_forward(self, run, student_rec):
        t = self.teacher_model
        structure = _roi_structure(t)
        heads = t.roi_heads
        in_features = getattr(heads, _ROI_STRUCTURES[structure][3])
        features = [run.features[f] for f in in_features]
        n_t = _num_stages(t)
        logits, inputs, tiled = [], [], {}
        for k, (_, boxes) in enumerate(student_rec.all_inputs(self._pooler_path)):
            branches = num_branches(
                len(boxes), features[0].shape[0], "RoI logits (the student's RoIs, per image)"
            )
            if branches not in tiled:  # the teacher's features, once per student branch
                tiled[branches] = [repeat_batch(f, branches) for f in features]
            stage = min(k, n_t - 1)
            x, predictor = _teacher_box_features(heads, structure, stage, n_t, tiled[branches],
                                                 boxes)  # fmt: skip
            logits.append(predictor(x)[0])
            inputs.append((stage, x))
        return {"logits": torch.cat(logits), "inputs": inputs}

    def pair(self, batched_inputs, student_rec, teacher_out) -> LogitPair:
        s = torch.cat([student_rec.output(p)[0] for p in self._roi_paths])
        inputs = None
        if self.classifier_inputs:  # (stage, features) per student stage, in row order
            inputs = [(stage, x.float()) for stage, x in teacher_out["inputs"]]
        return LogitPair(s, teacher_out["logits"].float(), teacher_inputs=inputs)

"""Per-pixel semantic logits (``pixel``): semantic FPN, DeepLab, Panoptic FPN's semantic head.
What a network must have for it is checked in :mod:`.logits`.
"""

from typing import List

import torch
import torch.nn.functional as F
from detectron2.layers import ASPP
from detectron2.structures import ImageList
from torch import Tensor

from ...errors import ConfigError
from ..recorder import Recorder
from .base import TARGET_KIND_REGISTRY, LogitPair, num_branches, repeat_batch
from .logits import _LogitTargets

__all__ = ["PixelLogits"]


@TARGET_KIND_REGISTRY.register()
class PixelLogits(_LogitTargets):
    """Per-pixel semantic logits at the student head's own resolution (semantic FPN, DeepLab,
    Panoptic FPN's semantic head), (N, C, H, W); teacher logits of another resolution are
    resized bilinearly to the student's. The teacher's semantic head runs only up to its
    predictor.

    Options: ``labels``: the value's ``labels`` are the step's semantic ground truth, padded as
    the student pads its images and sampled (nearest) at the logits' resolution (for terms that
    drop ignored pixels); ``classifier_inputs``.

    A DeepLab teacher's ASPP pools with a kernel fixed by its own training crop (Detectron2's
    ``pool_kernel_size``); every step checks that its input has that size on the student's
    images, as at the teacher's training (a larger input would silently pool locally). Only the
    ASPPs that run for the logits are checked: those of the semantic head, up to its predictor
    (not, e.g., a Panoptic-DeepLab teacher's instance head, which does not run).

    A student with k branches per image is paired with the teacher's logits (and labels)
    repeated k times.
    """

    name = "pixel"
    LABELS = "labels"

    def __init__(self, student, teacher, options, *, input_format):
        options = tuple(options)
        self.labels = self.LABELS in options
        super().__init__(
            student, teacher, tuple(o for o in options if o != self.LABELS),
            input_format=input_format,
        )  # fmt: skip
        self.options = options
        self._pools = {  # the fixed-kernel ASPPs of the part of the teacher that runs
            f"sem_seg_head.{name}": tuple(m.pool_kernel_size)
            for name, m in teacher.model.sem_seg_head.named_modules()
            if isinstance(m, ASPP) and m.pool_kernel_size
        }

    def student_outputs(self) -> List[str]:
        return ["sem_seg_head.predictor"]

    def teacher_forward(self, run, student_rec):
        t = self.teacher_model
        inputs = ["sem_seg_head.predictor"] if self.classifier_inputs else []
        rec = Recorder(
            t,
            outputs=["sem_seg_head.predictor"],
            inputs=inputs + list(self._pools),
            stop_after="sem_seg_head.predictor",
        )
        with rec:
            rec.run(t.sem_seg_head, run.features)
        for name, kernel in self._pools.items():
            if rec.ran(name):  # one that did not run before the predictor does not matter
                self._check_pool(name, kernel, rec.input(name)[0])
        out = {"logits": rec.output("sem_seg_head.predictor")}
        if self.classifier_inputs:
            out["inputs"] = rec.input("sem_seg_head.predictor")[0]
        return out

    def _check_pool(self, name: str, kernel, x: Tensor) -> None:
        if tuple(x.shape[-2:]) == kernel:
            return
        raise ConfigError(
            f"the teacher's DeepLab head pools ({name}) with a kernel {kernel} fixed for its "
            f"training crop, but on this step's images (the student's, padded to "
            f"{tuple(x.shape[-2:])} at that layer) the kernel no longer covers the image and "
            "would pool locally. Train the student on the teacher's crops (INPUT.CROP, size "
            f"{kernel} times that layer's stride), or build the teacher with global pooling (ASPP "
            "pool_kernel_size=None; for a yacs teacher, the same weights with "
            "MODEL.DISTILL.TEACHER.OPTS ['INPUT.CROP.ENABLED', 'False'])."
        )

    def pair(self, batched_inputs, student_rec, teacher_out) -> LogitPair:
        s = student_rec.output("sem_seg_head.predictor")
        t = teacher_out["logits"].float().contiguous()
        k = num_branches(s.shape[0], t.shape[0], "pixel logits")
        if t.shape[-2:] != s.shape[-2:]:
            t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
        t = repeat_batch(t, k)
        x = teacher_out.get("inputs")
        if x is not None:
            x = x.float()
            if x.shape[-2:] != s.shape[-2:]:  # the classifier is 1x1: resize its input alike
                x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
            x = repeat_batch(x, k)
        ignore = int(getattr(self.student.sem_seg_head, "ignore_value", 255))
        labels = None
        if self.labels:
            labels = repeat_batch(self._labels(batched_inputs, s, ignore), k)
        return LogitPair(s, t, teacher_inputs=x, labels=labels, ignore_value=ignore)

    def _labels(self, batched_inputs, logits: Tensor, ignore: int) -> Tensor:
        """The semantic ground truth of the batch, padded like the student's images and sampled
        (nearest) at the logits' resolution: (N, H, W)."""
        if any("sem_seg" not in x for x in batched_inputs):
            raise ConfigError(
                "a term drops ignored pixels (e.g. MODEL.DISTILL.DIST.MASK_IGNORE), which needs "
                "the semantic ground truth ('sem_seg') of every training image; this dataset does "
                "not provide it."
            )
        backbone = self.student.backbone
        gt = ImageList.from_tensors(
            [x["sem_seg"].to(logits.device) for x in batched_inputs],
            backbone.size_divisibility,
            pad_value=ignore,
            padding_constraints=backbone.padding_constraints,
        ).tensor
        stride_h = gt.shape[-2] / logits.shape[-2]
        stride_w = gt.shape[-1] / logits.shape[-1]
        ys = (torch.arange(logits.shape[-2], device=gt.device) * stride_h).long()
        xs = (torch.arange(logits.shape[-1], device=gt.device) * stride_w).long()
        return gt[:, ys][:, :, xs]

"""Classification logits: ``roi`` (R-CNN box heads on the student's RoIs), ``dense`` (RetinaNet,
FCOS heads, per level) and ``pixel`` (semantic heads), and the checks they share.

Each takes the option ``classifier_inputs``: the teacher's value then also holds what its
classification layer received (:attr:`LogitPair.teacher_inputs`), for terms that run a trainable
copy of that layer (DIST+ head acclimation).
"""

from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.layers import ASPP
from detectron2.structures import ImageList
from torch import Tensor, nn

from ...errors import ConfigError
from ..recorder import Recorder
from .base import TARGET_KIND_REGISTRY, LogitPair, TargetKind, crop_to_common

__all__ = [
    "LOGIT_TARGETS",
    "DenseLogits",
    "PixelLogits",
    "RoILogits",
    "natural_logit_target",
    "teacher_classifiers",
]

LOGIT_TARGETS = ("roi", "dense", "pixel")
CLASSIFIER_INPUTS = "classifier_inputs"


def _has_roi_logits(model: nn.Module) -> bool:
    heads = getattr(model, "roi_heads", None)
    return heads is not None and hasattr(heads, "box_predictor") and hasattr(heads, "box_pooler")


def _has_dense_logits(model: nn.Module) -> bool:
    return hasattr(model, "head") and hasattr(model, "head_in_features")


def _has_pixel_logits(model: nn.Module) -> bool:
    head = getattr(model, "sem_seg_head", None)
    return head is not None and isinstance(getattr(head, "predictor", None), nn.Module)


_HAS_TARGET = {"roi": _has_roi_logits, "dense": _has_dense_logits, "pixel": _has_pixel_logits}


def natural_logit_target(model: nn.Module) -> str:
    """The logit target a meta-architecture is best described by (for ``TARGET: auto``)."""
    for target in LOGIT_TARGETS:  # R-CNN first: Panoptic FPN has RoI and pixel logits
        if _HAS_TARGET[target](model):
            return target
    raise ConfigError(f"{type(model).__name__} has no classification logits d2dist can distill")


def _num_stages(model: nn.Module) -> int:
    predictor = model.roi_heads.box_predictor
    return len(predictor) if isinstance(predictor, nn.ModuleList) else 1


def _num_classes(model: nn.Module, target: str) -> int:
    if target == "roi":
        predictor = model.roi_heads.box_predictor
        predictor = predictor[-1] if isinstance(predictor, nn.ModuleList) else predictor
        return predictor.cls_score.out_features
    if target == "dense":
        return model.num_classes
    return model.sem_seg_head.predictor.out_channels


def teacher_classifiers(model: nn.Module, target: str) -> List[nn.Module]:
    """The teacher's classification layer(s) for a logit target: one per Cascade stage for
    ``roi`` (``box_predictor[k].cls_score``), the dense head's ``cls_score``, the semantic head's
    ``predictor``."""
    if target == "roi":
        predictor = model.roi_heads.box_predictor
        stages = predictor if isinstance(predictor, nn.ModuleList) else [predictor]
        return [p.cls_score for p in stages]
    if target == "dense":
        return [model.head.cls_score]
    return [model.sem_seg_head.predictor]


class _LogitTargets(TargetKind):
    """Checks shared by the logit kinds: both networks have the logits, with the same classes."""

    def __init__(self, student, teacher, options, *, input_format):
        super().__init__(student, teacher, options, input_format=input_format)
        bad = [o for o in self.options if o != CLASSIFIER_INPUTS]
        if bad:
            raise ConfigError(
                f"{self.name!r} logits take the option {CLASSIFIER_INPUTS!r} only; got {bad}"
            )
        for who, model in (("student", student), ("teacher", teacher.model)):
            if not _HAS_TARGET[self.name](model):
                raise ConfigError(
                    f"the {who} ({type(model).__name__}) has no {self.name!r} logits; its "
                    f"natural target is {natural_logit_target(model)!r}. Set the term's "
                    "TARGET to one both networks have."
                )
        ns, nt = _num_classes(student, self.name), _num_classes(teacher.model, self.name)
        if ns != nt:
            raise ConfigError(
                f"{self.name!r} logits: the student predicts {ns} classes, the teacher {nt}. "
                "Logit distillation needs the same classes in the same order (NUM_CLASSES)."
            )

    @property
    def classifier_inputs(self) -> bool:
        return CLASSIFIER_INPUTS in self.options


@TARGET_KIND_REGISTRY.register()
class RoILogits(_LogitTargets):
    """Box-classification logits on the RoIs the student's RoI head sampled in this step, and
    the teacher's box head and predictor on those same boxes (rows aligned one to one; Cascade
    R-CNN: every stage's RoIs, each scored by the teacher's matching stage, or its last stage
    if it has fewer): a :class:`LogitPair` (rows, K + 1)."""

    name = "roi"

    def __init__(self, student, teacher, options, *, input_format):
        super().__init__(student, teacher, options, input_format=input_format)
        n = _num_stages(student)  # one box predictor per (Cascade) stage
        self._roi_paths = (
            ["roi_heads.box_predictor"]
            if n == 1
            else [f"roi_heads.box_predictor.{k}" for k in range(n)]
        )

    def student_outputs(self) -> List[str]:
        return list(self._roi_paths)

    def student_inputs(self) -> List[str]:
        return ["roi_heads.box_pooler"]

    def teacher_forward(self, run, student_rec):
        t = self.teacher_model
        heads = t.roi_heads
        pooler_in = [run.features[f] for f in heads.box_in_features]
        n_t = _num_stages(t)
        logits, inputs = [], []
        for k, (_, boxes) in enumerate(student_rec.all_inputs("roi_heads.box_pooler")):
            stage = min(k, n_t - 1)
            head = heads.box_head[stage] if n_t > 1 else heads.box_head
            predictor = heads.box_predictor[stage] if n_t > 1 else heads.box_predictor
            x = head(heads.box_pooler(pooler_in, boxes))
            logits.append(predictor(x)[0])
            inputs.append((stage, x))
        return {"logits": torch.cat(logits), "inputs": inputs}

    def pair(self, batched_inputs, student_rec, teacher_out) -> LogitPair:
        s = torch.cat([student_rec.output(p)[0] for p in self._roi_paths])
        inputs = None
        if self.classifier_inputs:  # (stage, features) per student stage, in row order
            inputs = [(stage, x.float()) for stage, x in teacher_out["inputs"]]
        return LogitPair(s, teacher_out["logits"].float(), teacher_inputs=inputs)


@TARGET_KIND_REGISTRY.register()
class DenseLogits(_LogitTargets):
    """Per-level classification logits of a dense head (RetinaNet, FCOS), (N, A*K, H, W):
    ``{level: LogitPair}`` by the student's head level names (levels paired by stride)."""

    name = "dense"

    def __init__(self, student, teacher, options, *, input_format):
        super().__init__(student, teacher, options, input_format=input_format)
        s, t = student, teacher.model
        s_shapes, t_shapes = s.backbone.output_shape(), t.backbone.output_shape()
        s_strides = [s_shapes[f].stride for f in s.head_in_features]
        t_strides = [t_shapes[f].stride for f in t.head_in_features]
        if s_strides != t_strides:
            raise ConfigError(
                f"dense logits: student head levels {list(s.head_in_features)} (strides "
                f"{s_strides}) and teacher head levels {list(t.head_in_features)} (strides "
                f"{t_strides}) differ; dense distillation pairs levels of equal stride."
            )
        ns, nt = s.head.cls_score.out_channels, t.head.cls_score.out_channels
        if ns != nt:
            raise ConfigError(
                f"dense logits: the student's head has {ns} = anchors x classes channels per "
                f"location, the teacher's {nt}; they need the same anchors per location "
                "(ANCHOR_GENERATOR) and classes."
            )

    def student_outputs(self) -> List[str]:
        return ["head"]

    def teacher_forward(self, run, student_rec):
        t = self.teacher_model
        feats = [run.features[f] for f in t.head_in_features]
        if not self.classifier_inputs:
            return {"logits": t.head(feats)[0]}
        with Recorder(t, inputs=["head.cls_score"]) as rec:
            logits = t.head(feats)[0]
        return {"logits": logits, "inputs": [x[0] for x in rec.all_inputs("head.cls_score")]}

    def pair(self, batched_inputs, student_rec, teacher_out) -> Dict[str, LogitPair]:
        s_levels = student_rec.output("head")[0]
        inputs = teacher_out.get("inputs") or [None] * len(s_levels)
        out = {}
        for name, s, t, x in zip(self.student.head_in_features, s_levels, teacher_out["logits"],
                                 inputs):  # fmt: skip
            s, t = crop_to_common(s, t.float().contiguous())
            # the classifier's whole input map (a 3x3 conv reads across the crop's border)
            out[name] = LogitPair(s, t, teacher_inputs=None if x is None else x.float())
        return out


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
    images, as at the teacher's training (a larger input would silently pool locally).
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
        self._pools = {
            name: tuple(m.pool_kernel_size)
            for name, m in teacher.model.named_modules()
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
        if t.shape[-2:] != s.shape[-2:]:
            t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
        x = teacher_out.get("inputs")
        if x is not None:
            x = x.float()
            if x.shape[-2:] != s.shape[-2:]:  # the classifier is 1x1: resize its input alike
                x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False)
        ignore = int(getattr(self.student.sem_seg_head, "ignore_value", 255))
        labels = self._labels(batched_inputs, s, ignore) if self.labels else None
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

"""Classification logits: ``roi`` (R-CNN box heads on the student's RoIs), ``dense`` (RetinaNet,
FCOS heads, per level) and ``pixel`` (semantic heads), and the checks they share.

Each takes the option ``classifier_inputs``: the teacher's value then also holds what its
classification layer received (:attr:`LogitPair.teacher_inputs`), for terms that run a trainable
copy of that layer (DIST+ head acclimation).

What a network must have for each (checked when the terms are built, with the reason when not):
``roi``: RoI heads that classify pooled boxes, either StandardROIHeads-like (``box_pooler``,
``box_head``, ``box_predictor``; Cascade: one per stage) or Res5ROIHeads-like C4 heads (``pooler``,
``res5``, ``box_predictor`` on the mean of the pooled res5 features); ``dense``: a dense detection
head (``head.cls_score``, ``head_in_features``); ``pixel``: a semantic head whose ``predictor`` is a
per-pixel classifier (a convolution producing class logits). Mask-classification models
(MaskFormer, Mask2Former) predict a mask and a class per query, and have no pixel logits.

A student with several branches per image (TridentNet) is paired branch by branch with the
teacher's logits of the same images (:func:`~d2dist.modeling.targets.base.num_branches`).
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ASPP
from detectron2.structures import ImageList
from torch import Tensor, nn

from ...errors import ConfigError
from ..recorder import Recorder
from .base import (
    TARGET_KIND_REGISTRY,
    LogitPair,
    TargetKind,
    crop_to_common,
    num_branches,
    repeat_batch,
)

__all__ = [
    "LOGIT_TARGETS",
    "DenseLogits",
    "PixelLogits",
    "RoILogits",
    "check_logit_target",
    "natural_logit_target",
    "teacher_classifiers",
]

LOGIT_TARGETS = ("roi", "dense", "pixel")
CLASSIFIER_INPUTS = "classifier_inputs"


FEATURE_TERMS = "MIMIC, PKD, CWD (TARGET features), MGD, DIST_FEATURE, ReviewKD"

# The two structures of RoI heads whose box classifier can be run on the student's RoIs:
# "box_head" (StandardROIHeads, CascadeROIHeads): box_pooler -> box_head -> box_predictor;
# "res5" (Res5ROIHeads, the C4 R-CNNs): pooler -> res5 -> mean over the box -> box_predictor.
_ROI_STRUCTURES = {
    "box_head": ("box_pooler", "box_head", "box_predictor", "box_in_features"),
    "res5": ("pooler", "res5", "box_predictor", "in_features"),
}


def _roi_structure(model: nn.Module) -> str:
    """The structure of the model's RoI heads: "box_head" or "res5" (``_ROI_STRUCTURES``), or ""
    for neither."""
    heads = getattr(model, "roi_heads", None)
    for structure, parts in _ROI_STRUCTURES.items():
        if heads is not None and all(hasattr(heads, p) for p in parts):
            return structure
    return ""


def _why_no_roi_logits(model: nn.Module) -> str:
    heads = getattr(model, "roi_heads", None)
    if heads is None:
        return "it has no RoI heads (roi_heads)"
    if _roi_structure(model):
        return ""
    if not hasattr(heads, "box_predictor"):
        return f"its RoI heads ({type(heads).__name__}) have no box_predictor"
    return (
        f"its RoI heads ({type(heads).__name__}) have a box_predictor, but neither a box_pooler "
        "and box_head (StandardROIHeads, CascadeROIHeads) nor a pooler and res5 (Res5ROIHeads), "
        "so d2dist cannot run the teacher's box classifier on the student's RoIs"
    )


def _why_no_dense_logits(model: nn.Module) -> str:
    head = getattr(model, "head", None)
    if head is None or not hasattr(model, "head_in_features") or not hasattr(head, "cls_score"):
        return "it has no dense detection head (head.cls_score, head_in_features: RetinaNet, FCOS)"
    return ""


def _why_no_pixel_logits(model: nn.Module) -> str:
    head = getattr(model, "sem_seg_head", None)
    if head is None:
        return "it has no semantic head (sem_seg_head)"
    predictor = getattr(head, "predictor", None)
    if predictor is None:
        return f"its semantic head ({type(head).__name__}) has no predictor"
    if not isinstance(predictor, nn.Conv2d):
        return (
            f"its semantic head ({type(head).__name__}) predicts with a "
            f"{type(predictor).__name__}, not a per-pixel classifier (a convolution producing "
            "class logits): a mask-classification head (MaskFormer, Mask2Former) predicts a mask "
            "and a class per query, not per pixel"
        )
    return ""


_WHY_NOT = {"roi": _why_no_roi_logits, "dense": _why_no_dense_logits, "pixel": _why_no_pixel_logits}


def _has_roi_logits(model: nn.Module) -> bool:
    return not _why_no_roi_logits(model)


def _has_dense_logits(model: nn.Module) -> bool:
    return not _why_no_dense_logits(model)


def _has_pixel_logits(model: nn.Module) -> bool:
    return not _why_no_pixel_logits(model)


_HAS_TARGET = {"roi": _has_roi_logits, "dense": _has_dense_logits, "pixel": _has_pixel_logits}


def _natural(model: nn.Module) -> Optional[str]:
    for target in LOGIT_TARGETS:  # R-CNN first: Panoptic FPN has RoI and pixel logits
        if _HAS_TARGET[target](model):
            return target
    return None


def natural_logit_target(model: nn.Module) -> str:
    """The logit target a meta-architecture is best described by (for ``TARGET: auto``); a
    :class:`ConfigError` that says why, for a model without classification logits."""
    target = _natural(model)
    if target is None:
        why = "; ".join(f"{t}: {_WHY_NOT[t](model)}" for t in LOGIT_TARGETS)
        raise ConfigError(
            f"{type(model).__name__} has no classification logits d2dist can distill ({why}). "
            f"Distill it with feature terms instead ({FEATURE_TERMS}) on its backbone features."
        )
    return target


def check_logit_target(model: nn.Module, target: str, who: str) -> None:
    """A :class:`ConfigError` naming why, unless ``model`` (the ``who``: student or teacher) has
    the ``target`` logits."""
    why = _WHY_NOT[target](model)
    if not why:
        return
    name = type(model).__name__
    natural = _natural(model)
    if natural is not None:
        raise ConfigError(
            f"the {who} ({name}) has no {target!r} logits; its natural target is {natural!r} "
            f"({why}). Set the term's TARGET to one both networks have."
        )
    raise ConfigError(
        f"the {who} ({name}) has no {target!r} logits ({why}), nor any other classification "
        f"logits d2dist can distill. Use feature terms for it instead ({FEATURE_TERMS})."
    )


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
    ``roi`` (``box_predictor[k].cls_score``; C4 heads: ``box_predictor.cls_score``), the dense
    head's ``cls_score``, the semantic head's ``predictor``."""
    check_logit_target(model, target, "teacher")
    if target == "roi":
        predictor = model.roi_heads.box_predictor
        stages = predictor if isinstance(predictor, nn.ModuleList) else [predictor]
        return [p.cls_score for p in stages]
    if target == "dense":
        return [model.head.cls_score]
    return [model.sem_seg_head.predictor]


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
            check_logit_target(model, self.name, who)
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


@TARGET_KIND_REGISTRY.register()
class DenseLogits(_LogitTargets):
    """Per-level classification logits of a dense head (RetinaNet, FCOS), (N, A*K, H, W):
    ``{level: LogitPair}`` by the student's head level names (levels paired by stride; a student
    with k branches per image is paired with the teacher's logits repeated k times)."""

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
            k = num_branches(s.shape[0], t.shape[0], f"dense logits {name!r}")
            s, t = crop_to_common(s, repeat_batch(t.float().contiguous(), k))
            # the classifier's whole input map (a 3x3 conv reads across the crop's border)
            x = None if x is None else repeat_batch(x.float(), k)
            out[name] = LogitPair(s, t, teacher_inputs=x)
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

"""Target extractors: aligned (student, teacher) tensor pairs for the distillation terms.

The student runs its normal training forward inside a :class:`Recorder`; the teacher runs, under
``no_grad`` and optional autocast, only the parts that the requested targets need, on the very
images the student saw (converted to the teacher's input format and normalisation):

- ``features``: backbone outputs by name (``p2``... for FPN backbones, ``res5``... for ResNets);
- ``roi``: box-classification logits of the student's RoI head on the RoIs it sampled in this
  step, and the teacher's box head and predictor run on those same boxes (rows aligned one to
  one; Cascade R-CNN: every stage's RoIs, each scored by the teacher's matching stage, or its
  last stage if it has fewer);
- ``dense``: per-level classification logits of a dense head (RetinaNet, FCOS), (N, A*K, H, W);
- ``pixel``: per-pixel semantic logits at the head's own resolution (semantic FPN, DeepLab,
  Panoptic FPN's semantic head), (N, C, H, W); teacher logits of another resolution are
  resized bilinearly to the student's.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import ImageList
from torch import Tensor, nn

from ..config import ConfigError
from .recorder import Recorder

__all__ = [
    "LOGIT_TARGETS",
    "TargetExtractor",
    "TargetRequest",
    "Targets",
    "check_feature_names",
    "natural_logit_target",
]

LOGIT_TARGETS = ("roi", "dense", "pixel")
Pair = Tuple[Tensor, Tensor]


@dataclass(frozen=True)
class TargetRequest:
    """What one distillation term needs."""

    features: Tuple[str, ...] = ()
    logits: Tuple[str, ...] = ()

    def __or__(self, other: "TargetRequest") -> "TargetRequest":
        return TargetRequest(
            tuple(dict.fromkeys(self.features + other.features)),
            tuple(dict.fromkeys(self.logits + other.logits)),
        )


@dataclass
class Targets:
    """Aligned pairs; teacher tensors are detached float32, student tensors carry gradients.

    ``batched_inputs`` is the step's input batch (for terms that need its annotations).
    """

    features: Dict[str, Pair] = field(default_factory=dict)
    roi: Optional[Pair] = None
    dense: Dict[str, Pair] = field(default_factory=dict)
    pixel: Optional[Pair] = None
    batched_inputs: Sequence[dict] = ()


def check_feature_names(names: Sequence[str], student: nn.Module, teacher: nn.Module, where: str):
    """Both backbones' ``output_shape()``, after checking that each of ``names`` is in both.

    ``where`` names the config key in the error message.
    """
    s_shapes, t_shapes = student.backbone.output_shape(), teacher.backbone.output_shape()
    for name in names:
        for who, shapes in (("student", s_shapes), ("teacher", t_shapes)):
            if name not in shapes:
                raise ConfigError(
                    f"{where} names {name!r}, which the {who}'s backbone does not produce; it "
                    f"has {sorted(shapes)}."
                )
    return s_shapes, t_shapes


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


def _crop_to_common(s: Tensor, t: Tensor) -> Pair:
    """Crop two maps of one stride to their common top-left region (they differ by padding)."""
    h, w = min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1])
    return s[..., :h, :w], t[..., :h, :w]


class TargetExtractor:
    """Turns a student forward pass and the teacher into :class:`Targets` for a request.

    Everything is validated at construction: feature names, logit targets and class counts.

    Args:
        student: the student meta-architecture.
        teacher: the :class:`~d2dist.modeling.teacher.Teacher` (how it runs: input format,
            pixel statistics, autocast, memory format).
        request: the union of the terms' requests.
        input_format: the student's ``INPUT.FORMAT`` (the format of the step's images).
    """

    def __init__(self, student: nn.Module, teacher, request: TargetRequest, *, input_format: str):
        teacher.check_formats(input_format)
        self.teacher = teacher
        self.input_format = input_format
        self.student, self.request = student, request
        teacher = teacher.model
        check_feature_names(request.features, student, teacher, "a term's IN_FEATURES")
        for target in request.logits:
            if target not in LOGIT_TARGETS:
                raise ConfigError(f"logit target {target!r}; expected one of {LOGIT_TARGETS}")
            for who, model in (("student", student), ("teacher", teacher)):
                if not _HAS_TARGET[target](model):
                    raise ConfigError(
                        f"the {who} ({type(model).__name__}) has no {target!r} logits; its "
                        f"natural target is {natural_logit_target(model)!r}. Set the term's "
                        "TARGET to one both networks have."
                    )
            ns, nt = _num_classes(student, target), _num_classes(teacher, target)
            if ns != nt:
                raise ConfigError(
                    f"{target!r} logits: the student predicts {ns} classes, the teacher {nt}. "
                    "Logit distillation needs the same classes in the same order (NUM_CLASSES)."
                )
        if "dense" in request.logits:
            self._check_dense()

        outputs: List[str] = []
        inputs: List[str] = []
        if request.features:
            outputs.append("backbone")
        # one box predictor per (Cascade) stage
        n = _num_stages(student) if "roi" in request.logits else 0
        self._roi_paths = (
            ["roi_heads.box_predictor"]
            if n == 1
            else [f"roi_heads.box_predictor.{k}" for k in range(n)]
        )
        if "roi" in request.logits:
            outputs += self._roi_paths
            inputs.append("roi_heads.box_pooler")
        if "dense" in request.logits:
            outputs.append("head")
        if "pixel" in request.logits:
            outputs.append("sem_seg_head.predictor")
        self._outputs, self._inputs = outputs, inputs

    def _check_dense(self) -> None:
        s, t = self.student, self.teacher.model
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

    def student_recorder(self) -> Recorder:
        """A recorder of the student sources this request needs (use as a context manager)."""
        return Recorder(self.student, outputs=self._outputs, inputs=self._inputs)

    # ---- teacher side ------------------------------------------------------------------
    def teacher_images(self, batched_inputs: Sequence[dict]) -> ImageList:
        """The student's (augmented) images in the teacher's format and normalisation."""
        return self.teacher.images(batched_inputs, self.input_format)

    @torch.no_grad()
    def teacher_forward(self, batched_inputs: Sequence[dict], student_rec: Recorder) -> dict:
        """The teacher parts the request needs, on the step's images (and the student's RoIs).

        Returns the teacher's raw outputs by kind (``features``, ``roi``, ``dense``, ``pixel``),
        for :meth:`pair`.
        """
        t, req = self.teacher.model, self.request
        out = {}
        with self.teacher.autocast_context():
            images = self.teacher_images(batched_inputs).tensor
            if self.teacher.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            feats = t.backbone(images)
            out["features"] = feats
            if "roi" in req.logits:
                heads = t.roi_heads
                pooler_in = [feats[f] for f in heads.box_in_features]
                n_t = _num_stages(t)
                logits = []
                for k, (_, boxes) in enumerate(student_rec.all_inputs("roi_heads.box_pooler")):
                    stage = min(k, n_t - 1)
                    head = heads.box_head[stage] if n_t > 1 else heads.box_head
                    predictor = heads.box_predictor[stage] if n_t > 1 else heads.box_predictor
                    logits.append(predictor(head(heads.box_pooler(pooler_in, boxes)))[0])
                out["roi"] = torch.cat(logits)
            if "dense" in req.logits:
                out["dense"] = t.head([feats[f] for f in t.head_in_features])[0]
            if "pixel" in req.logits:
                rec = Recorder(
                    t, outputs=["sem_seg_head.predictor"], stop_after="sem_seg_head.predictor"
                )
                with rec:
                    rec.run(t.sem_seg_head, feats)
                out["pixel"] = rec.output("sem_seg_head.predictor")
        return out

    def extract(self, batched_inputs: Sequence[dict], student_rec: Recorder) -> Targets:
        """Run the teacher parts and pair its tensors with the recorded student tensors."""
        return self.pair(
            batched_inputs, student_rec, self.teacher_forward(batched_inputs, student_rec)
        )

    def pair(self, batched_inputs: Sequence[dict], student_rec: Recorder, t_out: dict) -> Targets:
        """Pair the recorded student tensors with :meth:`teacher_forward`'s outputs."""
        targets = Targets(batched_inputs=batched_inputs)
        req = self.request
        if req.features:
            s_feats = student_rec.output("backbone")
            for name in req.features:
                targets.features[name] = _crop_to_common(
                    s_feats[name], t_out["features"][name].float().contiguous()
                )
        if "roi" in req.logits:
            s_logits = torch.cat([student_rec.output(p)[0] for p in self._roi_paths])
            targets.roi = (s_logits, t_out["roi"].float())
        if "dense" in req.logits:
            s_levels = student_rec.output("head")[0]
            for name, s, t in zip(self.student.head_in_features, s_levels, t_out["dense"]):
                targets.dense[name] = _crop_to_common(s, t.float().contiguous())
        if "pixel" in req.logits:
            s = student_rec.output("sem_seg_head.predictor")
            t = t_out["pixel"].float().contiguous()
            if t.shape[-2:] != s.shape[-2:]:
                t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
            targets.pixel = (s, t)
        return targets

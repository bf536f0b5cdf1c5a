"""Classification logits, what the logit kinds share: the targets (``roi``, ``dense``, ``pixel``;
each in its own file: :mod:`.roi`, :mod:`.dense`, :mod:`.pixel`), the checks that a network has
them, the natural target of a meta-architecture, the teacher's classification layers, and the
base class of the logit kinds.

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

from typing import List, Optional

from torch import nn

from ...errors import ConfigError
from .base import TargetKind

__all__ = [
    "LOGIT_TARGETS",
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

"""Online teacher labels: the teacher's predictions on a step's own augmented images as the
student's task targets (``MODEL.DISTILL.TEACHER_LABELS``).

Beyer et al. (CVPR 2022) distil by *function matching*: teacher and student see the same view, and
the teacher provides the targets, so images nobody labelled can be used. A Detectron2 student's
training forward needs ``instances`` (detectors) or ``sem_seg`` (semantic segmentation), so for the
images that have none (a folder registered with :func:`d2dist.data.register_image_folder`, or every
image with ``IMAGES: "all"``) the Distiller makes them from the teacher, before the student runs:

- detectors (Faster/Mask R-CNN, Cascade, RetinaNet, FCOS): the teacher's detections scoring at
  least ``SCORE_THRESHOLD`` become ``gt_boxes`` / ``gt_classes``, and for a student with a mask
  head its masks (binarised at ``MASK_THRESHOLD``) ``gt_masks``;
- semantic segmentation (semantic FPN, DeepLab): the teacher's per-pixel argmax, pixels whose top
  class probability (softmax of its logits) is below ``PIXEL_THRESHOLD`` set to the student's
  ignore value;
- panoptic FPN: both.

They are made in the augmented image's coordinates (the teacher runs on exactly the student's
images), under ``no_grad``, from the same teacher run whose backbone features serve the
distillation terms (:class:`~d2dist.modeling.targets.TeacherRun`): the teacher's backbone runs
once per step. An image on which the teacher predicts nothing above the threshold trains as a
background image (every anchor and proposal negative), as a labelled image without objects does.
"""

from typing import Dict, List, Optional, Sequence, Set

import torch
from detectron2.config import CfgNode as CN
from detectron2.modeling import GeneralizedRCNN, PanopticFPN, SemanticSegmentor
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage
from torch import nn

from ..config import register_distill_namespaces
from ..errors import ConfigError

__all__ = ["IMAGES", "TeacherLabels", "model_targets", "teacher_labels_namespace"]

IMAGES = ("unlabeled", "all")
TARGET_KEYS = ("instances", "sem_seg")


def teacher_labels_namespace() -> CN:
    """``MODEL.DISTILL.TEACHER_LABELS``: a fresh node of its keys with their defaults."""
    n = CN()
    # Which training images get the teacher's labels on their augmented view: "unlabeled" (the
    # images without annotations, e.g. of an --image-folder dataset; the others keep theirs) or
    # "all" (every image: the annotations are not used, pure function matching).
    n.IMAGES = "unlabeled"
    # Detectors: the teacher's detections scoring at least this are the student's boxes.
    n.SCORE_THRESHOLD = 0.5
    # Instance masks: the teacher's mask probabilities binarised at this.
    n.MASK_THRESHOLD = 0.5
    # Semantic segmentation: pixels whose top class probability is below this are ignored.
    n.PIXEL_THRESHOLD = 0.5
    return n


register_distill_namespaces(lambda: {"TEACHER_LABELS": teacher_labels_namespace()})


def _num_classes(model: nn.Module, what: str) -> Optional[int]:
    if what == "instances":
        heads = getattr(model, "roi_heads", None)
        if heads is not None:
            return getattr(heads, "num_classes", None)
        return getattr(model, "num_classes", None)
    predictor = getattr(getattr(model, "sem_seg_head", None), "predictor", None)
    return getattr(predictor, "out_channels", None)


def model_targets(model: nn.Module) -> Optional[Set[str]]:
    """What a meta-architecture trains on (as a student) or predicts (as a teacher): a subset of
    ``{"instances", "masks", "sem_seg"}``; None for a kind d2dist does not label for."""
    if isinstance(model, GeneralizedRCNN):
        heads = model.roi_heads
        out = {"instances"} | ({"masks"} if getattr(heads, "mask_on", False) else set())
        if getattr(heads, "keypoint_on", False):
            out.add("keypoints")
        if isinstance(model, PanopticFPN):
            out.add("sem_seg")
        return out
    if isinstance(model, DenseDetector):
        return {"instances"}
    if isinstance(model, SemanticSegmentor):
        return {"sem_seg"}
    return None


class TeacherLabels:
    """Makes the teacher's labels for the images of a step that need them (see the module's
    docstring). Built from ``MODEL.DISTILL.TEACHER_LABELS`` or by hand; a
    :class:`~d2dist.modeling.Distiller` binds it to its student and teacher.

    Args:
        images: "unlabeled" or "all" (which images are labelled by the teacher).
        score_threshold: detections kept, in [0, 1].
        mask_threshold: mask probabilities binarised at this, in [0, 1].
        pixel_threshold: semantic pixels below this confidence ignored, in [0, 1].
    """

    def __init__(
        self,
        *,
        images: str = "unlabeled",
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        pixel_threshold: float = 0.5,
    ):
        if images not in IMAGES:
            raise ConfigError(
                f"MODEL.DISTILL.TEACHER_LABELS.IMAGES={images!r}: expected one of {list(IMAGES)}"
            )
        for key, value in (("SCORE_THRESHOLD", score_threshold),
                           ("MASK_THRESHOLD", mask_threshold),
                           ("PIXEL_THRESHOLD", pixel_threshold)):  # fmt: skip
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(
                    f"MODEL.DISTILL.TEACHER_LABELS.{key}={value!r}: expected a number in [0, 1]"
                )
        self.images = images
        self.score_threshold = float(score_threshold)
        self.mask_threshold = float(mask_threshold)
        self.pixel_threshold = float(pixel_threshold)
        self._checked = False

    @classmethod
    def from_config(cls, cfg) -> "TeacherLabels":
        n = cfg.MODEL.DISTILL.TEACHER_LABELS
        return cls(
            images=n.IMAGES,
            score_threshold=n.SCORE_THRESHOLD,
            mask_threshold=n.MASK_THRESHOLD,
            pixel_threshold=n.PIXEL_THRESHOLD,
        )

    def __repr__(self) -> str:
        return (
            f"TeacherLabels(images={self.images!r}, score_threshold={self.score_threshold}, "
            f"mask_threshold={self.mask_threshold}, pixel_threshold={self.pixel_threshold})"
        )

    def needs_label(self, x: dict, wants: Optional[Set[str]]) -> bool:
        """Whether the training image ``x`` (a mapped dict) gets the teacher's labels: with
        ``IMAGES: "all"`` always; otherwise when it lacks a target the student trains on
        (``wants``, of :func:`model_targets`; None: a student d2dist does not label for, whose
        image is unlabeled when it has neither ``instances`` nor ``sem_seg``)."""
        if self.images == "all":
            return True
        keys = [k for k in TARGET_KEYS if k in wants] if wants is not None else TARGET_KEYS
        present = [k in x for k in keys]
        return not all(present) if wants is not None else not any(present)

    def check(self, student: nn.Module, teacher: nn.Module) -> None:
        """That the teacher predicts what the student trains on (a :class:`ConfigError` saying
        what is missing otherwise). Called before training where unlabeled images are
        configured, and at the first step that needs labels."""
        wants, has = model_targets(student), model_targets(teacher)
        s_kind, t_kind = type(student).__name__, type(teacher).__name__
        if wants is None:
            raise ConfigError(
                f"the student ({s_kind}) would train on the teacher's labels "
                f"(MODEL.DISTILL.TEACHER_LABELS.IMAGES={self.images!r}, or images without "
                "annotations), but d2dist makes them for students that train on 'instances' or "
                "'sem_seg' (GeneralizedRCNN, RetinaNet, FCOS, PanopticFPN, SemanticSegmentor / "
                "DeepLab). Label the images offline (tools/label_images.py writes a COCO file) "
                "and train on that, or train on annotated images only."
            )
        if "keypoints" in wants:
            raise ConfigError(
                f"the student ({s_kind}) has a keypoint head; d2dist does not make keypoint "
                "labels from a teacher. Train a keypoint student on annotated images only."
            )
        if has is None or not (wants - {"keypoints"}) <= has:
            missing = sorted((wants - {"keypoints"}) - (has or set()))
            raise ConfigError(
                f"the student ({s_kind}) trains on {sorted(wants)}, which the teacher "
                f"({t_kind}) must label (MODEL.DISTILL.TEACHER_LABELS), but it predicts "
                f"{sorted(has) if has is not None else 'nothing d2dist reads'}: missing "
                f"{missing}. Use a teacher of the student's task (a mask head for a Mask R-CNN "
                "student, a semantic head for a segmentation student), or annotated images only."
            )
        for what in ("instances", "sem_seg"):
            if what in wants:
                s, t = _num_classes(student, what), _num_classes(teacher, what)
                if s is not None and t is not None and s != t:
                    raise ConfigError(
                        f"the teacher predicts {t} classes and the student {s} ({what}): the "
                        "teacher's labels name the student's classes by index, so both must be "
                        "trained on the same classes in the same order."
                    )
        self._checked = True

    @torch.no_grad()
    def label(self, student: nn.Module, teacher, batched_inputs: Sequence[dict], run) -> List[dict]:
        """``batched_inputs`` with the images that need it labelled by the teacher (new dicts;
        the others unchanged). ``teacher`` is the :class:`~d2dist.modeling.Teacher`, ``run`` the
        step's :class:`~d2dist.modeling.targets.TeacherRun` (its images and backbone features are
        computed here, once, and reused by the distillation terms)."""
        wants = model_targets(student)
        which = [i for i, x in enumerate(batched_inputs) if self.needs_label(x, wants)]
        if not which:
            return list(batched_inputs)
        if not self._checked:
            self.check(student, teacher.model)
        images, features = run.images, run.features
        if len(which) < len(batched_inputs):  # the heads run on the images that need labels only
            images = ImageList(images.tensor[which], [images.image_sizes[i] for i in which])
            features = {k: v[which] for k, v in features.items()}
        with teacher.autocast_context():
            predictions = dict(zip(which, predict(teacher.model, images, features)))
        out = list(batched_inputs)
        for i in which:
            h, w = run.images.image_sizes[i]
            x = dict(batched_inputs[i])
            # IMAGES "unlabeled": only what the image lacks (a panoptic image with instances but
            # no semantic labels keeps its instances)
            if "instances" in wants and (self.images == "all" or "instances" not in x):
                x["instances"] = self._instances(predictions[i]["instances"], h, w, wants)
            if "sem_seg" in wants and (self.images == "all" or "sem_seg" not in x):
                ignore = getattr(getattr(student, "sem_seg_head", None), "ignore_value", 255)
                x["sem_seg"] = self._sem_seg(predictions[i]["sem_seg"], h, w, ignore)
            out[i] = x
        self._log(out, which, wants)
        return out

    @staticmethod
    def _log(batch: List[dict], which: List[int], wants: Set[str]) -> None:
        """The share of the step's images the teacher labelled, and its boxes per such image, as
        training scalars (``teacher_labels/...`` in metrics.json and TensorBoard)."""
        try:
            storage = get_event_storage()
        except AssertionError:  # outside a training loop (a picture of a mixed view, a benchmark)
            return
        scalars = {"teacher_labels/images_fraction": len(which) / len(batch)}
        if "instances" in wants:
            boxes = sum(len(batch[i]["instances"]) for i in which)
            scalars["teacher_labels/boxes_per_image"] = boxes / len(which)
        storage.put_scalars(**scalars, smoothing_hint=True)

    def _instances(self, pred: Instances, h: int, w: int, wants: Set[str]) -> Instances:
        pred = detector_postprocess(pred, h, w, self.mask_threshold)  # boxes clipped, masks pasted
        pred = pred[pred.scores >= self.score_threshold]
        gt = Instances((h, w))
        gt.gt_boxes = Boxes(pred.pred_boxes.tensor.float())
        gt.gt_classes = pred.pred_classes.long()
        if "masks" in wants:
            gt.gt_masks = BitMasks(pred.pred_masks.bool())
        return gt

    def _sem_seg(self, logits: torch.Tensor, h: int, w: int, ignore: int) -> torch.Tensor:
        logits = sem_seg_postprocess(logits, (h, w), h, w).float()
        confidence, classes = logits.softmax(dim=0).max(dim=0)
        classes[confidence < self.pixel_threshold] = ignore
        return classes.long()


def predict(model: nn.Module, images, features: Dict[str, torch.Tensor]) -> List[Dict]:
    """The teacher's predictions from its backbone ``features`` on ``images`` (an
    :class:`~detectron2.structures.ImageList`), per image: ``instances`` (in the coordinates of the
    padded batch, before :func:`detector_postprocess`) and/or ``sem_seg`` logits (padded). It runs
    the heads of Detectron2's meta-architectures as their inference does, without their backbone
    (which the step has run already)."""
    out: List[Dict] = [{} for _ in images.image_sizes]
    if isinstance(model, GeneralizedRCNN):
        if model.proposal_generator is None:
            raise ConfigError(
                "the teacher reads precomputed proposals (MODEL.LOAD_PROPOSALS), which the "
                "student's augmented images do not have: it cannot label them online."
            )
        proposals, _ = model.proposal_generator(images, features, None)
        instances, _ = model.roi_heads(images, features, proposals, None)
        for o, inst in zip(out, instances):
            o["instances"] = inst
    elif isinstance(model, DenseDetector):
        feats = [features[f] for f in model.head_in_features]
        instances = model.forward_inference(images, feats, model.head(feats))
        for o, inst in zip(out, instances):
            o["instances"] = inst
    if isinstance(model, (PanopticFPN, SemanticSegmentor)):
        logits, _ = model.sem_seg_head(features, None)
        for o, r in zip(out, logits):
            o["sem_seg"] = r
    return out

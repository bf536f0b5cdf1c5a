"""``gt``: the step's ground truth (each image's boxes, classes and instance masks) mapped onto
the grid of each requested feature level, for terms that weight features by where the objects
are (FGD)."""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, PolygonMasks
from torch import Tensor

from ...errors import ConfigError
from .base import TARGET_KIND_REGISTRY, TargetKind, num_branches, repeat_batch

__all__ = ["GroundTruthTargets", "LevelGroundTruth"]


@dataclass
class LevelGroundTruth:
    """The ground truth of one step on one feature level.

    Attributes:
        boxes: per image, its (M_i, 4) boxes, xyxy in pixels of the image the networks saw (the
            augmented, unpadded image; padding is added at the bottom and right).
        classes: per image, its (M_i,) class indices.
        image_sizes: per image, (height, width) before padding.
        stride: the level's stride: grid cell (i, j) covers pixels
            ``[j * stride, (j + 1) * stride) x [i * stride, (i + 1) * stride)``.
        instance_masks: per image, its Detectron2 masks (``BitMasks`` / ``PolygonMasks``), or
            None when the dataset has none.
    """

    boxes: List[Tensor]
    classes: List[Tensor]
    image_sizes: List[Tuple[int, int]]
    stride: int
    instance_masks: Optional[List[Any]] = None

    def level_boxes(self) -> List[Tensor]:
        """The boxes in grid units of this level (``x / stride``)."""
        return [b / self.stride for b in self.boxes]

    def coverage(self, size: Tuple[int, int]) -> List[Tensor]:
        """Per image, (M_i, H, W): the fraction of each grid cell of a (H, W) map of this level
        that each object covers: its instance mask where the dataset has masks (area-pooled from
        pixels), else its box (exactly)."""
        if self.instance_masks is not None:
            return [self._mask_coverage(m, b.device, size)
                    for m, b in zip(self.instance_masks, self.boxes)]  # fmt: skip
        return [self._box_coverage(b, size) for b in self.boxes]

    def _box_coverage(self, boxes: Tensor, size: Tuple[int, int]) -> Tensor:
        h, w = size
        s = float(self.stride)
        ys = torch.arange(h, device=boxes.device, dtype=torch.float32) * s
        xs = torch.arange(w, device=boxes.device, dtype=torch.float32) * s
        b = boxes.float()
        over_y = torch.minimum(ys[None] + s, b[:, 3:4]) - torch.maximum(ys[None], b[:, 1:2])
        over_x = torch.minimum(xs[None] + s, b[:, 2:3]) - torch.maximum(xs[None], b[:, 0:1])
        over_y, over_x = over_y.clamp(min=0) / s, over_x.clamp(min=0) / s
        return over_y[:, :, None] * over_x[:, None, :]

    def _mask_coverage(self, masks, device, size: Tuple[int, int]) -> Tensor:
        h, w = size
        s = self.stride
        if isinstance(masks, PolygonMasks):
            masks = BitMasks.from_polygon_masks(masks, h * s, w * s)
        bits = masks.tensor if isinstance(masks, BitMasks) else torch.as_tensor(masks)
        bits = bits.to(device=device, dtype=torch.float32)[:, : h * s, : w * s]
        canvas = F.pad(bits, (0, w * s - bits.shape[-1], 0, h * s - bits.shape[-2]))
        return canvas.view(-1, h, s, w, s).mean(dim=(2, 4))


@TARGET_KIND_REGISTRY.register()
class GroundTruthTargets(TargetKind):
    """The ground truth at feature resolution: ``{level: LevelGroundTruth}``.

    Options: the level names (of the student's backbone: the student's strides place them). It
    needs the annotations ('instances') of every training image; it runs no network. Its lists
    have one entry per row of the student's level: a student with k branches per image
    (TridentNet) gets each image's ground truth once per branch, branch-major.
    """

    name = "gt"

    def __init__(self, student, teacher, options, *, input_format):
        super().__init__(student, teacher, options, input_format=input_format)
        shapes = student.backbone.output_shape()
        missing = [o for o in self.options if o not in shapes]
        if missing:
            raise ConfigError(
                f"a term asks for the ground truth at levels {missing}, which the student's "
                f"backbone does not produce; it has {sorted(shapes)}."
            )
        self.strides = {name: shapes[name].stride for name in self.options}

    def student_outputs(self) -> List[str]:
        return ["backbone"]  # the rows of each level (one per image, or per image and branch)

    def pair(self, batched_inputs: Sequence[dict], student_rec, teacher_out) -> Dict[str, Any]:
        if any("instances" not in x for x in batched_inputs):
            raise ConfigError(
                "a distillation term needs the ground-truth instances of every training image "
                "(e.g. FGD's foreground masks), but a training image has none ('instances' is "
                "missing from its dict): train on a detection or instance-segmentation dataset, "
                "with a mapper that keeps the annotations."
            )
        device = self.student.pixel_mean.device
        boxes = [x["instances"].gt_boxes.tensor.to(device) for x in batched_inputs]
        classes = [x["instances"].gt_classes.to(device) for x in batched_inputs]
        sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
        has_masks = all(x["instances"].has("gt_masks") for x in batched_inputs)
        masks = [x["instances"].gt_masks for x in batched_inputs] if has_masks else None
        s_feats = student_rec.output("backbone")
        out = {}
        for name, stride in self.strides.items():
            k = num_branches(
                len(s_feats[name]), len(batched_inputs), f"ground truth at {name!r}",
                "the ground truth",
            )  # fmt: skip
            out[name] = LevelGroundTruth(
                repeat_batch(boxes, k), repeat_batch(classes, k), repeat_batch(sizes, k), stride,
                None if masks is None else repeat_batch(masks, k),
            )  # fmt: skip
        return out

    def leaf(self, value):
        return value  # no student tensors

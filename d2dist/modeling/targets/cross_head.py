"""``cross_head``: the student's dense-head features at a cut, aligned to the teacher's statistics
there and run through the frozen teacher's remaining head layers and predictors, with gradients
into the student (CrossKD's cross-head predictions), and the teacher's own predictions."""

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ..recorder import Recorder
from .base import TARGET_KIND_REGISTRY, TargetKind, check_head_strides

__all__ = ["BRANCHES", "CrossHead", "CrossHeadTargets", "align_to"]

# A dense head's two branches: (subnet, predictor) of classification and box regression.
BRANCHES = {"cls": ("cls_subnet", "cls_score"), "reg": ("bbox_subnet", "bbox_pred")}


def align_to(s: Tensor, mean: Tensor, std: Tensor, eps: float = 1e-6) -> Tensor:
    """``(s - mean_s) / (std_s + eps) * std + mean`` per channel over (N, H, W): the student
    feature with the given (teacher's) per-channel statistics; ``std_s`` is unbiased and the
    student's statistics are not detached."""
    dims = (0, 2, 3)
    mean_s = s.mean(dim=dims, keepdim=True)
    std_s = s.std(dim=dims, keepdim=True) if s[:, 0].numel() > 1 else torch.zeros_like(mean_s)
    return (s - mean_s) / (std_s + eps) * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)


def _relus(subnet: nn.Sequential) -> List[int]:
    """Indices of the ReLU modules of a head subnet: the k-th (1-based) ends the k-th conv."""
    return [i for i, m in enumerate(subnet) if isinstance(m, nn.ReLU)]


def _cut_path(model: nn.Module, branch: str, k: int) -> str:
    """Where the cut-``k`` feature of ``branch`` is read: the subnet's input (k = 0) or the
    input of the ReLU after its k-th conv (the pre-activation)."""
    subnet = BRANCHES[branch][0]
    if k == 0:
        return f"head.{subnet}"
    return f"head.{subnet}.{_relus(getattr(model.head, subnet))[k - 1]}"


def _stats(x: Tensor) -> Tuple[Tensor, Tensor]:
    x = x.float()
    dims = (0, 2, 3)
    std = x.std(dim=dims) if x[:, 0].numel() > 1 else torch.zeros(x.shape[1], device=x.device)
    return x.mean(dim=dims), std


@dataclass
class CrossHead:
    """The cross-head value of one step.

    Attributes:
        student_features: ``{(k, branch): [per level (N, C, H, W)]}``, the student's feature at
            cut k (with gradients).
        teacher_stats: ``{(k, branch): [per level (mean, std)]}``, the teacher's per-channel
            statistics at the same cut on its own features (constant).
        teacher_logits, teacher_deltas: per level, the teacher's own classification logits
            (N, A*K, H, W) and box regression (N, A*4, H, W) (constant, float32).
        levels: the student's head level names.
    """

    student_features: Dict[Tuple[int, str], List[Tensor]]
    teacher_stats: Dict[Tuple[int, str], List[Tuple[Tensor, Tensor]]]
    teacher_logits: List[Tensor]
    teacher_deltas: List[Tensor]
    levels: List[str]
    teacher: nn.Module = field(repr=False, default=None)

    def aligned(self, k: int, branch: str) -> List[Tensor]:
        """Per level, the student's cut-``k`` feature with the teacher's statistics there."""
        return [align_to(s.float(), m, sd)
                for s, (m, sd) in zip(self.student_features[(k, branch)],
                                      self.teacher_stats[(k, branch)])]  # fmt: skip

    def cross(self, k: int, branch: str) -> List[Tensor]:
        """Per level, the teacher's layers after cut ``k`` of ``branch`` (the ReLU that ends its
        k-th conv, the further convs, its predictor) on the aligned student feature: gradients
        reach the student; the teacher's parameters, frozen, get none."""
        head = self.teacher.head
        subnet_name, predictor_name = BRANCHES[branch]
        subnet = getattr(head, subnet_name)
        tail = subnet if k == 0 else subnet[_relus(subnet)[k - 1] :]
        predictor = getattr(head, predictor_name)
        # levels in order: a per-level norm (CycleBatchNormList) cycles with the calls
        return [predictor(tail(z)) for z in self.aligned(k, branch)]


@TARGET_KIND_REGISTRY.register()
class CrossHeadTargets(TargetKind):
    """Cross-head predictions of dense heads (RetinaNet, FCOS; Wang et al., "CrossKD", CVPR 2024):
    a :class:`CrossHead`.

    Options: the cuts ``k`` (ints): 0 is the FPN level itself; k > 0 the pre-activation output
    of the k-th stacked conv of each head branch. Checked at build: both networks have dense
    heads with levels of equal strides, the same anchors x classes per location and box outputs,
    at least k convs per branch, and equal widths at the cut. A student whose head runs on
    several rows per image (several branches per image) is refused at its first step.
    """

    name = "cross_head"

    def __init__(self, student, teacher, options, *, input_format):
        super().__init__(student, teacher, options, input_format=input_format)
        t = teacher.model
        for who, model in (("student", student), ("teacher", t)):
            head = getattr(model, "head", None)
            if head is None or not all(hasattr(head, n) for b in BRANCHES.values() for n in b):
                raise ConfigError(
                    f"cross-head distillation needs dense detection heads (RetinaNet, FCOS: "
                    f"cls_subnet, bbox_subnet, cls_score, bbox_pred) in both networks; the {who} "
                    f"is a {type(model).__name__}."
                )
        check_head_strides(
            student, t, "cross-head", "the teacher's head runs on the student's levels"
        )
        s_shapes, t_shapes = student.backbone.output_shape(), t.backbone.output_shape()
        for branch, (_, predictor) in BRANCHES.items():
            ns = getattr(student.head, predictor).out_channels
            nt = getattr(t.head, predictor).out_channels
            if ns != nt:
                raise ConfigError(
                    f"cross-head: the student's {predictor} has {ns} output channels, the "
                    f"teacher's {nt}; they need the same anchors per location (ANCHOR_GENERATOR) "
                    "and classes."
                )
        for k in self.options:
            if not isinstance(k, int) or k < 0:
                raise ConfigError(f"cross-head cut {k!r}: a cut is an int >= 0")
            for branch, (subnet, _) in BRANCHES.items():
                widths = []
                for who, model, shapes in (("student", student, s_shapes),
                                           ("teacher", t, t_shapes)):  # fmt: skip
                    relus = _relus(getattr(model.head, subnet))
                    if k > len(relus):
                        raise ConfigError(
                            f"cross-head cut {k} (MODEL.DISTILL.CROSSKD.DEPTH): the {who}'s "
                            f"{subnet} has {len(relus)} convs; use a cut from 0 to {len(relus)}."
                        )
                    if k and getattr(model.head, subnet)[relus[k - 1]].inplace:
                        raise ConfigError(
                            f"cross-head cut {k}: the {who}'s {subnet} ReLU works in place, which "
                            "would overwrite the recorded pre-activation"
                        )
                    widths.append(self._width(model, subnet, k, shapes))
                if widths[0] != widths[1]:
                    raise ConfigError(
                        f"cross-head cut {k}: the student's {subnet} has {widths[0]} channels "
                        f"there, the teacher's {widths[1]}; the teacher's layers after the cut "
                        "need the teacher's width (choose another MODEL.DISTILL.CROSSKD.DEPTH, "
                        "or a student head of the teacher's width)."
                    )
        self._paths = {(k, b): _cut_path(student, b, k) for k in self.options for b in BRANCHES}
        self._t_paths = {(k, b): _cut_path(t, b, k) for k in self.options for b in BRANCHES}

    @staticmethod
    def _width(model, subnet: str, k: int, shapes) -> int:
        if k == 0:
            return shapes[model.head_in_features[0]].channels
        convs = [m for m in getattr(model.head, subnet) if isinstance(m, nn.Conv2d)]
        return convs[k - 1].out_channels

    def student_inputs(self) -> List[str]:
        return list(dict.fromkeys(self._paths.values()))

    def teacher_forward(self, run, student_rec):
        t = self.teacher_model
        feats = [run.features[f] for f in t.head_in_features]
        with Recorder(t, inputs=list(dict.fromkeys(self._t_paths.values()))) as rec:
            outputs = t.head(feats)
        stats = {
            key: [_stats(args[0]) for args in rec.all_inputs(path)]
            for key, path in self._t_paths.items()
        }
        return {"logits": outputs[0], "deltas": outputs[1], "stats": stats}

    def pair(self, batched_inputs, student_rec, teacher_out) -> CrossHead:
        features = {
            key: [args[0] for args in student_rec.all_inputs(path)]
            for key, path in self._paths.items()
        }
        rows, images = next(iter(features.values()))[0].shape[0], len(batched_inputs)
        if rows != images:
            raise ConfigError(
                f"cross-head distillation (CrossKD): the student's dense head ran on {rows} rows "
                f"for the step's {images} images (a student with several branches per image, "
                "e.g. a TridentNet-style backbone, or one that drops images). CrossKD assigns "
                "each image's ground truth to the student's anchors, one row per image, so it "
                "cannot pair such a student; use KD or DIST on the dense logits, or feature "
                "terms (MIMIC, PKD, ...), which pair each branch with the teacher's image."
            )
        return CrossHead(
            student_features=features,
            teacher_stats=teacher_out["stats"],
            teacher_logits=[x.float() for x in teacher_out["logits"]],
            teacher_deltas=[x.float() for x in teacher_out["deltas"]],
            levels=list(self.student.head_in_features),
            teacher=self.teacher_model,
        )

    def leaf(self, value: CrossHead) -> CrossHead:
        leaves = {
            key: [x.detach().requires_grad_(True) for x in xs]
            for key, xs in value.student_features.items()
        }
        return CrossHead(leaves, value.teacher_stats, value.teacher_logits, value.teacher_deltas,
                         value.levels, value.teacher)  # fmt: skip

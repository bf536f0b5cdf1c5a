"""FGD: Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022."""

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import Tensor, nn

from ...errors import ConfigError
from ..adapters import DISTILL_MODULE_REGISTRY, build_distill_module
from ..targets import TargetRequest, Targets
from .base import DistillTerm, TermOutput, feature_adapters, feature_namespace, register_term
from .common import check_pair, float32_loss

__all__ = ["FGD", "FGDContext", "MASK_MODES", "fgd_loss", "fgd_masks"]

# How boxes are mapped onto a level's grid: by its stride (the padded grid: geometrically right),
# or as FGD's code does (x / unpadded image width * map width: stretches boxes of padded images).
MASK_MODES = ("stride", "image")


def fgd_masks(
    boxes: Sequence[Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    feature_size: Tuple[int, int],
    stride: int,
    mode: str = "stride",
) -> Tuple[Tensor, Tensor]:
    """FGD's foreground and background masks of one level: ``(Mask_fg, Mask_bg)``, (N, H, W).

    Each image's boxes (xyxy, input-image pixels) are mapped onto the (H, W) grid
    (``mode="stride"``: ``x / stride``; ``"image"``: ``x / image_width * W`` in float32, as the
    authors' code), and each covers rows ``floor(y1)..ceil(y2)`` and columns
    ``floor(x1)..ceil(x2)`` inclusive, clipped at the border, with the value
    ``1 / (rows * cols)`` of its unclipped extent; overlapping boxes take the maximum.
    ``Mask_bg`` is 1 where ``Mask_fg`` is 0, divided by the number of such cells of the image.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"fgd_masks: mode={mode!r}; expected one of {MASK_MODES}")
    h, w = int(feature_size[0]), int(feature_size[1])
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    fg = torch.zeros(len(boxes), h, w, device=device)
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    for i, (b, (img_h, img_w)) in enumerate(zip(boxes, image_sizes)):
        if len(b) == 0:
            continue
        b = b.detach().float().to(device)
        if mode == "stride":
            x, y = b[:, 0::2] / stride, b[:, 1::2] / stride
        else:
            x, y = b[:, 0::2] / img_w * w, b[:, 1::2] / img_h * h
        x0, x1 = torch.floor(x[:, 0]), torch.ceil(x[:, 1])
        y0, y1 = torch.floor(y[:, 0]), torch.ceil(y[:, 1])
        value = 1.0 / ((y1 - y0 + 1) * (x1 - x0 + 1))  # of the unclipped extent
        in_rows = (rows[None] >= y0[:, None]) & (rows[None] <= y1[:, None])  # (M, H)
        in_cols = (cols[None] >= x0[:, None]) & (cols[None] <= x1[:, None])  # (M, W)
        cover = (in_rows[:, :, None] & in_cols[:, None, :]).float() * value[:, None, None]
        fg[i] = cover.amax(dim=0)
    bg = (fg == 0).float()
    count = bg.sum(dim=(1, 2), keepdim=True)
    bg = torch.where(count > 0, bg / count.clamp(min=1), bg)
    return fg, bg


def _attention(x: Tensor, tau: float) -> Tuple[Tensor, Tensor]:
    """FGD's spatial (N, H, W) and channel (N, C) attention of ``|x|`` at temperature tau."""
    n, c, h, w = x.shape
    a = x.abs()
    spatial = h * w * F.softmax((a.mean(dim=1) / tau).reshape(n, -1), dim=1).reshape(n, h, w)
    channel = c * F.softmax(a.mean(dim=(2, 3)) / tau, dim=1)
    return spatial, channel


@float32_loss
def fgd_loss(
    student_feat: Tensor,
    teacher_feat: Tensor,
    fg_mask: Tensor,
    bg_mask: Tensor,
    context_s: nn.Module,
    context_t: nn.Module,
    tau: float = 0.5,
    alpha: float = 5e-5,
    beta: float = 2.5e-5,
    gamma: float = 5e-5,
    lam: float = 5e-7,
) -> Tuple[Tensor, Dict[str, Tensor]]:
    """Yang et al., "Focal and Global Knowledge Distillation for Detectors" (FGD), CVPR 2022;
    one level.

    With the teacher's spatial and channel attention ``w = SA^T * CA^T`` (of ``|T|`` at
    temperature ``tau``), ``fg = sum Mask_fg * w * (S - T)^2 / N`` and ``bg`` alike with
    ``Mask_bg`` (:func:`fgd_masks`); ``attention = sum |CA^S - CA^T| / N + sum |SA^S - SA^T| / N``
    (the student's attention gets gradients); ``relation = sum (R_s(S) - R_t(T))^2 / N`` with the
    trainable global-context modules ``context_s`` / ``context_t`` (:class:`FGDContext`, both
    trained by it). Returns ``(alpha * fg + beta * bg + gamma * attention + lam * relation,
    {"fg", "bg", "attention", "relation"})``, the parts unweighted.
    """
    check_pair(student_feat, teacher_feat, "fgd_loss")
    n, _, h, w = student_feat.shape
    if tuple(fg_mask.shape) != (n, h, w) or tuple(bg_mask.shape) != (n, h, w):
        raise ValueError(
            f"fgd_loss: masks must be {(n, h, w)}, got {tuple(fg_mask.shape)} and "
            f"{tuple(bg_mask.shape)}"
        )
    if not tau > 0:
        raise ValueError(f"fgd_loss: the temperature tau must be > 0, got {tau}")
    s, t = student_feat.float(), teacher_feat.detach().float()
    if n == 0:
        zero = s.sum() * 0.0
        return zero, {k: zero for k in ("fg", "bg", "attention", "relation")}
    sa_t, ca_t = _attention(t, tau)
    sa_s, ca_s = _attention(s, tau)
    weight = sa_t[:, None] * ca_t[:, :, None, None]
    sq = (s - t).square() * weight
    fg = (sq * fg_mask[:, None].float()).sum() / n
    bg = (sq * bg_mask[:, None].float()).sum() / n
    attention = (ca_s - ca_t).abs().sum() / n + (sa_s - sa_t).abs().sum() / n
    relation = (context_s(s).float() - context_t(t).float()).square().sum() / n
    parts = {"fg": fg, "bg": bg, "attention": attention, "relation": relation}
    total = alpha * fg + beta * bg + gamma * attention + lam * relation
    return total, parts


@DISTILL_MODULE_REGISTRY.register()
class FGDContext(nn.Module):
    """FGD's global-context block (GcBlock-style) for ``channels`` channels: ``F + delta`` with
    ``p = softmax_hw(conv1x1_{C->1}(F))``, ``ctx = sum_hw F * p`` and
    ``delta = conv1x1(ReLU(LayerNorm(conv1x1_{C->C/2}(ctx))))``. The attention conv is
    Kaiming-normal (fan_in, relu) with zero bias and the last conv zero, so ``delta`` is 0 at the
    start."""

    def __init__(self, channels: int):
        super().__init__()
        if channels < 2:
            raise ConfigError(f"FGDContext(channels={channels}): need at least 2 channels")
        mid = channels // 2
        self.attention = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, mid, kernel_size=1),
            nn.LayerNorm([mid, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.attention.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.attention.bias)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        p = F.softmax(self.attention(x).reshape(n, 1, h * w), dim=2)  # (N, 1, HW)
        context = torch.bmm(x.reshape(n, c, h * w), p.transpose(1, 2)).reshape(n, c, 1, 1)
        return x + self.channel_add(context)


@register_term
class FGD(DistillTerm):
    """Yang et al., "Focal and Global Knowledge Distillation for Detectors", CVPR 2022, on FPN
    levels of detection students (R-CNN, RetinaNet, FCOS).

    Per level of ``IN_FEATURES``: the student's level, aligned by a 1x1 conv when widths differ
    (``ADAPTER: auto``), against the teacher's: the focal loss on the objects' region and on the
    background (weighted by the teacher's attention and the masks of :func:`fgd_masks`, from the
    ``gt`` target kind), the attention loss, and the global relation loss through two context
    blocks per level (:class:`FGDContext`, student side and teacher side); :func:`fgd_loss`,
    summed over levels. Defaults: the authors' Faster R-CNN settings (RetinaNet: ``TAU`` 0.5,
    ``ALPHA`` 1e-3, ``BETA`` 5e-4, ``GAMMA`` 5e-4, ``LAMBDA`` 5e-6 on p3-p7; FCOS: 0.8, 1.6e-3,
    8e-4, 8e-4, 8e-6). Config: ``MODEL.DISTILL.FGD``.
    """

    @classmethod
    def config_namespace(cls):
        # Defaults: the authors' Faster R-CNN settings; RetinaNet: TAU 0.5, ALPHA 1e-3, BETA 5e-4,
        # GAMMA 5e-4, LAMBDA 5e-6 on p3-p7; FCOS: 0.8, 1.6e-3, 8e-4, 8e-4, 8e-6.
        c = feature_namespace(1.0, ["p2", "p3", "p4", "p5"])
        c.TAU = 0.5
        c.ALPHA = 5e-5  # foreground
        c.BETA = 2.5e-5  # background
        c.GAMMA = 5e-5  # attention
        c.LAMBDA = 5e-7  # global relation
        # How boxes are mapped onto a level: "stride" (x / stride, the padded grid) or "image"
        # (as the authors' code: x / unpadded image width * map width, which stretches padded
        # images).
        c.MASK_MODE = "stride"
        return c

    @configurable
    def __init__(
        self,
        *,
        weight: float,
        adapters: nn.ModuleDict,
        contexts_s: nn.ModuleDict,
        contexts_t: nn.ModuleDict,
        tau: float = 0.5,
        alpha: float = 5e-5,
        beta: float = 2.5e-5,
        gamma: float = 5e-5,
        lam: float = 5e-7,
        mask_mode: str = "stride",
    ):
        """
        Args:
            weight: the term's weight (multiplies the level losses' sum).
            adapters: per level, student -> teacher width.
            contexts_s, contexts_t: per level, the student-side and teacher-side
                :class:`FGDContext` of the teacher's width.
            tau, alpha, beta, gamma, lam: see :func:`fgd_loss`.
            mask_mode: see :func:`fgd_masks`.
        """
        super().__init__(weight=weight)
        if not tau > 0:
            raise ConfigError(f"MODEL.DISTILL.FGD.TAU={tau}; the temperature must be > 0")
        for key, value in (("ALPHA", alpha), ("BETA", beta), ("GAMMA", gamma), ("LAMBDA", lam)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"MODEL.DISTILL.FGD.{key}={value}: must be a finite number >= 0")
        if mask_mode not in MASK_MODES:
            raise ConfigError(
                f"MODEL.DISTILL.FGD.MASK_MODE={mask_mode!r}; expected one of {MASK_MODES}"
            )
        self.adapters, self.contexts_s, self.contexts_t = adapters, contexts_s, contexts_t
        self.tau, self.alpha, self.beta, self.gamma, self.lam = tau, alpha, beta, gamma, lam
        self.mask_mode = mask_mode

    @classmethod
    def from_config(cls, cfg, student, teacher):
        if not hasattr(student, "roi_heads") and not hasattr(student, "head"):
            raise ConfigError(
                f"MODEL.DISTILL.LOSSES names FGD, which distils detectors (it weights features by "
                f"the ground-truth boxes); the student is a {type(student).__name__}. Use MGD, "
                "CWD or DIST_FEATURE for segmentation students."
            )
        adapters = feature_adapters(cfg, "FGD", student, teacher)
        t_shapes = teacher.backbone.output_shape()

        def contexts():
            return nn.ModuleDict(
                {n: build_distill_module("FGDContext", channels=t_shapes[n].channels)
                 for n in adapters}  # fmt: skip
            )

        return {
            "weight": cfg.WEIGHT,
            "adapters": adapters,
            "contexts_s": contexts(),
            "contexts_t": contexts(),
            "tau": cfg.TAU,
            "alpha": cfg.ALPHA,
            "beta": cfg.BETA,
            "gamma": cfg.GAMMA,
            "lam": cfg.LAMBDA,
            "mask_mode": cfg.MASK_MODE,
        }

    def request(self) -> TargetRequest:
        levels = tuple(self.adapters.keys())
        return TargetRequest(features=levels, gt=levels)

    def forward(self, targets: Targets) -> TermOutput:
        parts: Dict[str, Tensor] = {}
        totals: List[Tensor] = []
        for name, adapter in self.adapters.items():
            s, t = targets.features[name]
            gt = targets.gt[name]
            fg, bg = fgd_masks(gt.boxes, gt.image_sizes, t.shape[-2:], gt.stride, self.mask_mode)
            total, level = fgd_loss(
                adapter(s), t, fg, bg, self.contexts_s[name], self.contexts_t[name],
                self.tau, self.alpha, self.beta, self.gamma, self.lam,
            )  # fmt: skip
            totals.append(total)
            parts[name] = total
            parts.update({f"{name}_{k}": v for k, v in level.items()})
        return TermOutput(torch.stack(totals).sum(), parts)

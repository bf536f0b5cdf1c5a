"""MGD: Yang et al., "Masked Generative Distillation", ECCV 2022."""

from typing import Dict, Optional

import torch
from detectron2.config import configurable
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...errors import ConfigError
from ..adapters import DISTILL_MODULE_REGISTRY, build_distill_module
from ..targets import TargetRequest, Targets
from .base import (
    DistillTerm,
    TermOutput,
    feature_adapters,
    feature_namespace,
    register_term,
    sum_levels,
)
from .common import check_pair, float32_loss

__all__ = ["MGD", "MGDGenerator", "mgd_loss"]


@DISTILL_MODULE_REGISTRY.register()
class MGDGenerator(nn.Sequential):
    """MGD's generation block for ``channels`` channels: 3x3 conv -> ReLU -> 3x3 conv (padding 1,
    with bias, PyTorch's default initialisation). Trained with the student, dropped at export."""

    def __init__(self, channels: int):
        if channels < 1:
            raise ConfigError(f"MGDGenerator(channels={channels}): need at least one channel")
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )


@float32_loss
def mgd_loss(
    student_feat: Tensor,
    teacher_feat: Tensor,
    generator: nn.Module,
    mask: Tensor,
    alpha: float = 1.0,
) -> Tensor:
    """Yang et al., "Masked Generative Distillation" (MGD), ECCV 2022; one level.

    ``alpha * sum_{n,c,h,w} (G(S * M) - T)^2 / N``: the student feature ``S`` (already aligned
    to the teacher's width), masked by ``mask`` (N, 1, H, W) of 0 / 1 (shared by all channels),
    goes through the ``generator`` G and must reproduce the teacher's ``T``; a *sum* over
    channels and positions, a mean over the batch only. The term draws the mask; here it is given,
    so the value is deterministic. The generator's parameters get gradients too.
    """
    check_pair(student_feat, teacher_feat, "mgd_loss")
    n, _, h, w = student_feat.shape
    if tuple(mask.shape) != (n, 1, h, w):
        raise ValueError(f"mgd_loss: the mask must be {(n, 1, h, w)}, got {tuple(mask.shape)}")
    if n == 0:
        return student_feat.float().sum() * 0.0
    s = student_feat.float() * mask.to(student_feat.device, torch.float32)
    generated = generator(s).float()
    return alpha * (generated - teacher_feat.detach().float()).square().sum() / n


def mgd_mask(shape, lam: float, generator: torch.Generator, device) -> Tensor:
    """MGD's random mask (N, 1, H, W): ``u ~ U[0, 1)``; 0 where ``u > 1 - lam``, else 1."""
    u = torch.rand(shape, generator=generator, device=device)
    return (u <= 1 - lam).float()


@register_term
class MGD(DistillTerm):
    """Yang et al., "Masked Generative Distillation", ECCV 2022, on FPN levels (any student).

    Per level of ``IN_FEATURES``: the student's level, aligned to the teacher's width by a 1x1
    conv when widths differ (``ADAPTER: auto``), is masked at random positions (each position
    dropped with probability ``LAMBDA``, the same for all channels, drawn anew every step and
    level) and a generator per level (:class:`MGDGenerator`) must reproduce the teacher's level
    from it: :func:`mgd_loss`, summed over levels. ``WEIGHT`` is the paper's ``alpha``
    (the loss is a sum over channels and positions). The masks come from a generator seeded by
    ``SEED``, the process rank and the iteration, so a run and its resumption draw the same
    ones. Config: ``MODEL.DISTILL.MGD``.
    """

    @classmethod
    def config_namespace(cls):
        # WEIGHT is the paper's alpha (the loss is a sum over channels and positions): the
        # authors' COCO configs use 5e-7, LAMBDA 0.45 on p2-p5 for two-stage detectors (the
        # defaults here) and 2e-5, 0.65 on p3-p7 for one-stage ones. ADAPTER "auto": a 1x1 conv
        # (with bias) when the widths differ, as the authors'.
        c = feature_namespace(5e-7, ["p2", "p3", "p4", "p5"])
        c.LAMBDA = 0.45  # the fraction of masked positions
        return c

    @configurable
    def __init__(
        self,
        *,
        weight: float,
        adapters: nn.ModuleDict,
        generators: nn.ModuleDict,
        lam: float = 0.45,
        seed: int = 0,
    ):
        """
        Args:
            weight: the term's weight (the paper's alpha).
            adapters: per level, student -> teacher width.
            generators: per level, an :class:`MGDGenerator` of the teacher's width.
            lam: the fraction of masked positions, in [0, 1).
            seed: the masks' seed.
        """
        super().__init__(weight=weight)
        if not 0.0 <= lam < 1.0:
            raise ConfigError(
                f"MODEL.DISTILL.MGD.LAMBDA={lam}: the masked fraction must be in [0, 1) (the "
                "authors' COCO configs: 0.45 for two-stage, 0.65 for one-stage detectors)."
            )
        if set(adapters) != set(generators):
            raise ConfigError(
                f"MGD: adapters for {list(adapters)}, generators for {list(generators)}"
            )
        self.adapters, self.generators = adapters, generators
        self.lam, self.seed = float(lam), int(seed)
        self._generators: Dict[str, torch.Generator] = {}

    @classmethod
    def from_config(cls, cfg, student, teacher):
        adapters = feature_adapters(cfg, "MGD", student, teacher)
        t_shapes = teacher.backbone.output_shape()
        generators = nn.ModuleDict(
            {
                n: build_distill_module("MGDGenerator", channels=t_shapes[n].channels)
                for n in adapters
            }
        )
        return {
            "weight": cfg.WEIGHT,
            "adapters": adapters,
            "generators": generators,
            "lam": cfg.LAMBDA,
            "seed": cfg.seed if cfg.seed >= 0 else 0,
        }

    def request(self) -> TargetRequest:
        return TargetRequest(features=tuple(self.adapters.keys()))

    def _rng(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device)
        g = self._generators[key]
        iteration = get_event_storage().iter
        g.manual_seed((self.seed * 1_000_003 + comm.get_rank()) * 1_000_003 + iteration)
        return g

    def forward(self, targets: Targets) -> TermOutput:
        parts = {}
        g: Optional[torch.Generator] = None
        for name, adapter in self.adapters.items():
            s, t = targets.features[name]
            s = adapter(s)
            if g is None:
                g = self._rng(s.device)
            n, _, h, w = t.shape
            mask = mgd_mask((n, 1, h, w), self.lam, g, s.device)
            parts[name] = mgd_loss(s, t, self.generators[name], mask)
        return TermOutput(sum_levels(parts), parts)

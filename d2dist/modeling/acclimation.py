"""Teacher acclimation for DIST+: d2dist's documented *reconstruction*.

DIST+ (Huang et al., IEEE TPAMI 47(7), 2025) adds a "teacher acclimation" strategy that reduces
the discrepancy between teacher and student. The paper is not openly available and there is no
official code; this module implements the reconstruction stated in d2dist's METHODS document:

- the teacher's *frozen* outputs pass through a small trainable module before the loss, set to
  the identity at the start (so step 0 equals plain DIST): a learnable temperature for logit
  targets, a per-channel affine map (scale, shift) for feature targets;
- it is trained to reduce the distillation loss with the student's side detached for that
  update, plus an anchor ``lambda * |theta - identity|^2`` that keeps it near the unmodified
  teacher;
- it can be off, start late (``START_ITER``) and be frozen after ``STOP_ITER``. Its parameters
  live in the distillation term (not the teacher) and are saved with the run.

A property worth knowing: with ``DIST_FEATURE.NORMALIZE: none`` the Pearson correlations are
invariant to a per-channel shift (and the intra term to a positive per-channel scale), so there
the affine map acts only through its scale on the inter term; with ``softmax`` normalisation
both parts act.
"""

import torch
from torch import Tensor, nn

__all__ = ["FeatureAcclimation", "TemperatureAcclimation", "AcclimationSchedule"]


class FeatureAcclimation(nn.Module):
    """Per-channel affine map of a teacher feature: ``t * (1 + scale) + shift``, identity at 0."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, t: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (t.dim() - 2)
        return t * (1 + self.scale.view(shape)) + self.shift.view(shape)

    def penalty(self) -> Tensor:
        """``|theta - identity|^2``."""
        return self.scale.square().sum() + self.shift.square().sum()


class TemperatureAcclimation(nn.Module):
    """A learnable temperature for teacher logits: ``t / T`` with ``T = exp(log_t)``, 1 at 0."""

    def __init__(self):
        super().__init__()
        self.log_t = nn.Parameter(torch.zeros(()))

    def forward(self, t: Tensor) -> Tensor:
        return t / self.log_t.exp()

    def penalty(self) -> Tensor:
        return (self.log_t.exp() - 1).square()


class AcclimationSchedule:
    """When acclimation acts: ``off`` before ``start_iter``, ``train`` until ``stop_iter``
    (exclusive; -1: never stops), ``frozen`` (applied, not trained) after."""

    def __init__(self, start_iter: int = 0, stop_iter: int = -1):
        if start_iter < 0 or (stop_iter >= 0 and stop_iter < start_iter):
            raise ValueError(
                f"acclimation START_ITER={start_iter}, STOP_ITER={stop_iter}: need "
                "0 <= START_ITER and (STOP_ITER == -1 or STOP_ITER >= START_ITER)"
            )
        self.start_iter, self.stop_iter = start_iter, stop_iter

    def phase(self, iteration: int) -> str:
        if iteration < self.start_iter:
            return "off"
        if self.stop_iter >= 0 and iteration >= self.stop_iter:
            return "frozen"
        return "train"

"""Teacher acclimation for DIST+: d2dist's documented *reconstructions*, the term base that
applies them (:class:`AcclimatedTerm`), and their config namespace ``MODEL.DISTILL.ACCLIMATION``
(:func:`acclimation_namespace`), shared by the terms that use them.

DIST+ (Huang et al., IEEE TPAMI 47(7), 2025) adds a "teacher acclimation" strategy that reduces
the discrepancy between teacher and student. The paper is not openly available and the authors
published no code; d2dist reconstructs it in two ways (``MODEL.DISTILL.ACCLIMATION.MODE``; the
maths and the choices are in docs/methods.md):

- ``output`` (the first reconstruction): the teacher's *frozen* outputs pass through a small
  trainable map before the loss, set to the identity at the start (so step 0 equals plain
  DIST): a learnable temperature for logits (:class:`TemperatureAcclimation`, term ``DIST``), a
  per-channel affine map (scale, shift) for features (:class:`FeatureAcclimation`, term
  ``DIST_FEATURE``); anchored by ``lambda * |theta - identity|^2``;
- ``head`` (the second): the teacher's classification layer is made trainable for the loss
  (:class:`HeadAcclimation`: the frozen layer plus a trainable offset of its weights that starts
  at zero, i.e. a trainable copy initialised from the teacher), run on the teacher's own
  (constant) classifier inputs; anchored by ``lambda * KL(teacher || acclimated)`` on their
  predictions (term ``DIST``).

In both, the acclimation modules are trained by the distillation loss with the student's side
detached for that update (and the student by the same loss with the teacher's side detached),
plus their anchor; they can be off (before ``START_ITER``) and frozen (from ``STOP_ITER``). Their
parameters live in the distillation term (never in the teacher) and are saved with the run.

A property worth knowing: with ``DIST_FEATURE.NORMALIZE: none`` the Pearson correlations are
invariant to a per-channel shift (and the intra term to a positive per-channel scale), so there
the affine map acts only through its scale on the inter term; with ``softmax`` normalisation
both parts act.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn

from ...config import register_distill_namespaces
from ...errors import ConfigError
from .base import DistillTerm
from .kd import binary_kd_loss, kd_loss

__all__ = [
    "ACCLIMATION_MODES",
    "AcclimatedTerm",
    "AcclimationSchedule",
    "FeatureAcclimation",
    "HeadAcclimation",
    "TemperatureAcclimation",
    "acclimation_from_config",
    "acclimation_namespace",
]

ACCLIMATION_MODES = ("output", "head")


def acclimation_namespace() -> CN:
    """``MODEL.DISTILL.ACCLIMATION``, shared by the terms that acclimate (DIST, DIST_FEATURE):
    a fresh node of its keys with their defaults."""
    # DIST+ teacher acclimation (reconstruction): identity-initialised trainable maps of the
    # teacher's outputs for the DIST and DIST_FEATURE terms (a temperature for logits, a
    # per-channel affine map for features), trained on the distillation loss and anchored to the
    # unmodified teacher by LAMBDA * |theta - identity|^2; trained from START_ITER, frozen from
    # STOP_ITER (-1: never).
    a = CN()
    a.ENABLED = False
    # "output": the maps above (DIST: a temperature; DIST_FEATURE: per-channel affine);
    # "head": the teacher's classification layer made trainable (a copy initialised from the
    # teacher), anchored by LAMBDA * KL(teacher || acclimated) (DIST only). Both reconstructions.
    a.MODE = "output"
    a.LAMBDA = 1.0
    a.START_ITER = 0
    a.STOP_ITER = -1
    return a


def _namespaces():
    return {"ACCLIMATION": acclimation_namespace()}


register_distill_namespaces(_namespaces)


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


class HeadAcclimation(nn.Module):
    """The teacher's classification layer(s), made trainable: each computes with the frozen
    layer's weight and bias plus a trainable offset of the same shape, zero at the start, so it
    is a trainable copy of the layer initialised from the teacher (whatever weights the teacher
    loads later: the offset is what trains, and what the run's checkpoint holds; weight decay
    pulls the copy towards the teacher rather than towards zero).

    Args:
        layers: the teacher's classification layers (``nn.Linear`` or ``nn.Conv2d``; one per
            Cascade stage for RoI logits). Referenced, not registered: the teacher stays out of
            the term's parameters and ``state_dict``.
    """

    def __init__(self, layers: Sequence[nn.Module]):
        super().__init__()
        for layer in layers:
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                raise ConfigError(
                    f"head acclimation copies the teacher's classification layer, which must be "
                    f"a Linear or Conv2d layer; this teacher's is a {type(layer).__name__}."
                )
            if getattr(layer, "norm", None) is not None or getattr(layer, "activation", None):
                raise ConfigError(
                    "head acclimation copies the teacher's classification layer, which here has a "
                    "norm or an activation of its own; only plain Linear / Conv2d layers are "
                    "supported."
                )
        self.__dict__["layers"] = list(layers)
        self.weight_offsets = nn.ParameterList(
            [nn.Parameter(torch.zeros_like(layer.weight, device="cpu")) for layer in layers]
        )
        self.bias_offsets = nn.ParameterList(
            [nn.Parameter(torch.zeros(layer.weight.shape[0])) for layer in layers]
        )

    def forward(self, x: Tensor, index: int = 0) -> Tensor:
        """The acclimated layer ``index`` on ``x`` (flattened first for a Linear layer)."""
        layer = self.layers[index]
        weight = layer.weight.float() + self.weight_offsets[index]
        bias = self.bias_offsets[index]
        if layer.bias is not None:
            bias = layer.bias.float() + bias
        if isinstance(layer, nn.Linear):
            return F.linear(x.flatten(start_dim=1) if x.dim() > 2 else x, weight, bias)
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    def penalty(self) -> Tensor:
        """``|theta - teacher|^2`` (logged by tests; the anchor is the KL of the predictions)."""
        return sum(p.square().sum() for p in self.parameters())


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


def acclimation_from_config(a: CN, modes: Dict[str, Callable[[], nn.Module]]) -> dict:
    """The acclimation arguments of a term from ``a``, the values of ``MODEL.DISTILL.ACCLIMATION``
    (a term's ``options.acclimation``): ``acclimation`` (built by ``modes[MODE]``; None when off),
    ``acclimation_schedule``, ``acclimation_lambda`` and ``acclimation_mode``. A term that has no
    acclimation of the configured mode gets none (``modes`` lacks it)."""
    off = {
        "acclimation": None,
        "acclimation_schedule": None,
        "acclimation_lambda": 0.0,
        "acclimation_mode": a.MODE,
    }
    if a.MODE not in ACCLIMATION_MODES:
        raise ConfigError(
            f"MODEL.DISTILL.ACCLIMATION.MODE={a.MODE!r}; expected one of {ACCLIMATION_MODES}"
        )
    if not a.ENABLED or a.MODE not in modes:
        return off
    if a.LAMBDA < 0:
        raise ConfigError(f"MODEL.DISTILL.ACCLIMATION.LAMBDA={a.LAMBDA} must be >= 0")
    try:
        schedule = AcclimationSchedule(a.START_ITER, a.STOP_ITER)
    except ValueError as e:
        raise ConfigError(f"MODEL.DISTILL.ACCLIMATION: {e}") from e
    return {
        "acclimation": modes[a.MODE](),
        "acclimation_schedule": schedule,
        "acclimation_lambda": float(a.LAMBDA),
        "acclimation_mode": a.MODE,
    }


class AcclimatedTerm(DistillTerm):
    """A term whose teacher tensors may pass through DIST+ teacher acclimation (reconstruction).

    While acclimation trains, the loss is computed once on the acclimated (not detached) teacher
    tensor: its gradient w.r.t. the student is the one with the teacher side detached, and its
    gradient w.r.t. the acclimation parameters the one with the student side detached, which are
    the reconstruction's two updates. The anchor is returned as the extra loss
    ``acclimation_anchor``.
    """

    def __init__(
        self,
        *,
        weight,
        acclimation=None,
        acclimation_schedule=None,
        acclimation_lambda=0.0,
        acclimation_mode: str = "output",
    ):
        super().__init__(weight=weight)
        self.acclimation = acclimation
        self.acclimation_schedule = acclimation_schedule
        self.acclimation_lambda = acclimation_lambda
        self.acclimation_mode = acclimation_mode

    def skips_parameters(self) -> bool:
        """Acclimation is unused while ``off`` (before START_ITER) and ``frozen``."""
        s = self.acclimation_schedule
        return self.acclimation is not None and (s.start_iter > 0 or s.stop_iter >= 0)

    def acclimation_phase(self) -> str:
        """``off`` (no acclimation, or before START_ITER), ``train`` or ``frozen``."""
        if self.acclimation is None:
            return "off"
        return self.acclimation_schedule.phase(get_event_storage().iter)

    @staticmethod
    def acclimated(t: Tensor, phase: str, acclimate: Callable[[], Tensor]) -> Tuple[Tensor, bool]:
        """The teacher tensor for the loss and whether the loss must detach it: ``t`` itself
        when off, ``acclimate()`` without gradient when frozen, with gradient when training."""
        if phase == "off":
            return t, True
        if phase == "frozen":
            with torch.no_grad():
                return acclimate(), True
        return acclimate(), False

    def anchor(self, phase: str, kl_pairs: Optional[List[Tuple[Tensor, Tensor, bool]]] = None):
        """The extra losses: ``{"acclimation_anchor": lambda * anchor}`` while acclimation
        trains, else nothing. ``output`` mode: ``|theta - identity|^2`` of the maps; ``head``
        mode: ``KL(teacher || acclimated)`` over ``kl_pairs`` (acclimated logits, the teacher's,
        sigmoid classifier?), summed."""
        if phase != "train":
            return {}
        if self.acclimation_mode == "head":
            value = torch.stack(
                [(binary_kd_loss if binary else kd_loss)(acclimated, teacher)
                 for acclimated, teacher, binary in kl_pairs]  # fmt: skip
            ).sum()
        else:
            maps = [m for m in self.acclimation.modules() if hasattr(m, "penalty")]
            value = torch.stack([m.penalty() for m in maps]).sum()
        return {"acclimation_anchor": value * self.acclimation_lambda}

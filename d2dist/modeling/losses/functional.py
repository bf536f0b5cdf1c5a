"""Distillation losses as pure functions (maths: shared/METHODS.md).

Each returns an unweighted 0-dim float32 tensor, differentiable in the student argument; the
teacher argument is detached. Inputs of any float dtype are computed in float32.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["kd_loss", "binary_kd_loss", "mimic_loss"]


def _as_rows(x: Tensor, name: str) -> Tensor:
    """(N, C) stays; (N, C, H, W) becomes (N*H*W, C)."""
    if x.dim() == 2:
        return x
    if x.dim() == 4:
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    raise ValueError(f"{name} must be (N, C) or (N, C, H, W) logits, got shape {tuple(x.shape)}")


def _check_pair(s: Tensor, t: Tensor, what: str) -> None:
    if s.shape != t.shape:
        raise ValueError(
            f"{what}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must have equal shapes"
        )


def _logit_rows(student_logits: Tensor, teacher_logits: Tensor, tau: float, what: str):
    """Checked float32 (rows, classes) views of a logit pair; the teacher's detached."""
    _check_pair(student_logits, teacher_logits, what)
    if not tau > 0:
        raise ValueError(f"{what}: the temperature tau must be > 0, got {tau}")
    s = _as_rows(student_logits, "student_logits").float()
    t = _as_rows(teacher_logits, "teacher_logits").detach().float()
    return s, t


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

    ``tau^2 * KL(softmax(t / tau) || softmax(s / tau))``, summed over classes and averaged over
    rows. Logits are (N, C), or (N, C, H, W) read as N*H*W rows. An empty batch gives 0.
    """
    s, t = _logit_rows(student_logits, teacher_logits, tau, "kd_loss")
    if s.shape[0] == 0:
        return s.sum() * 0.0
    log_p_s = F.log_softmax(s / tau, dim=1)
    log_p_t = F.log_softmax(t / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    return kl.mean() * tau**2


def binary_kd_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """KD for sigmoid classifiers (dense detectors): per-logit binary KL, summed over channels.

    ``tau^2 * sum_c KL(Bernoulli(sigmoid(t_c / tau)) || Bernoulli(sigmoid(s_c / tau)))``,
    averaged over rows (locations). Shapes as in :func:`kd_loss`.
    """
    s, t = _logit_rows(student_logits, teacher_logits, tau, "binary_kd_loss")
    if s.shape[0] == 0:
        return s.sum() * 0.0
    s, t = s / tau, t / tau
    # KL(p || q) = p (log p - log q) + (1 - p) (log(1 - p) - log(1 - q)), p = sigmoid(t),
    # 1 - p = sigmoid(-t): every log from logsigmoid, so saturated logits keep their precision.
    kl = torch.sigmoid(t) * (F.logsigmoid(t) - F.logsigmoid(s))
    kl = kl + torch.sigmoid(-t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.sum(dim=1).mean() * tau**2


def mimic_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Feature mimicking: ``mean((s - t)^2)`` over all elements of one level.

    The student feature is expected after its adapter (same shape as the teacher's).
    """
    _check_pair(student_feat, teacher_feat, "mimic_loss")
    s, t = student_feat.float(), teacher_feat.detach().float()
    if s.numel() == 0:
        return s.sum() * 0.0
    return F.mse_loss(s, t)

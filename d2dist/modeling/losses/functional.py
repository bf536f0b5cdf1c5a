"""Distillation losses as pure functions (maths: shared/METHODS.md).

Each returns an unweighted 0-dim float32 tensor, differentiable in the student argument; the
teacher argument is detached. Inputs of any float dtype are computed in float32, with autocast
off (under mixed precision, ``SOLVER.AMP``, the student's tensors may be float16 or bfloat16, and
autocast would run matrix products in that precision again).
"""

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "binary_kd_loss",
    "cwd_loss",
    "dist_feature_loss",
    "dist_loss",
    "hcl_loss",
    "kd_loss",
    "mimic_loss",
    "pkd_loss",
    "relation_loss",
]


def _float32(loss):
    """Run ``loss`` with autocast off on the device of its first tensor argument."""

    @functools.wraps(loss)
    def run(*args, **kwargs):
        tensors = (a for x in args for a in (x if isinstance(x, (list, tuple)) else [x]))
        first = next((a for a in tensors if isinstance(a, Tensor)), None)
        off = (
            torch.autocast(first.device.type, enabled=False)
            if first is not None
            else contextlib.nullcontext()
        )
        with off:
            return loss(*args, **kwargs)

    return run


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


def _logit_rows(
    student_logits: Tensor, teacher_logits: Tensor, tau: float, what: str, detach: bool = True
):
    """Checked float32 (rows, classes) views of a logit pair; the teacher's detached."""
    _check_pair(student_logits, teacher_logits, what)
    if not tau > 0:
        raise ValueError(f"{what}: the temperature tau must be > 0, got {tau}")
    s = _as_rows(student_logits, "student_logits").float()
    t = _as_rows(teacher_logits, "teacher_logits").float()
    return s, (t.detach() if detach else t)


@_float32
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


@_float32
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


@_float32
def mimic_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Feature mimicking: ``mean((s - t)^2)`` over all elements of one level.

    The student feature is expected after its adapter (same shape as the teacher's).
    """
    _check_pair(student_feat, teacher_feat, "mimic_loss")
    s, t = student_feat.float(), teacher_feat.detach().float()
    if s.numel() == 0:
        return s.sum() * 0.0
    return F.mse_loss(s, t)


def _pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (rows, cols) -> (rows,).

    The cosine of the mean-centred rows, with ``eps`` added to the product of the norms, so a
    constant row has correlation 0.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@_float32
def relation_loss(s: Tensor, t: Tensor, beta: float, gamma: float) -> Tensor:
    """DIST's relation loss on (rows, columns) predictions that are already normalised:
    ``beta * (1 - mean row correlation) + gamma * (1 - mean column correlation)``.

    Used directly for sigmoid heads (dense DIST), where no softmax or temperature applies.
    """
    if s.shape[0] == 0:
        return s.sum() * 0.0
    inter = 1.0 - _pearson(s, t).mean()
    intra = 1.0 - _pearson(s.t(), t.t()).mean()
    return beta * inter + gamma * intra


@_float32
def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    *,
    detach_teacher: bool = True,
) -> Tensor:
    """Huang et al., "Knowledge Distillation from A Stronger Teacher" (DIST), NeurIPS 2022.

    Relation matching of softmax predictions: ``tau^2 * (beta * L_inter + gamma * L_intra)``
    with ``L_inter = 1 - mean_i rho(Ps[i, :], Pt[i, :])`` (each row over classes) and
    ``L_intra = 1 - mean_j rho(Ps[:, j], Pt[:, j])`` (each class over the rows of the batch),
    ``P = softmax(Z / tau)``. Logits (N, C), or (N, C, H, W) read as N*H*W rows. The intra
    term depends on the rows given together (in d2dist: one GPU's batch). An empty batch gives 0.
    ``detach_teacher=False`` lets gradients reach a trainable teacher-side map (acclimation).
    """
    s, t = _logit_rows(student_logits, teacher_logits, tau, "dist_loss", detach_teacher)
    p_s, p_t = F.softmax(s / tau, dim=1), F.softmax(t / tau, dim=1)
    return relation_loss(p_s, p_t, beta, gamma) * tau**2


@_float32
def dist_feature_loss(
    student_feat: Tensor,
    teacher_feat: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
    normalize: str = "none",
    *,
    detach_teacher: bool = True,
) -> Tensor:
    """Feature-level DIST, as in DIST+ (Huang et al., TPAMI 2025), one FPN level.

    d2dist's documented *reconstruction* (the paper is not openly available and has no public
    code): (N, C, H, W) features become (N*H*W, C) rows; ``L_inter`` correlates each position's
    channel vector, ``L_intra`` each channel over all positions. ``normalize="softmax"``
    applies a softmax over channels with temperature ``tau`` first (and the ``tau^2`` factor);
    ``"none"`` (default) correlates the raw features. ``detach_teacher`` as in :func:`dist_loss`.
    """
    if normalize not in ("none", "softmax"):
        raise ValueError(f"dist_feature_loss: normalize={normalize!r}; use 'none' or 'softmax'")
    if student_feat.dim() != 4:
        raise ValueError(
            f"dist_feature_loss: features must be (N, C, H, W), got {tuple(student_feat.shape)}"
        )
    s, t = _logit_rows(student_feat, teacher_feat, tau, "dist_feature_loss", detach_teacher)
    if normalize == "softmax":  # DIST on the (N*H*W, C) rows
        return dist_loss(s, t, beta, gamma, tau, detach_teacher=detach_teacher)
    return relation_loss(s, t, beta, gamma)


@_float32
def pkd_loss(student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
    """Cao et al., "PKD: General Distillation Framework for Object Detectors via Pearson
    Correlation Coefficient", NeurIPS 2022; one level.

    The student is resized bilinearly to the teacher's size when they differ; each channel of
    both is standardised over all N*H*W positions (unbiased std, 1e-6 added to the std); the
    loss is ``mean((s_hat - t_hat)^2) / 2``.
    """
    if student_feat.dim() != 4 or teacher_feat.dim() != 4:
        raise ValueError(
            f"pkd_loss: features must be (N, C, H, W), got {tuple(student_feat.shape)} and "
            f"{tuple(teacher_feat.shape)}"
        )
    s, t = student_feat.float(), teacher_feat.detach().float()
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    _check_pair(s, t, "pkd_loss (after resizing the student)")
    if s.numel() == 0:
        return s.sum() * 0.0

    def standardise(x: Tensor) -> Tensor:
        rows = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N*H*W)
        mean = rows.mean(dim=1, keepdim=True)
        std = rows.std(dim=1, keepdim=True) if rows.shape[1] > 1 else torch.zeros_like(mean)
        return (rows - mean) / (std + 1e-6)

    return F.mse_loss(standardise(s), standardise(t)) / 2


@_float32
def cwd_loss(student_map: Tensor, teacher_map: Tensor, tau: float = 1.0) -> Tensor:
    """Shu et al., "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021.

    For each (n, c), a softmax over the H*W positions of ``map / tau``;
    ``tau^2 / (N*C) * sum_{n,c} KL(p_t || p_s)`` (a true KL: identical maps give 0).
    """
    if student_map.dim() != 4:
        raise ValueError(f"cwd_loss: maps must be (N, C, H, W), got {tuple(student_map.shape)}")
    _check_pair(student_map, teacher_map, "cwd_loss")
    if not tau > 0:
        raise ValueError(f"cwd_loss: the temperature tau must be > 0, got {tau}")
    n, c, h, w = student_map.shape
    s = student_map.float().reshape(n * c, h * w)
    t = teacher_map.detach().float().reshape(n * c, h * w)
    if s.numel() == 0:
        return s.sum() * 0.0
    log_p_s = F.log_softmax(s / tau, dim=1)
    log_p_t = F.log_softmax(t / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * tau**2 / (n * c)


@_float32
def hcl_loss(student_feats, teacher_feats) -> Tensor:
    """Chen et al., "Distilling Knowledge via Knowledge Review" (ReviewKD), CVPR 2021: the
    hierarchical context loss, summed over levels.

    Per level: ``l = mse(fs, ft)`` with weight 1; for p in (4, 2, 1), skipping ``p >= h`` (the
    student's height at that level), the weight halves and ``mse`` of both maps adaptively
    average-pooled to p x p is added with it; the level's loss is ``l`` over the sum of weights.
    """
    student_feats, teacher_feats = list(student_feats), list(teacher_feats)
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(
            f"hcl_loss: {len(student_feats)} student and {len(teacher_feats)} teacher levels; "
            "give the same non-zero number"
        )
    total = None
    for i, (fs, ft) in enumerate(zip(student_feats, teacher_feats)):
        if fs.dim() != 4:
            raise ValueError(f"hcl_loss: level {i} must be (N, C, H, W), got {tuple(fs.shape)}")
        _check_pair(fs, ft, f"hcl_loss level {i}")
        fs, ft = fs.float(), ft.detach().float()
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for p in (4, 2, 1):
            if p >= fs.shape[2]:
                continue
            weight /= 2.0
            pooled = F.mse_loss(F.adaptive_avg_pool2d(fs, p), F.adaptive_avg_pool2d(ft, p))
            loss = loss + weight * pooled
            weights += weight
        total = loss / weights if total is None else total + loss / weights
    return total

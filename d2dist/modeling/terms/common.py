"""Helpers shared by the loss functions of the terms (maths: docs/methods.md).

Every loss function returns an unweighted 0-dim float32 tensor, differentiable in the student
argument; the teacher argument is detached. Inputs of any float dtype are computed in float32,
with autocast off (under mixed precision, ``SOLVER.AMP``, the student's tensors may be float16
or bfloat16, and autocast would run matrix products in that precision again).
"""

import contextlib
import functools

import torch
from torch import Tensor

__all__ = ["as_rows", "check_pair", "float32_loss", "logit_rows", "pearson"]


def float32_loss(loss):
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


def as_rows(x: Tensor, name: str) -> Tensor:
    """(N, C) stays; (N, C, H, W) becomes (N*H*W, C)."""
    if x.dim() == 2:
        return x
    if x.dim() == 4:
        return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    raise ValueError(f"{name} must be (N, C) or (N, C, H, W) logits, got shape {tuple(x.shape)}")


def check_pair(s: Tensor, t: Tensor, what: str) -> None:
    if s.shape != t.shape:
        raise ValueError(
            f"{what}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must have equal shapes"
        )


def logit_rows(
    student_logits: Tensor, teacher_logits: Tensor, tau: float, what: str, detach: bool = True
):
    """Checked float32 (rows, classes) views of a logit pair; the teacher's detached."""
    check_pair(student_logits, teacher_logits, what)
    if not tau > 0:
        raise ValueError(f"{what}: the temperature tau must be > 0, got {tau}")
    s = as_rows(student_logits, "student_logits").float()
    t = as_rows(teacher_logits, "teacher_logits").float()
    return s, (t.detach() if detach else t)


def pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (rows, cols) -> (rows,).

    The cosine of the mean-centred rows, with ``eps`` added to the product of the norms, so a
    constant row has correlation 0.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

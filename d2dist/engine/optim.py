"""Gradient clipping of the whole model, which Detectron2's optimizer builder lacks."""

import torch

from ..errors import ConfigError

__all__ = ["clip_full_model"]


def clip_full_model(optimizer, max_norm: float, norm_type: float = 2.0):
    """``optimizer``, its ``step`` first clipping the norm of all its parameters' gradients
    together at ``max_norm`` (the way Detectron2 adds its own gradient clipping: a subclass of
    the optimizer's class)."""
    if not max_norm > 0:
        raise ConfigError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE={max_norm}: the largest gradient norm must be > 0"
        )
    base = type(optimizer)

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
        return base.step(self, closure)

    optimizer.__class__ = type(
        base.__name__ + "WithFullModelGradientClipping", (base,), {"step": step}
    )
    return optimizer

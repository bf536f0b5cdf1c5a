"""d2dist's public functional loss API (see :mod:`d2dist.modeling.losses.functional`).

Each function returns an unweighted 0-dim float32 tensor, differentiable in the student
argument, with the teacher side detached.
"""

from .modeling.losses import functional as _functional
from .modeling.losses.functional import *  # noqa: F401,F403

__all__ = list(_functional.__all__)

"""d2dist's public functional loss API (see :mod:`d2dist.modeling.losses.functional`)."""

from .modeling.losses.functional import binary_kd_loss, kd_loss, mimic_loss

__all__ = ["binary_kd_loss", "kd_loss", "mimic_loss"]

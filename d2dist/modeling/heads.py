"""Semantic heads d2dist registers for yacs configs.

:class:`DeepLabV3AuxHead` is Detectron2's ``DeepLabV3Head`` (``detectron2.projects.deeplab``) with
the two parts of the DeepLabV3 of the semantic-segmentation distillation code bases (CIRKD, and
DIST's authors after it, hunto/DIST_KD ``segmentation/models/deeplabv3.py``) that Detectron2's
head lacks:

- ``MODEL.SEM_SEG_HEAD.HEAD_CONV``: a 3x3 conv block (``CONVS_DIM`` to ``CONVS_DIM``, norm, ReLU,
  dropout ``HEAD_DROPOUT``) between the ASPP and the classifier;
- ``MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE`` (e.g. ``"res4"``; ``""`` for none): an auxiliary FCN head
  for training only (3x3 conv to ``AUX_CONV_DIM`` without bias, norm, ReLU, dropout
  ``AUX_DROPOUT``, 1x1 conv to the classes) whose cross-entropy, on its logits resized to the
  labels, is added as ``loss_sem_seg_aux`` weighted ``AUX_LOSS_WEIGHT``. It is not run at test
  time, so the exported student predicts exactly as a ``DeepLabV3Head`` with the block would.

Keys and defaults: :func:`d2dist.config.add_d2dist_deeplab_config`. The classifier stays ``predictor``, so the ``pixel`` target kind distils the main head's logits.
"""

from typing import Dict

import fvcore.nn.weight_init as weight_init
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.projects.deeplab import DeepLabV3Head
from torch import nn

from ..config import DEEPLAB_HEAD_DEFAULTS
from ..errors import ConfigError

__all__ = ["DeepLabV3AuxHead"]


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV3AuxHead(DeepLabV3Head):
    """``DeepLabV3Head`` with an optional 3x3 block before the classifier and an optional
    auxiliary FCN head (training only); see the module docstring."""

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__(cfg, input_shape)
        h = cfg.MODEL.SEM_SEG_HEAD
        # a config made without add_d2dist_deeplab_config (a user's own get_cfg) has neither part
        option = {k: h.get(k, v) for k, v in DEEPLAB_HEAD_DEFAULTS.items()}
        norm, dims = h.NORM, h.CONVS_DIM
        self.block = None
        if option["HEAD_CONV"]:
            if h.ASPP_CHANNELS != dims:
                raise ConfigError(
                    f"MODEL.SEM_SEG_HEAD.HEAD_CONV puts a {dims}-channel block (CONVS_DIM) after "
                    f"the ASPP, whose output has ASPP_CHANNELS={h.ASPP_CHANNELS} channels; set "
                    "both to the same width."
                )
            conv = Conv2d(dims, dims, 3, padding=1, bias=not norm, norm=get_norm(norm, dims),
                          activation=F.relu)  # fmt: skip
            weight_init.c2_msra_fill(conv)
            self.block = nn.Sequential(conv, nn.Dropout(option["HEAD_DROPOUT"]))
        self.aux_in_feature = option["AUX_IN_FEATURE"]
        self.aux_loss_weight = float(option["AUX_LOSS_WEIGHT"])
        self.aux = None
        if self.aux_in_feature:
            if self.aux_in_feature not in input_shape:
                raise ConfigError(
                    f"MODEL.SEM_SEG_HEAD.AUX_IN_FEATURE={self.aux_in_feature!r}, but the "
                    f"backbone gives {sorted(input_shape)}; add it to the backbone's outputs "
                    f"(e.g. MODEL.RESNETS.OUT_FEATURES [{self.aux_in_feature!r}, "
                    f"{self.in_features[0]!r}])."
                )
            width = input_shape[self.aux_in_feature].channels
            aux_dims = option["AUX_CONV_DIM"]
            conv = Conv2d(width, aux_dims, 3, padding=1, bias=False,
                          norm=get_norm(norm, aux_dims), activation=F.relu)  # fmt: skip
            weight_init.c2_msra_fill(conv)
            self.aux = nn.Sequential(conv, nn.Dropout(option["AUX_DROPOUT"]))
            self.aux_predictor = Conv2d(aux_dims, h.NUM_CLASSES, 1)
            nn.init.normal_(self.aux_predictor.weight, 0, 0.001)
            nn.init.constant_(self.aux_predictor.bias, 0)

    def forward(self, features, targets=None):
        x = self.aspp(features[self.in_features[0]])
        if self.block is not None:
            x = self.block(x)
        x = self.predictor(x)
        if not self.training:
            x = F.interpolate(
                x, scale_factor=self.common_stride, mode="bilinear", align_corners=False
            )
            return x, {}
        losses = self.losses(x, targets)
        if self.aux is not None:
            aux = self.aux_predictor(self.aux(features[self.aux_in_feature]))
            aux = F.interpolate(aux, size=targets.shape[-2:], mode="bilinear", align_corners=False)
            losses["loss_sem_seg_aux"] = self.loss(aux, targets) * self.aux_loss_weight
        return None, losses

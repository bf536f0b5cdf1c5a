"""Dilated ResNet-18/34 backbones for DeepLab, which Detectron2's DeepLab project builds only
for bottleneck ResNets (50 and deeper).

``build_resnet_deeplab_basic_backbone`` reads the same keys as the DeepLab project's
``build_resnet_deeplab_backbone`` (``STEM_TYPE``, ``RES4_DILATION``, ``RES5_DILATION``,
``RES5_MULTI_GRID``) and assembles Detectron2's ``ResNet`` from its stems and a basic block with
dilation; parameter names are those of Detectron2's ``BasicBlock``, so converted torchvision
ResNet-18/34 weights (``tools/convert_torchvision_to_d2.py``) load into it.
"""

import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicStem, ResNet
from detectron2.projects.deeplab.resnet import DeepLabStem
from fvcore.nn import weight_init

from ..errors import ConfigError

__all__ = ["DilatedBasicBlock", "build_resnet_deeplab_basic_backbone"]


class DilatedBasicBlock(CNNBlockBase):
    """ResNet's basic block (two 3x3 convolutions and a shortcut) with dilated 3x3 convolutions:
    ``dilation`` for both, or ``first_dilation`` for the first one."""

    def __init__(
        self, in_channels, out_channels, *, stride=1, dilation=1, first_dilation=None, norm="BN"
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride,
                                   bias=False, norm=get_norm(norm, out_channels))  # fmt: skip
        first = dilation if first_dilation is None else first_dilation
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=stride,
                            padding=first, dilation=first, bias=False,
                            norm=get_norm(norm, out_channels))  # fmt: skip
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, stride=1,
                            padding=dilation, dilation=dilation, bias=False,
                            norm=get_norm(norm, out_channels))  # fmt: skip
        for layer in (self.conv1, self.conv2, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)

    def forward(self, x):
        out = self.conv2(F.relu_(self.conv1(x)))
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


@BACKBONE_REGISTRY.register()
def build_resnet_deeplab_basic_backbone(cfg, input_shape):
    """A dilated ResNet-18/34 (``MODEL.RESNETS.DEPTH``) for DeepLab heads.

    res4 is dilated by ``RES4_DILATION`` (1 or 2) and res5 by ``RES5_DILATION`` (1, 2 or 4) times
    ``RES5_MULTI_GRID`` (one factor per res5 block: two for ResNet-18, three for ResNet-34);
    dilated stages keep their input resolution (output stride 16 with RES5_DILATION 2, 8 with
    RES4_DILATION 2 and RES5_DILATION 4). ``HALF_DILATION_IN_FIRST_BLOCK`` (default off): the
    first 3x3 conv of a dilated stage's first block has half the stage's dilation, as the dilated
    ResNets of the segmentation distillation code bases (CIRKD, DIST: ``resnetv1b``).
    """
    r = cfg.MODEL.RESNETS
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}.get(r.DEPTH)
    if blocks is None:
        raise ConfigError(
            f"build_resnet_deeplab_basic_backbone builds ResNet-18/34; MODEL.RESNETS.DEPTH is "
            f"{r.DEPTH}. Use Detectron2's build_resnet_deeplab_backbone for 50 and deeper."
        )
    if r.RES2_OUT_CHANNELS != 64:
        raise ConfigError(f"ResNet-{r.DEPTH} needs MODEL.RESNETS.RES2_OUT_CHANNELS 64")
    if r.RES4_DILATION not in (1, 2) or r.RES5_DILATION not in (1, 2, 4):
        raise ConfigError(
            f"RES4_DILATION {r.RES4_DILATION} / RES5_DILATION {r.RES5_DILATION}: expected 1 or 2 "
            "/ 1, 2 or 4"
        )
    if r.RES4_DILATION == 2 and r.RES5_DILATION != 4:
        raise ConfigError("RES4_DILATION 2 (output stride 8) needs RES5_DILATION 4")
    if len(r.RES5_MULTI_GRID) != blocks[3]:
        raise ConfigError(
            f"MODEL.RESNETS.RES5_MULTI_GRID={list(r.RES5_MULTI_GRID)}: ResNet-{r.DEPTH} has "
            f"{blocks[3]} res5 blocks, so it needs {blocks[3]} factors, e.g. "
            f"{[1, 2, 4][:blocks[3]]}."
        )
    stems = {"basic": BasicStem, "deeplab": DeepLabStem}
    if r.STEM_TYPE not in stems:
        raise ConfigError(f"MODEL.RESNETS.STEM_TYPE={r.STEM_TYPE!r}; expected one of {list(stems)}")
    stem = stems[r.STEM_TYPE](input_shape.channels, r.STEM_OUT_CHANNELS, norm=r.NORM)

    last = max({"res2": 2, "res3": 3, "res4": 4, "res5": 5}[f] for f in r.OUT_FEATURES)
    stages, in_channels, out_channels = [], r.STEM_OUT_CHANNELS, 64
    for idx, stage in enumerate(range(2, last + 1)):
        dilation = {4: r.RES4_DILATION, 5: r.RES5_DILATION}.get(stage, 1)
        n = blocks[idx]
        dilations = [dilation * m for m in r.RES5_MULTI_GRID] if stage == 5 else [dilation] * n
        first_stride = 1 if idx == 0 or dilation > 1 else 2
        firsts = list(dilations)
        if r.get("HALF_DILATION_IN_FIRST_BLOCK", False) and dilation > 1:
            firsts[0] = dilation // 2
        stages.append(
            ResNet.make_stage(
                block_class=DilatedBasicBlock,
                num_blocks=n,
                in_channels=in_channels,
                out_channels=out_channels,
                stride_per_block=[first_stride] + [1] * (n - 1),
                dilation_per_block=dilations,
                first_dilation_per_block=firsts,
                norm=r.NORM,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)

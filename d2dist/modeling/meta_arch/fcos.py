"""Detectron2's FCOS, buildable from a yacs config (``MODEL.META_ARCHITECTURE: "FCOS"``).

Upstream builds FCOS only through LazyConfig and does not register it; this subclass adds a
``from_config`` reading ``MODEL.FCOS`` (see :func:`d2dist.config.add_fcos_config`) and changes
nothing else. ``build_fcos_resnet_fpn_backbone`` is the backbone of upstream's FCOS config
(ResNet + FPN on res3-res5, P6 and P7 computed from P5), which no yacs builder provides.
"""

from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as _FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead

from ...errors import ConfigError

__all__ = ["FCOS", "build_fcos_resnet_fpn_backbone"]


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape):
    """ResNet + FPN (``MODEL.FPN``) whose P6 and P7 come from P5, as in upstream's FCOS config
    (``build_retinanet_resnet_fpn_backbone`` computes them from res5 instead)."""
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return FPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7(out_channels, out_channels, in_feature="p5"),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@META_ARCH_REGISTRY.register()
class FCOS(_FCOS):
    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, cfg):
        f = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [name for name in f.IN_FEATURES if name not in shapes]
        if missing:
            raise ConfigError(
                f"MODEL.FCOS.IN_FEATURES names {missing}, which the backbone does not produce; "
                f"it has {sorted(shapes)}."
            )
        in_shapes = [shapes[name] for name in f.IN_FEATURES]
        head = FCOSHead(
            input_shape=in_shapes,
            conv_dims=[in_shapes[0].channels] * f.NUM_CONVS,
            num_classes=f.NUM_CLASSES,
            norm=f.HEAD_NORM,
            prior_prob=f.PRIOR_PROB,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": list(f.IN_FEATURES),
            "num_classes": f.NUM_CLASSES,
            "center_sampling_radius": f.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": f.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": f.FOCAL_LOSS_GAMMA,
            "test_score_thresh": f.SCORE_THRESH_TEST,
            "test_topk_candidates": f.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": f.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

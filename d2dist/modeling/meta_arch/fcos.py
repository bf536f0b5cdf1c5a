"""Detectron2's FCOS, buildable from a yacs config (``MODEL.META_ARCHITECTURE: "FCOS"``).

Upstream builds FCOS only through LazyConfig and does not register it; this subclass adds a
``from_config`` reading ``MODEL.FCOS`` (see :func:`d2dist.config.add_fcos_config`) and changes
nothing else.
"""

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as _FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead

__all__ = ["FCOS"]


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
            from ...config import ConfigError

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

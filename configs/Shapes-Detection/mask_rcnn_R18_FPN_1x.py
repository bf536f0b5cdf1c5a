# LazyConfig student of the built-in dataset: Mask R-CNN, ResNet-18 + FPN (64 channels), trained
# from scratch with GroupNorm (as faster_rcnn_R18_FPN_1x.yaml, plus a mask head), 600 iterations.
#   python tools/lazyconfig_train_net.py --config-file configs/Shapes-Detection/mask_rcnn_R18_FPN_1x.py
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet

from .common_lazy import dataloader, fit_to_shapes, lr_multiplier, optimizer, train  # noqa: F401

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.pixel_std = [57.375, 57.120, 58.395]  # trained from scratch: standardise the input
model.input_format = "BGR"
model.backbone.bottom_up.freeze_at = 0
model.backbone.bottom_up.stem.norm = "GN"
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="GN")
model.backbone.norm = "GN"
model.backbone.out_channels = 64
fit_to_shapes(model, channels=64)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.mask_head.conv_dims = [64, 64, 64, 64, 64]
train.output_dir = "./output/shapes/mask_rcnn_R18_FPN_1x"

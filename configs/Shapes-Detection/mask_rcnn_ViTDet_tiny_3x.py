# A ViTDet-style teacher for the built-in dataset (Li et al., ECCV 2022, as Detectron2's
# projects/ViTDet and common/models/mask_rcnn_vitdet.py): a plain ViT (patch 16, 4 blocks of width
# 96, global attention with relative positions) and a SimpleFeaturePyramid (p2-p6, 64 channels,
# LayerNorm) under a Mask R-CNN with 4conv1fc box head, RGB input with ImageNet statistics,
# trained from scratch for 1800 iterations (3x the students' schedule).
#   python tools/lazyconfig_train_net.py --config-file configs/Shapes-Detection/mask_rcnn_ViTDet_tiny_3x.py
from functools import partial

import torch.nn as nn
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling import SimpleFeaturePyramid, ViT
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from .common_lazy import SIZE, dataloader, fit_to_shapes, optimizer, schedule, train  # noqa: F401

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
model.backbone = L(SimpleFeaturePyramid)(
    net=L(ViT)(
        img_size=SIZE,
        patch_size=16,
        embed_dim=96,
        depth=4,
        num_heads=3,
        drop_path_rate=0.0,
        window_size=0,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        pretrain_img_size=SIZE,
        pretrain_use_cls_token=False,
        out_feature="last_feat",
    ),
    in_feature="${.net.out_feature}",
    out_channels=64,
    scale_factors=(4.0, 2.0, 1.0, 0.5),
    top_block=L(LastLevelMaxPool)(),
    norm="LN",
    square_pad=SIZE,
)
fit_to_shapes(model, channels=64)
model.roi_heads.box_head.conv_dims = [64, 64, 64, 64]
model.roi_heads.box_head.fc_dims = [256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.mask_head.conv_dims = [64, 64, 64, 64, 64]
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows the train mapper's

optimizer = model_zoo.get_config("common/optim.py").AdamW  # as ViTDet
optimizer.lr = 4e-4
train.max_iter = 1800
lr_multiplier = schedule(train.max_iter)
train.output_dir = "./output/shapes/mask_rcnn_ViTDet_tiny_3x"

# The ViTDet teacher of the COCO LazyConfig recipes (Li et al., "Exploring Plain Vision Transformer
# Backbones for Object Detection", ECCV 2022): Detectron2's ViTDet Mask R-CNN with a ViT-B backbone
# and a SimpleFeaturePyramid (common/models/mask_rcnn_vitdet.py of its model zoo), RGB input,
# 1024x1024 large-scale-jitter training; Detectron2's released model has 51.6 box / 45.9 mask AP
# (projects/ViTDet). d2dist uses it as a teacher (structure + the released weights); its schedule
# and optimizer are ViTDet's 100-epoch recipe, and init_checkpoint names the released model, so
# `lazyconfig_train_net.py --eval-only` evaluates the teacher as it is.
from functools import partial

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

# Large-scale jitter at 1024 px, as ViTDet trains and evaluates (its SimpleFeaturePyramid pads
# every image to a 1024x1024 square).
IMAGE_SIZE = 1024
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(
        min_scale=0.1, max_scale=2.0, target_height=IMAGE_SIZE, target_width=IMAGE_SIZE
    ),
    L(T.FixedSizeCrop)(crop_size=(IMAGE_SIZE, IMAGE_SIZE), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=IMAGE_SIZE, max_size=IMAGE_SIZE),
]

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.max_iter = 184375  # 100 epochs of 64 images
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[163889, 177546], num_updates=train.max_iter
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
train.init_checkpoint = (
    "detectron2://ViTDet/COCO/mask_rcnn_vitdet_b/f325346929/model_final_61ccd1.pkl"
)
train.output_dir = "./output/coco/mask_rcnn_ViTDet_B_100ep"

# LazyConfig distillation on COCO from a stronger teacher of another kind: Detectron2's ViTDet
# ViT-B Mask R-CNN (mask_rcnn_ViTDet_B_100ep.py, 51.6 box AP, RGB) into a Mask R-CNN R50-FPN
# student (ImageNet R-50, BGR) with the DIST+ reconstruction (DIST on RoI logits + DIST on p2-p6
# features: the DIST+ paper is not openly available, see docs/), 1x schedule (90k iterations of 16
# images). The student trains on the teacher's 1024 px large-scale-jitter crops: the teacher sees
# exactly the student's augmented images, and its SimpleFeaturePyramid needs them within
# 1024x1024. Untrained here (no COCO on this machine): no result is claimed.
#   python tools/lazyconfig_train_net.py --config-file configs/COCO-InstanceSegmentation/distplus_mask_rcnn_R50_from_ViTDet_B_LSJ_1x.py --num-gpus 8
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from d2dist.modeling import Distiller, TermSpec, teacher_from_file

from .mask_rcnn_ViTDet_B_100ep import dataloader

student = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model  # R50-FPN, BGR
dataloader.train.mapper.image_format = "BGR"  # the student's; the teacher gets them as RGB
dataloader.train.total_batch_size = 16

model = L(Distiller)(
    student=student,
    teacher=L(teacher_from_file)(
        config_file="d2dist://configs/COCO-InstanceSegmentation/mask_rcnn_ViTDet_B_100ep.py",
        weights="detectron2://ViTDet/COCO/mask_rcnn_vitdet_b/f325346929/model_final_61ccd1.pkl",
    ),
    terms=[
        L(TermSpec)(name="DIST", weight=1.0, target="roi"),
        L(TermSpec)(name="DIST_FEATURE", weight=1.0, in_features=["p2", "p3", "p4", "p5", "p6"]),
    ],
    input_format="BGR",
)

optimizer = model_zoo.get_config("common/optim.py").SGD
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x
train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"  # the student's
train.max_iter = 90000
train.output_dir = "./output/coco/distplus_mask_rcnn_R50_from_ViTDet_B_LSJ_1x"

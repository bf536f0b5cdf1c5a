# LazyConfig distillation on the built-in dataset: the DIST+ reconstruction (DIST on RoI logits +
# DIST on p2-p6 features; the DIST+ paper is not openly available, see docs) from the ViTDet-style
# tiny teacher (mask_rcnn_ViTDet_tiny_3x.py: RGB, ViT + SimpleFeaturePyramid) into the LazyConfig
# Mask R-CNN R18-FPN student (mask_rcnn_R18_FPN_1x.py: BGR), with the student's schedule.
# Train the teacher first (its run writes the weights named below), then:
#   python tools/lazyconfig_train_net.py --config-file configs/Shapes-Detection/distplus_mask_rcnn_R18_from_ViTDet_tiny_1x.py
from detectron2.config import LazyCall as L

from d2dist.modeling import Distiller, TermSpec, teacher_from_file

from .mask_rcnn_R18_FPN_1x import dataloader, lr_multiplier  # noqa: F401
from .mask_rcnn_R18_FPN_1x import model as student
from .mask_rcnn_R18_FPN_1x import optimizer, train

model = L(Distiller)(
    student=student,
    teacher=L(teacher_from_file)(
        # d2dist:// names the checkout, or the working directory of an installed d2dist (but
        # d2dist://configs: the package's), wherever this run starts (d2dist/file_io.py)
        config_file="d2dist://configs/Shapes-Detection/mask_rcnn_ViTDet_tiny_3x.py",
        weights="d2dist://output/shapes/mask_rcnn_ViTDet_tiny_3x/model_final.pth",
    ),
    terms=[
        L(TermSpec)(name="DIST", weight=1.0, target="roi"),
        L(TermSpec)(name="DIST_FEATURE", weight=1.0, in_features=["p2", "p3", "p4", "p5", "p6"]),
    ],
    input_format="BGR",
)
train.output_dir = "./output/shapes/distplus_mask_rcnn_R18_from_ViTDet_tiny_1x"

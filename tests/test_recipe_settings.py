"""The shipped COCO and Cityscapes recipes carry the authors' settings where docs/recipes.md says
they do: one row per kind of difference the recipe audit fixed (schedule length, the authors'
students, teachers and the README's targets, the Cityscapes DeepLabV3 setting, loss settings).
Config files only: nothing is built (tests/test_recipes.py runs every recipe)."""

import os
import re

import pytest

from d2dist.config import get_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHVISION_R50 = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"
IMAGENET_RGB = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])


def _cfg(path):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", path))
    return cfg


# the recipes whose authors trained 24 epochs (DIST, MGD, FGD, CrossKD)
TWO_X = [
    "COCO-Detection/dist_faster_rcnn_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/dist_mimic_faster_rcnn_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/dist_retinanet_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/dist_mimic_retinanet_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/mgd_faster_rcnn_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/mgd_retinanet_R50_from_R101_FPN_2x.yaml",
    "COCO-InstanceSegmentation/mgd_mask_rcnn_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/fgd_faster_rcnn_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/fgd_retinanet_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/fgd_fcos_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/crosskd_retinanet_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/crosskd_pkd_retinanet_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/crosskd_fcos_R50_from_R101_FPN_2x.yaml",
    "COCO-Detection/crosskd_pkd_fcos_R50_from_R101_FPN_2x.yaml",
]


@pytest.mark.parametrize("recipe", TWO_X)
def test_schedule_length_is_the_authors_24_epochs(recipe):
    s = _cfg(recipe).SOLVER
    assert (s.IMS_PER_BATCH, s.MAX_ITER, tuple(s.STEPS)) == (16, 175920, (117280, 161260))
    assert s.WARMUP_ITERS == 500


@pytest.mark.parametrize("recipe", [r for r in TWO_X if "fcos" not in r])
def test_students_are_the_authors_mmdetection_students(recipe):
    cfg = _cfg(recipe)
    assert cfg.MODEL.WEIGHTS == TORCHVISION_R50 and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert cfg.INPUT.FORMAT == "RGB"
    assert (cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD) == IMAGENET_RGB
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (800,) and cfg.INPUT.MAX_SIZE_TRAIN == 1333
    assert cfg.SOLVER.BASE_LR == (0.01 if "retinanet" in recipe else 0.02)


@pytest.mark.parametrize("recipe", [r for r in TWO_X if "fcos" in r])
def test_fcos_students_and_teacher_are_the_authors(recipe):
    cfg = _cfg(recipe)
    s = cfg.SOLVER
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (640, 800) and s.BIAS_LR_FACTOR == 2.0
    assert s.WEIGHT_DECAY_BIAS == 0.0 and s.WARMUP_FACTOR == pytest.approx(1 / 3)
    teacher = _cfg("COCO-Detection/fcos_R101_FPN_2x.yaml")
    assert teacher.SOLVER.MAX_ITER == 175920 and teacher.SOLVER.CLIP_GRADIENTS.ENABLED
    assert teacher.MODEL.FCOS.CENTER_SAMPLING_RADIUS > 1000  # plain FCOS, as mmdetection's
    if "crosskd" in recipe:  # the CrossKD authors' student: plain FCOS, caffe mean
        assert cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS > 1000
        assert cfg.MODEL.PIXEL_MEAN == [102.9801, 115.9465, 122.7717]


@pytest.mark.parametrize(
    "recipe, clipped",
    [("COCO-Detection/crosskd_retinanet_R50_from_R101_FPN_1x.yaml", False),
     ("COCO-Detection/crosskd_retinanet_R50_from_R101_FPN_2x.yaml", False),
     ("COCO-Detection/crosskd_fcos_R50_from_R101_FPN_2x.yaml", True),
     ("COCO-Detection/mgd_faster_rcnn_R50_from_R101_FPN_2x.yaml", True),
     ("COCO-Detection/fgd_retinanet_R50_from_R101_FPN_2x.yaml", True)],
)  # fmt: skip
def test_gradient_clipping_is_the_authors(recipe, clipped):
    clip = _cfg(recipe).SOLVER.CLIP_GRADIENTS
    assert clip.ENABLED == clipped
    if clipped:
        assert (clip.CLIP_TYPE, clip.CLIP_VALUE) == ("full_model", 35.0)


def test_loss_settings_the_audit_fixed():
    mimic = _cfg("COCO-Detection/dist_mimic_faster_rcnn_R50_from_R101_FPN_2x.yaml")
    assert mimic.MODEL.DISTILL.MIMIC.ADAPTER == "TorchInitConv1x1Adapter"  # their align_module
    fgd = _cfg("COCO-Detection/fgd_faster_rcnn_R50_from_R101_FPN_2x.yaml").MODEL.DISTILL
    assert fgd.FGD.MASK_MODE == "image"
    assert fgd.INHERIT == ["backbone.fpn_", "proposal_generator", "roi_heads"]
    crosskd = _cfg("COCO-Detection/crosskd_retinanet_R50_from_R101_FPN_2x.yaml")
    assert crosskd.MODEL.BACKBONE.NAME == "build_fcos_resnet_fpn_backbone"  # P6 from P5
    reviewkd = _cfg("COCO-Detection/reviewkd_retinanet_R50_from_R101_FPN_1x.yaml")
    assert reviewkd.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA == 0.1
    for recipe in (
        "COCO-Detection/reviewkd_faster_rcnn_R18_from_R101_FPN_1x.yaml",
        "COCO-InstanceSegmentation/reviewkd_mask_rcnn_R18_from_R101_FPN_1x.yaml",
    ):
        cfg = _cfg(recipe)  # the authors' R18 statistics, and their teacher's input
        assert cfg.MODEL.PIXEL_STD == [57.375, 57.12, 58.395]
        assert cfg.MODEL.DISTILL.TEACHER.OPTS == ["MODEL.PIXEL_MEAN", "[123.675, 116.280, 103.530]"]
    baseline = _cfg("COCO-Detection/faster_rcnn_R18_FPN_1x.yaml")  # shared: torchvision's
    assert (baseline.MODEL.PIXEL_MEAN, baseline.MODEL.PIXEL_STD) == IMAGENET_RGB


def test_cityscapes_deeplab_v3_is_the_dist_authors_setting():
    cfg = _cfg("Cityscapes/dist_deeplab_v3_R18_from_R103_OS8_40k.yaml")
    r, h, s = cfg.MODEL.RESNETS, cfg.MODEL.SEM_SEG_HEAD, cfg.SOLVER
    assert (r.RES4_DILATION, r.RES5_DILATION, h.COMMON_STRIDE) == (2, 4, 8)  # output stride 8
    assert r.HALF_DILATION_IN_FIRST_BLOCK  # resnetv1b
    assert (r.STEM_TYPE, r.STEM_OUT_CHANNELS, cfg.INPUT.FORMAT) == ("deeplab", 128, "BGR")
    assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]  # the authors' deep-stem weights and input
    assert h.NAME == "DeepLabV3AuxHead" and h.HEAD_CONV and h.ASPP_CHANNELS == 128
    assert (h.AUX_IN_FEATURE, h.AUX_CONV_DIM, h.AUX_LOSS_WEIGHT) == ("res4", 64, 0.4)
    assert (s.MAX_ITER, s.BASE_LR, s.WARMUP_ITERS, s.WEIGHT_DECAY) == (40000, 0.02, 0, 5e-4)
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert len(cfg.INPUT.MIN_SIZE_TRAIN) == 16  # the authors' scales 0.5, 0.6, ..., 2.0
    baseline = _cfg("Cityscapes/deeplab_v3_R18_OS8_40k.yaml")
    assert baseline.SOLVER.WEIGHT_DECAY == 1e-4
    # Detectron2's published DeepLabV3 R103 (78.5 mIoU), not one to train
    assert cfg.MODEL.DISTILL.TEACHER.WEIGHTS.startswith("detectron2://DeepLab/Cityscapes-")


# The teachers whose published pair a paper reports with the same teacher (ReviewKD's authors
# used Detectron2's R101-FPN 3x): the README may quote a paper's number only for those.
SAME_PAIR_TEACHERS = {
    "detectron2://COCO-Detection/faster_rcnn_R_101_FPN_3x/137851257/model_final_f6e8b1.pkl",
}


def test_the_readme_quotes_paper_numbers_only_for_recipes_of_the_papers_pair():
    with open(os.path.join(REPO, "docs", "configs.md")) as f:
        readme = f.read()
    section = readme[readme.index("### Recipes for COCO and Cityscapes (GPU)") :]
    section = section[: section.index("\n### ", 5)]
    rows = [line for line in section.splitlines() if re.search(r"\d+\.\d+ -> \d+\.\d+", line)]
    assert rows, "the section quotes the recipes that match a paper"
    for row in rows:
        recipe = re.search(r"`([\w-]+/[\w]+)`", row).group(1)
        cfg = _cfg(recipe + ".yaml")
        assert cfg.MODEL.DISTILL.TEACHER.WEIGHTS in SAME_PAIR_TEACHERS, row
        assert recipe.startswith("COCO-Detection/reviewkd_"), row

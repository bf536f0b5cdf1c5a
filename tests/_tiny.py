"""Tiny models of every meta-architecture d2dist supports, and random inputs for them.

Students are ResNet-18 (FPN width 16) or narrow ResNet-50 (DeepLab, which needs bottlenecks);
teachers are narrow ResNet-50s of another width, so teacher and student differ in depth and/or
width everywhere. All run on the CPU in well under a second per step at 64x64 px.
"""

import os

import torch
from detectron2.structures import BitMasks, Boxes, Instances

from d2dist.config import get_cfg

NUM_CLASSES = 3  # thing classes
NUM_SEM = 4  # semantic classes
SIZE = 64

ARCHS = (
    "faster_rcnn",
    "mask_rcnn",
    "cascade_rcnn",
    "retinanet",
    "fcos",
    "panoptic_fpn",
    "semantic_fpn",
    "deeplab_v3",
    "deeplab_v3plus",
)
META = {
    "faster_rcnn": "GeneralizedRCNN",
    "mask_rcnn": "GeneralizedRCNN",
    "cascade_rcnn": "GeneralizedRCNN",
    "retinanet": "RetinaNet",
    "fcos": "FCOS",
    "panoptic_fpn": "PanopticFPN",
    "semantic_fpn": "SemanticSegmentor",
    "deeplab_v3": "SemanticSegmentor",
    "deeplab_v3plus": "SemanticSegmentor",
}
DEEPLAB = ("deeplab_v3", "deeplab_v3plus")

# Overrides that make the Shapes-Detection configs tiny: the tiny built-in dataset on the CPU, and
# narrow widths with BatchNorm instead of the configs' GroupNorm (which needs >= 32 channels).
SHAPES_TINY_DATA = [
    "MODEL.DEVICE", "cpu",
    "DATASETS.TRAIN", "('d2dist_shapes_tiny_train',)",
    "DATASETS.TEST", "('d2dist_shapes_tiny_val',)",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
]  # fmt: skip
_SHAPES_NORMS = ["MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", ""]
SHAPES_TEACHER_TINY = _SHAPES_NORMS + [
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
]  # fmt: skip
# The tiny built-in dataset for LazyConfig runs (configs/Shapes-Detection/*.py), as key=value.
LAZY_TINY_DATA = [
    "train.device=cpu", "dataloader.train.dataset.names=d2dist_shapes_tiny_train",
    "dataloader.test.dataset.names=d2dist_shapes_tiny_val", "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
]  # fmt: skip
SHAPES_STUDENT_TINY = _SHAPES_NORMS + [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "16",
]  # fmt: skip


def _backbone(cfg, arch: str, role: str) -> None:
    r = cfg.MODEL.RESNETS
    r.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if arch in DEEPLAB:
        cfg.MODEL.BACKBONE.NAME = "build_resnet_deeplab_backbone"
        r.DEPTH = 50
        r.STEM_TYPE = "deeplab"
        r.STEM_OUT_CHANNELS = 8 if role == "student" else 16
        r.RES2_OUT_CHANNELS = 16 if role == "student" else 32
        r.WIDTH_PER_GROUP = 4 if role == "student" else 8
        r.RES5_DILATION = 2
        r.OUT_FEATURES = ["res2", "res5"] if arch == "deeplab_v3plus" else ["res5"]
        return
    if role == "student":
        r.DEPTH, r.RES2_OUT_CHANNELS, r.STEM_OUT_CHANNELS = 18, 64, 16
    else:
        r.DEPTH, r.RES2_OUT_CHANNELS, r.STEM_OUT_CHANNELS, r.WIDTH_PER_GROUP = 50, 32, 16, 8
    cfg.MODEL.FPN.OUT_CHANNELS = 16 if role == "student" else 32
    r.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    if arch in ("retinanet", "fcos"):
        cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
        r.OUT_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    else:
        cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"


def tiny_cfg(arch: str, role: str = "student"):
    """A plain Detectron2 config of a tiny ``arch`` model (``role``: student or teacher)."""
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = META[arch]
    cfg.MODEL.PIXEL_STD = [57.0, 57.0, 58.0]
    cfg.INPUT.FORMAT = "BGR"
    _backbone(cfg, arch, role)
    if META[arch] in ("GeneralizedRCNN", "PanopticFPN"):
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
        cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
        cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
        cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
        cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
        cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
        cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
        cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
        cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16 if role == "student" else 32
        cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
        cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 1
        cfg.TEST.DETECTIONS_PER_IMAGE = 10
    if arch in ("mask_rcnn", "panoptic_fpn"):
        cfg.MODEL.MASK_ON = True
        cfg.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
        cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
        cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
        cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 4
    if arch == "cascade_rcnn":
        cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    if arch == "retinanet":
        cfg.MODEL.RETINANET.NUM_CLASSES = NUM_CLASSES
        cfg.MODEL.RETINANET.NUM_CONVS = 1
        cfg.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
        cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8, 12], [16, 24], [32, 48], [64, 96], [128, 192]]
        cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
    if arch == "fcos":
        cfg.MODEL.FCOS.NUM_CLASSES = NUM_CLASSES
        cfg.MODEL.FCOS.NUM_CONVS = 1
        cfg.MODEL.FCOS.HEAD_NORM = ""
    if arch in ("panoptic_fpn", "semantic_fpn"):
        h = cfg.MODEL.SEM_SEG_HEAD
        h.NAME = "SemSegFPNHead"
        h.IN_FEATURES = ["p2", "p3", "p4", "p5"]
        h.CONVS_DIM = 8 if role == "student" else 16
        h.NORM = ""
        h.COMMON_STRIDE = 4
        h.NUM_CLASSES = NUM_SEM if arch == "semantic_fpn" else 2  # panoptic: stuff + "things"
        h.IGNORE_VALUE = 255
    if arch in DEEPLAB:
        h = cfg.MODEL.SEM_SEG_HEAD
        h.NUM_CLASSES = NUM_SEM
        h.IGNORE_VALUE = 255
        h.NORM = ""
        h.ASPP_CHANNELS = h.CONVS_DIM = 8 if role == "student" else 16
        h.ASPP_DILATIONS = [2, 4, 6]
        h.ASPP_DROPOUT = 0.0
        h.LOSS_TYPE = "cross_entropy"
        h.COMMON_STRIDE = 16
        h.NAME = "DeepLabV3Head"
        h.IN_FEATURES = ["res5"]
        if arch == "deeplab_v3plus":
            h.NAME = "DeepLabV3PlusHead"
            h.IN_FEATURES = ["res2", "res5"]
            h.PROJECT_FEATURES = ["res2"]
            h.PROJECT_CHANNELS = [4]
            h.COMMON_STRIDE = 4
    return cfg


def write_teacher(tmp_dir: str, arch: str, **overrides):
    """Write a tiny teacher's config and a checkpoint of its (random) weights; return both paths.

    ``overrides`` are ``KEY=value`` pairs with dots written as ``__``.
    """
    from detectron2.modeling import build_model

    cfg = tiny_cfg(arch, role="teacher")
    for key, value in overrides.items():
        node, *path = key.split("__")
        target = cfg
        for part in [node, *path[:-1]]:
            target = target[part]
        target[path[-1]] = value
    cfg_path = os.path.join(tmp_dir, f"teacher_{arch}.yaml")
    with open(cfg_path, "w") as f:
        f.write(cfg.dump())
    torch.manual_seed(1)
    model = build_model(cfg)
    _calibrate_batchnorm(model, arch)
    weights = os.path.join(tmp_dir, f"teacher_{arch}.pth")
    torch.save({"model": model.state_dict()}, weights)
    return cfg_path, weights


def _calibrate_batchnorm(model, arch: str) -> None:
    """Set BatchNorm running statistics from one batch, as a trained teacher would have them."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        images = torch.stack([x["image"] for x in inputs(arch, n=4, seed=7, annotated=False)])
        model.backbone((images - model.pixel_mean) / model.pixel_std)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def distill_cfg(arch: str, teacher_cfg: str, teacher_weights: str, losses=("MIMIC", "KD")):
    """A Distiller config: the tiny ``arch`` student taught by the given teacher."""
    cfg = tiny_cfg(arch, role="student")
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = cfg.MODEL.META_ARCHITECTURE
    cfg.MODEL.META_ARCHITECTURE = "Distiller"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = teacher_cfg
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = teacher_weights
    cfg.MODEL.DISTILL.LOSSES = list(losses)
    cfg.MODEL.DISTILL.MIMIC.IN_FEATURES = feature_names(arch)
    return cfg


def shapes_distill_opts(teacher_weights: str) -> list:
    """``KEY VALUE`` overrides that make a Shapes-Detection distillation config tiny: the tiny
    dataset, the tiny student, and the tiny teacher with weights ``teacher_weights``."""
    return [
        *SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY,
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher_weights,
        "MODEL.DISTILL.TEACHER.OPTS", str(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY),
    ]  # fmt: skip


def save_random_weights(config_file: str, opts, path: str, seed: int = 0) -> str:
    """Save the (random, seeded) weights of the plain Detectron2 model of a yacs config file with
    ``KEY VALUE`` overrides ``opts``, as a checkpoint at ``path``; returns ``path``."""
    from detectron2.config import get_cfg as d2_get_cfg
    from detectron2.modeling import build_model

    cfg = d2_get_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    torch.manual_seed(seed)
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def extract_targets(model, batch):
    """One step's targets of a Distiller (training mode, seeded) and its student's recorder."""
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model.train()
    with EventStorage(0):
        with model.extractor.student_recorder() as rec:
            model.student(batch)
        return model.extractor.extract(batch, rec), rec


def with_and_without_head_acclimation(cfg):
    """Two Distillers of ``cfg`` built from the same seed: with DIST's head acclimation (DIST+,
    ``ACCLIMATION.MODE head``) and without it."""
    cfg = cfg.clone()
    cfg.MODEL.DISTILL.ACCLIMATION.ENABLED = True
    cfg.MODEL.DISTILL.ACCLIMATION.MODE = "head"
    torch.manual_seed(0)
    head = build_distiller(cfg)
    cfg.MODEL.DISTILL.ACCLIMATION.ENABLED = False
    torch.manual_seed(0)
    return head, build_distiller(cfg)


def build_distiller(cfg):
    """``build_model(cfg)`` of a Distiller config with its teacher's weights loaded, as d2dist's
    trainers do in ``resume_or_load`` (building reads no weights)."""
    from detectron2.modeling import build_model

    return build_model(cfg).load_teacher()


def feature_names(arch: str):
    if arch == "deeplab_v3":
        return ["res5"]
    if arch == "deeplab_v3plus":
        return ["res2", "res5"]
    if arch in ("retinanet", "fcos"):
        return ["p3", "p4", "p5", "p6", "p7"]
    return ["p2", "p3", "p4", "p5", "p6"]


def inputs(arch: str, n: int = 2, seed: int = 0, annotated: bool = True):
    """A random batch in Detectron2's input format, with the annotations ``arch`` trains on."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        x = {"image": torch.randint(0, 256, (3, SIZE, SIZE), generator=g).float(),
             "height": SIZE, "width": SIZE}  # fmt: skip
        if annotated:
            inst = Instances((SIZE, SIZE))
            xy = torch.randint(0, SIZE // 2, (2, 2), generator=g).float()
            wh = torch.randint(12, SIZE // 2, (2, 2), generator=g).float()
            inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
            inst.gt_classes = torch.randint(0, NUM_CLASSES, (2,), generator=g)
            masks = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.long().tolist()):
                masks[i, y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(masks)
            x["instances"] = inst
            num_sem = 2 if arch == "panoptic_fpn" else NUM_SEM
            x["sem_seg"] = torch.randint(0, num_sem, (SIZE, SIZE), generator=g)
        batch.append(x)
    return batch

"""Detectron2's built-in COCO and Cityscapes datasets, in their real on-disk formats, through
``tools/train_net.py --eval-only`` and the official evaluators.

Tiny datasets are written under the test session's ``$DETECTRON2_DATASETS`` exactly as
datasets/README.md lays them out (COCO JSON; Cityscapes ``leftImg8bit`` / ``gtFine`` with polygons
JSON, label-id and instance-id PNGs, and train-id PNGs made by cityscapesscripts' own preparation
script). A ground-truth oracle model, which reads the annotation files, must score 100.
"""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from _tools import load_tool
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, BoxMode, Instances
from torch import nn

from d2dist.data.real_formats import (
    TINY_HEIGHT,
    TINY_WIDTH,
    write_tiny_cityscapes,
    write_tiny_coco,
)
from d2dist.engine import argument_parser

pytestmark = pytest.mark.slow  # training and official evaluation on datasets in the real layouts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = TINY_HEIGHT, TINY_WIDTH


@META_ARCH_REGISTRY.register()
class GroundTruthOracle(nn.Module):
    """Predicts the ground truth of its test dataset, read from the dataset's own files."""

    def __init__(self, cfg):
        super().__init__()
        self.meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        self.register_buffer("_device", torch.zeros(0), persistent=False)

    def forward(self, batched_inputs):
        kind = self.meta.evaluator_type
        return [getattr(self, f"_{kind}")(x) for x in batched_inputs]

    def _instances(self, masks: np.ndarray, classes) -> dict:
        masks = torch.as_tensor(masks, dtype=torch.bool).reshape(-1, H, W)
        boxes = []
        for m in masks:
            ys, xs = torch.nonzero(m, as_tuple=True)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        inst = Instances((H, W))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.pred_masks = masks
        inst.pred_classes = torch.as_tensor(classes, dtype=torch.int64)
        inst.scores = torch.ones(len(masks))
        return {"instances": inst}

    def _coco(self, x):
        from pycocotools.coco import COCO

        coco = COCO(self.meta.json_file)
        image = next(i for i in coco.imgs.values() if x["file_name"].endswith(i["file_name"]))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        to_contiguous = self.meta.thing_dataset_id_to_contiguous_id
        out = self._instances(
            np.stack([coco.annToMask(a) for a in anns]),
            [to_contiguous[a["category_id"]] for a in anns],
        )
        # COCO boxes are the annotated ones (not the masks' extent)
        boxes = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns]
        out["instances"].pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        return out

    @staticmethod
    def _gt(x, suffix: str) -> np.ndarray:
        path = x["file_name"].replace("leftImg8bit/", "gtFine/").replace("_leftImg8bit.png", suffix)
        return cv2.imread(path, cv2.IMREAD_UNCHANGED)

    def _cityscapes_instance(self, x):
        from cityscapesscripts.helpers.labels import id2label

        ids = self._gt(x, "_gtFine_instanceIds.png").astype(np.int64)
        instances = [v for v in np.unique(ids) if v >= 1000]
        classes = [self.meta.thing_classes.index(id2label[v // 1000].name) for v in instances]
        return self._instances(np.stack([ids == v for v in instances]), classes)

    def _sem_seg_logits(self, labels: np.ndarray, num_classes: int) -> dict:
        labels = torch.as_tensor(labels.astype(np.int64))
        labels[labels >= num_classes] = 0  # ignored pixels: any class
        logits = torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1).float()
        return {"sem_seg": logits}

    def _cityscapes_sem_seg(self, x):
        return self._sem_seg_logits(self._gt(x, "_gtFine_labelTrainIds.png"), 19)

    def _sem_seg(self, x):
        # the test-time mapper drops sem_seg_file_name: find it in the dataset's records
        records = DatasetCatalog.get(self.meta.name)
        path = next(r["sem_seg_file_name"] for r in records if r["file_name"] == x["file_name"])
        labels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        return self._sem_seg_logits(labels, len(self.meta.stuff_classes))


@pytest.fixture(scope="module")
def real_datasets(datasets_root):
    write_tiny_coco(datasets_root)
    write_tiny_cityscapes(datasets_root)
    return datasets_root


def _eval_only(dataset: str, tmp_path) -> dict:
    os.makedirs(tmp_path, exist_ok=True)
    weights = str(tmp_path / "oracle.pth")
    torch.save({"model": {}}, weights)
    module = load_tool("train_net")
    args = argument_parser().parse_args(
        [
            "--config-file", os.path.join(REPO, "configs", "Base-RCNN-FPN.yaml"), "--eval-only",
            "MODEL.META_ARCHITECTURE", "GroundTruthOracle", "MODEL.DEVICE", "cpu",
            "MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{dataset}',)",
            "INPUT.MIN_SIZE_TEST", str(H), "INPUT.MAX_SIZE_TEST", str(W),
            "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"),
        ]  # fmt: skip
    )
    return module.main(args)


def test_coco_evaluator_on_the_coco_layout(real_datasets, tmp_path):
    results = _eval_only("coco_2017_val", tmp_path)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)


def test_cityscapes_instance_evaluator_on_the_cityscapes_layout(real_datasets, tmp_path):
    results = _eval_only("cityscapes_fine_instance_seg_val", tmp_path)
    assert results["segm"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP50"] == pytest.approx(100.0)


def test_cityscapes_sem_seg_evaluator_on_the_cityscapes_layout(real_datasets, tmp_path):
    results = _eval_only("cityscapes_fine_sem_seg_val", tmp_path)
    assert results["sem_seg"]["IoU"] == pytest.approx(100.0)


def test_sem_seg_evaluator_on_the_builtin_dataset(tmp_path):
    results = _eval_only("d2dist_shapes_tiny_val_sem_seg", tmp_path)
    assert results["sem_seg"]["mIoU"] == pytest.approx(100.0)


def test_the_evaluators_see_a_worse_model(real_datasets, tmp_path, monkeypatch):
    full = GroundTruthOracle.forward

    def first_only(self, batched_inputs):  # misses every object but the first of each image
        return [{"instances": out["instances"][:1]} for out in full(self, batched_inputs)]

    monkeypatch.setattr(GroundTruthOracle, "forward", first_only)
    coco = _eval_only("coco_2017_val", tmp_path / "coco")
    assert 0 < coco["bbox"]["AP"] < 100
    cityscapes = _eval_only("cityscapes_fine_instance_seg_val", tmp_path / "cityscapes")
    assert 0 < cityscapes["segm"]["AP"] < 100


# ---- instant distillation runs on the real layouts (two iterations, tiny widths) -------------
_TINY_BACKBONE = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.FPN.OUT_CHANNELS", "32",
                  "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
                  "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.WEIGHTS", "",
                  "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "32", "MODEL.RESNETS.NORM", "BN",
                  "MODEL.SEM_SEG_HEAD.NORM", "BN"]  # fmt: skip
# the teacher's ASPP (DeepLab) pools with a kernel set by its own config's training crop
_TEACHER_TINY = _TINY_BACKBONE + ["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.RES2_OUT_CHANNELS",
                                  "64", "MODEL.RESNETS.WIDTH_PER_GROUP", "16",
                                  "INPUT.CROP.SIZE", "(64, 128)"]  # fmt: skip


@pytest.mark.parametrize(
    "config, teacher_config, dataset, metric",
    [
        ("Cityscapes/dist_semantic_R18_from_R101_FPN_90k", "Cityscapes/semantic_R101_FPN_90k",
         "cityscapes_fine_sem_seg_val", ("sem_seg", "IoU")),
        ("Cityscapes/reviewkd_mask_rcnn_R18_from_R50_FPN", "Cityscapes/mask_rcnn_R50_FPN",
         "cityscapes_fine_instance_seg_val", ("segm", "AP")),
        ("Cityscapes/dist_deeplab_v3_R18_from_R103_OS16_90k",
         "Cityscapes/deeplab_v3_R103_OS16_mg124_poly_90k", "cityscapes_fine_sem_seg_val",
         ("sem_seg", "IoU")),
        ("COCO-Detection/reviewkd_faster_rcnn_R18_from_R101_FPN_1x",
         "model_zoo:COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml", "coco_2017_val", ("bbox", "AP")),
        ("COCO-InstanceSegmentation/distplus_mask_rcnn_R50_from_R101_FPN_1x",
         "model_zoo:COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml", "coco_2017_val",
         ("bbox", "AP")),  # COCOEvaluator adds "segm" once the model predicts masks
    ],
)  # fmt: skip
def test_instant_distillation_run_on_the_real_layouts(
    config, teacher_config, dataset, metric, real_datasets, tmp_path
):
    from detectron2.modeling import build_model

    from d2dist.config import get_cfg

    configs = os.path.join(REPO, "configs")
    device = ["MODEL.DEVICE", "cpu"]
    tcfg = get_cfg()
    if teacher_config.startswith("model_zoo:"):
        from detectron2 import model_zoo

        tcfg.merge_from_file(model_zoo.get_config_file(teacher_config[len("model_zoo:") :]))
    else:
        tcfg.merge_from_file(os.path.join(configs, f"{teacher_config}.yaml"))
    tcfg.merge_from_list(device + _TEACHER_TINY)
    teacher = str(tmp_path / "teacher.pth")
    torch.save({"model": build_model(tcfg).state_dict()}, teacher)

    out = str(tmp_path / "run")
    module = load_tool("train_net")
    args = argument_parser().parse_args(
        [
            "--config-file", os.path.join(configs, f"{config}.yaml"), *device, *_TINY_BACKBONE,
            "DATASETS.TRAIN", f"('{dataset}',)", "DATASETS.TEST", f"('{dataset}',)",
            "INPUT.MIN_SIZE_TRAIN", f"({H},)", "INPUT.MAX_SIZE_TRAIN", str(W),
            "INPUT.MIN_SIZE_TEST", str(H), "INPUT.MAX_SIZE_TEST", str(W),
            "INPUT.CROP.SIZE", "(64, 128)", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
            "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(1,)", "DATALOADER.NUM_WORKERS", "0",
            "MODEL.DISTILL.TEACHER.WEIGHTS", teacher,
            "MODEL.DISTILL.TEACHER.OPTS", str(device + _TEACHER_TINY),
            "MODEL.DISTILL.REVIEWKD.MID_CHANNELS", "32", "OUTPUT_DIR", out,
        ]  # fmt: skip
    )
    results = module.main(args)
    task, key = metric
    value = results[task][key]  # NaN when a 2-iteration model detects nothing
    assert value != value or 0 <= value <= 100
    with open(os.path.join(out, "metrics.json")) as f:
        train = [json.loads(line) for line in f if "total_loss" in line]
    assert train and all(any(k.startswith("loss_distill_") for k in r) for r in train)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


@pytest.mark.parametrize("distilled", [False, True])
def test_semantic_training_images_have_the_crop_size(distilled, real_datasets):
    """Semantic segmentation with INPUT.CROP trains on the DeepLab project's pipeline: resized
    (multi-scale), then cropped, so every image has the crop's size (a DeepLab head's ASPP pools
    with a kernel fixed for it); Detectron2's default mapper would crop first and resize after."""
    from d2dist.config import get_cfg
    from d2dist.engine import Trainer

    cfg = get_cfg()
    name = "dist_deeplab_v3_R18_from_R103_OS16_90k" if distilled else "deeplab_v3_R18_OS16_poly_90k"
    cfg.merge_from_file(os.path.join(REPO, "configs", "Cityscapes", f"{name}.yaml"))
    cfg.merge_from_list(["DATASETS.TRAIN", "('cityscapes_fine_sem_seg_val',)",
                         "INPUT.MIN_SIZE_TRAIN", "(64, 96, 128)", "INPUT.MAX_SIZE_TRAIN", "512",
                         "INPUT.CROP.SIZE", "(64, 128)", "SOLVER.IMS_PER_BATCH", "2",
                         "DATALOADER.NUM_WORKERS", "0"])  # fmt: skip
    loader = iter(Trainer.build_train_loader(cfg))
    for _ in range(3):
        for x in next(loader):
            assert tuple(x["image"].shape[-2:]) == (64, 128)
            assert tuple(x["sem_seg"].shape) == (64, 128)

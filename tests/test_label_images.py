"""tools/label_images.py (d2dist-label): offline pseudo-labels of a tiny teacher on a folder of
images, written as a COCO file that d2dist loads and trains on, and its refusals."""

import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from _tiny import tiny_cfg, write_teacher
from _tools import load_tool
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from PIL import Image

from d2dist.config import get_cfg
from d2dist.engine import argument_parser
from d2dist.engine.defaults import register_coco_datasets

# The teacher at the images' own size (its default INPUT.MIN_SIZE_TEST is 800 px).
SMALL = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"]
SIZES = {"a.jpg": (64, 64), "b.png": (64, 64), "sub/c.jpg": (48, 64)}  # (height, width)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("teachers"))
    return {
        arch: write_teacher(folder, arch) for arch in ("faster_rcnn", "mask_rcnn", "semantic_fpn")
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of random images (JPEG and PNG, one in a sub-folder, one not square)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        os.makedirs(os.path.dirname(folder / name), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return str(folder)


def _label(teachers, images, output, *extra, arch="faster_rcnn", opts=SMALL):
    config, weights = teachers[arch]
    argv = ["--config-file", config, "--weights", weights, "--image-folder", images,
            "--output", str(output), "--device", "cpu", *extra, "--opts", *opts]  # fmt: skip
    return load_tool("label_images").main(argv)


def _teacher_predictions(config, weights, path):
    """The teacher's own predictions on one image, run by hand (Detectron2's model alone)."""
    cfg = get_cfg()  # d2dist's keys too: the teacher's file was dumped from them
    cfg.merge_from_file(config)
    cfg.merge_from_list(SMALL)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    image = read_image(path, "BGR")
    h, w = image.shape[:2]
    with torch.no_grad():
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return model([{"image": tensor, "height": h, "width": w}])[0]["instances"]


def test_the_labels_are_the_teachers_own_predictions(teachers, images, tmp_path, capsys):
    output = tmp_path / "pseudo.json"
    assert _label(teachers, images, output, "--score-threshold", "0.0") == 0
    assert "3 images" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["pseudo.json"]  # no temporary file left
    data = json.loads(output.read_text())
    assert "score >= 0.0" in data["info"]["description"]
    assert data["categories"] == [{"id": i + 1, "name": f"class_{i}"} for i in range(3)]
    assert [(im["file_name"], im["height"], im["width"]) for im in data["images"]] == [
        (name, h, w) for name, (h, w) in SIZES.items()
    ]
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    for image in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == image["id"]]
        path = os.path.join(images, image["file_name"])
        expected = _teacher_predictions(*teachers["faster_rcnn"], path)
        assert len(anns) == len(expected) > 0
        boxes = torch.tensor([a["bbox"] for a in anns])
        boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
        torch.testing.assert_close(boxes, expected.pred_boxes.tensor, atol=1e-3, rtol=0)
        torch.testing.assert_close(torch.tensor([a["score"] for a in anns]), expected.scores)
        assert [a["category_id"] - 1 for a in anns] == expected.pred_classes.tolist()
        for a in anns:
            assert a["iscrowd"] == 0 and "segmentation" not in a
            assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3])


def test_the_file_loads_as_a_coco_dataset_and_trains_a_student(teachers, images, tmp_path):
    output = str(tmp_path / "pseudo.json")
    assert _label(teachers, images, output, "--score-threshold", "0.0") == 0
    name = "d2dist_test_pseudo_labels"
    register_coco_datasets([(name, output, images)])
    records = DatasetCatalog.get(name)
    assert [r["file_name"] for r in records] == [os.path.join(images, n) for n in SIZES]
    with open(output) as f:
        assert sum(len(r["annotations"]) for r in records) == len(json.load(f)["annotations"])
    student = str(tmp_path / "student.yaml")
    with open(student, "w") as f:
        f.write(tiny_cfg("faster_rcnn", role="student").dump())
    args = argument_parser().parse_args(
        ["--config-file", student, "--coco-dataset", name, output, images,
         "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
         "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
         "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
         "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
         "OUTPUT_DIR", str(tmp_path / "run")]  # fmt: skip
    )
    load_tool("train_net").main(args)
    assert os.path.isfile(tmp_path / "run" / "model_final.pth")


def test_masks_are_written_as_rle_of_the_image_size(teachers, images, tmp_path):
    output = tmp_path / "pseudo.json"
    assert _label(teachers, images, output, "--score-threshold", "0.0", "--masks",
                  arch="mask_rcnn") == 0  # fmt: skip
    data = json.loads(output.read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    assert data["annotations"] and {sizes[a["image_id"]] for a in data["annotations"]} == {
        (64, 64),
        (48, 64),
    }
    for a in data["annotations"]:
        assert isinstance(a["segmentation"]["counts"], str)
        mask = mask_util.decode(
            {**a["segmentation"], "counts": a["segmentation"]["counts"].encode()}
        )
        assert mask.shape == sizes[a["image_id"]]
        assert a["area"] == mask.sum()


def test_the_score_threshold_filters_and_every_image_is_still_listed(
    teachers, images, tmp_path, capsys
):
    output = tmp_path / "pseudo.json"
    assert _label(teachers, images, output, "--score-threshold", "1.0") == 0
    data = json.loads(output.read_text())
    assert data["annotations"] == [] and len(data["images"]) == len(SIZES)
    out = capsys.readouterr().out
    assert "0 detections" in out and "3 images without detections" in out
    assert "FILTER_EMPTY_ANNOTATIONS is False" in out


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing config", "--config-file"),
        ("missing weights", "--weights"),
        ("missing folder", "does not exist or is not a folder"),
        ("empty folder", "holds no image"),
        ("masks without a mask head", "no mask head"),
        ("semantic teacher", "MODEL.DISTILL.TEACHER_LABELS"),
        ("threshold above 1", "expected a score in [0, 1]"),
        ("output folder missing", "does not exist; create it first"),
    ],
)
def test_errors_exit_with_status_2_and_name_the_problem(
    case, expected, teachers, images, tmp_path, capsys
):
    teachers = dict(teachers)
    config, weights = teachers["faster_rcnn"]
    output, extra, arch = tmp_path / "pseudo.json", [], "faster_rcnn"
    if case == "missing config":
        teachers["faster_rcnn"] = (str(tmp_path / "nope.yaml"), weights)
    elif case == "missing weights":
        teachers["faster_rcnn"] = (config, str(tmp_path / "nope.pth"))
    elif case == "missing folder":
        images = str(tmp_path / "no_such_folder")
    elif case == "empty folder":
        images = str(tmp_path / "empty")
        os.mkdir(images)
    elif case == "masks without a mask head":
        extra = ["--masks"]
    elif case == "semantic teacher":
        arch = "semantic_fpn"
    elif case == "threshold above 1":
        extra = ["--score-threshold", "1.5"]
    elif case == "output folder missing":
        output = tmp_path / "missing" / "pseudo.json"
    assert _label(teachers, images, output, *extra, arch=arch) == 2
    err = capsys.readouterr().err
    assert "label_images.py: error:" in err and expected in err, err
    assert "Traceback" not in err
    assert not output.exists()

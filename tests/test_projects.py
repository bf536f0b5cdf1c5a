"""Configs with a Detectron2 project's keys (PointRend) as student and as teacher, datasets of
one's own in COCO format from the command line, and the errors that say how."""

import json
import os
import shutil

import pytest
import torch
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA
from _tools import load_tool
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from d2dist.config import get_cfg
from d2dist.engine import argument_parser
from d2dist.errors import ConfigError

pytestmark = pytest.mark.slow  # training runs of Detectron2 projects' models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
POINT_REND = "detectron2.projects.point_rend.add_pointrend_config"

# PointRend's mask head on the built-in dataset (its keys: MODEL.POINT_HEAD, ROI_MASK_HEAD.*).
POINT_REND_YAML = f"""\
_BASE_: "{SHAPES}/mask_rcnn_R18_FPN_1x.yaml"
MODEL:
  ROI_BOX_HEAD:
    TRAIN_ON_PRED_BOXES: True
  ROI_MASK_HEAD:
    NAME: "PointRendMaskHead"
    POOLER_TYPE: ""
    FC_DIM: 32
    NUM_FC: 1
    OUTPUT_SIDE_RESOLUTION: 7
    IN_FEATURES: ["p2"]
    POINT_HEAD_ON: True
  POINT_HEAD:
    NUM_CLASSES: 8
    FC_DIM: 16
    NUM_FC: 1
    IN_FEATURES: ["p2"]
    TRAIN_NUM_POINTS: 49
    SUBDIVISION_STEPS: 1
    SUBDIVISION_NUM_POINTS: 49
INPUT:
  MASK_FORMAT: "bitmask"
"""
TWO_STEPS = ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "MODEL.ROI_MASK_HEAD.CONV_DIM", "8"]


def _main(*argv):
    return load_tool("train_net").main(argument_parser().parse_args(list(argv)))


def _weights(tmp, name, config, opts, functions=()):
    """A checkpoint of random weights of ``config`` (built with ``functions`` applied)."""
    cfg = get_cfg(*functions)
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    torch.manual_seed(0)
    path = os.path.join(tmp, f"{name}.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def point_rend(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("pointrend"))
    config = os.path.join(tmp, "point_rend_R18.yaml")
    with open(config, "w") as f:
        f.write(POINT_REND_YAML)
    opts = SHAPES_TINY_DATA[:2] + SHAPES_STUDENT_TINY + ["MODEL.ROI_MASK_HEAD.CONV_DIM", "8"]
    return config, _weights(tmp, "point_rend", config, opts, [POINT_REND]), opts


def _distill(out, student_config, teacher_config, teacher_weights, teacher_opts, *extra):
    """A Distiller of ``student_config`` from a teacher, as KEY VALUE overrides."""
    return [
        "--config-file", student_config, *extra, *SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY,
        *TWO_STEPS, "OUTPUT_DIR", out,
        "MODEL.META_ARCHITECTURE", "Distiller",
        "MODEL.DISTILL.TEACHER.CONFIG_FILE", teacher_config,
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher_weights,
        "MODEL.DISTILL.TEACHER.OPTS", str(teacher_opts),
        "MODEL.DISTILL.LOSSES", "['MIMIC', 'KD']", "MODEL.DISTILL.MIMIC.WEIGHT", "0.01",
        "SOLVER.BASE_LR", "0.002",
    ]  # fmt: skip


def test_a_point_rend_student_trains_with_the_project_s_config_function(point_rend, tmp_path):
    config, _, _ = point_rend
    with pytest.raises(
        ConfigError,
        match=r"Non-existent config key: MODEL.ROI_MASK_HEAD.FC_DIM.*--config-function .*point_rend",
    ):
        _main("--config-file", config, *SHAPES_TINY_DATA, "OUTPUT_DIR", str(tmp_path / "x"))
    plain = _main("--config-function", POINT_REND, "--config-file", config, *SHAPES_TINY_DATA,
                  *SHAPES_STUDENT_TINY, *TWO_STEPS, "OUTPUT_DIR", str(tmp_path / "plain"))  # fmt: skip
    assert {"bbox", "segm"} <= set(plain)


def test_a_point_rend_student_with_a_faster_rcnn_teacher(point_rend, tmp_path):
    config, _, _ = point_rend
    teacher_cfg = os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml")
    t_opts = SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY
    t_weights = _weights(str(tmp_path), "frcnn", teacher_cfg, t_opts)
    out = str(tmp_path / "run")
    results = _main(*_distill(out, config, teacher_cfg, t_weights, t_opts,
                              "--config-function", POINT_REND))  # fmt: skip
    assert {"bbox", "segm"} <= set(results)
    with open(os.path.join(out, "metrics.json")) as f:
        assert any("loss_distill_kd" in json.loads(line) for line in f)

    # Its export merges into plain Detectron2's config with PointRend's own function only.
    export = load_tool("export_student")
    assert export.main(["--run-dir", out]) == 2  # the run's config has PointRend's keys
    assert export.main(["--run-dir", out, "--config-function", POINT_REND]) == 0
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg as plain_get_cfg
    from detectron2.projects.point_rend import add_pointrend_config

    plain = plain_get_cfg()
    add_pointrend_config(plain)
    plain.merge_from_file(os.path.join(out, "student.yaml"))
    plain.MODEL.DEVICE = "cpu"
    model = build_model(plain)
    DetectionCheckpointer(model).load(os.path.join(out, "student.pth"))
    assert plain.MODEL.ROI_MASK_HEAD.NAME == "PointRendMaskHead"


def test_a_faster_rcnn_student_with_a_point_rend_teacher(point_rend, tmp_path):
    config, weights, opts = point_rend
    student = os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml")
    args = _distill(str(tmp_path / "no"), student, config, weights, opts)
    with pytest.raises(
        ConfigError, match=r"teacher config .*Non-existent config key.*TEACHER.CONFIG_FUNCTIONS"
    ):
        _main(*args)
    out = str(tmp_path / "run")
    args = _distill(out, student, config, weights, opts)
    results = _main(*args, "MODEL.DISTILL.TEACHER.CONFIG_FUNCTIONS", f"['{POINT_REND}']")
    assert set(results) == {"bbox"}
    with open(os.path.join(out, "log.txt")) as f:
        assert "Teacher: GeneralizedRCNN from GeneralizedRCNN config" in f.read()


def test_a_point_rend_student_on_unlabeled_images_learns_the_point_rend_teacher_s_masks(
    point_rend, tmp_path, monkeypatch
):
    """A project's student kind with online teacher labels: a PointRend student trains on images
    without annotations; its targets are the PointRend teacher's boxes and pasted masks."""
    from detectron2.data import DatasetCatalog
    from PIL import Image

    from d2dist.modeling import TeacherLabels

    config, weights, opts = point_rend
    folder = tmp_path / "images"
    folder.mkdir()
    for r in DatasetCatalog.get("d2dist_shapes_tiny_train")[:4]:
        Image.open(r["file_name"]).save(folder / os.path.basename(r["file_name"]))
    labelled, label = [], TeacherLabels.label

    def spy(self, student, teacher, batched_inputs, run):
        out = label(self, student, teacher, batched_inputs, run)
        labelled.append(out)
        return out

    monkeypatch.setattr(TeacherLabels, "label", spy)
    out = str(tmp_path / "run")
    _main(*_distill(out, config, config, weights, opts, "--config-function", POINT_REND,
                    "--image-folder", "point_rend_unlabeled", str(folder)),
          "MODEL.DISTILL.TEACHER.CONFIG_FUNCTIONS", f"['{POINT_REND}']",
          "MODEL.DISTILL.TEACHER_LABELS.SCORE_THRESHOLD", "0.0",
          "DATASETS.TRAIN", "('point_rend_unlabeled',)", "TEST.EVAL_PERIOD", "0")  # fmt: skip
    assert len(labelled) == 2  # both steps: every image labelled by the teacher
    for batch in labelled:
        for x in batch:
            inst = x["instances"]
            assert len(inst) > 0 and inst.gt_masks.tensor.shape[1:] == x["image"].shape[1:]
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if "loss_mask_point" in line]
    assert rows and all(r["teacher_labels/images_fraction"] == 1.0 for r in rows)


def test_a_config_function_that_does_not_exist_is_named(tmp_path):
    for name, message in (("nodots", "not a dotted name"), ("no_such_pkg.add_x", "cannot import"),
                          ("detectron2.projects.point_rend.nope", "has no 'nope'")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            _main("--config-function", name, "--config-file",
                  os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml"), *SHAPES_TINY_DATA)  # fmt: skip


def test_a_coco_format_dataset_of_one_s_own_from_the_command_line(datasets_root, tmp_path):
    from d2dist.data.builtin import ensure_generated

    ensure_generated("d2dist_shapes_tiny_train")
    meta = MetadataCatalog.get("d2dist_shapes_tiny_train")
    images = str(tmp_path / "images")
    shutil.copytree(meta.image_root, images)
    annotations = str(tmp_path / "instances.json")
    shutil.copy(meta.json_file, annotations)
    out = str(tmp_path / "run")
    results = _main("--coco-dataset", "my_shapes", annotations, images,
                    "--config-file", os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml"),
                    *SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY, *TWO_STEPS[:4],
                    "DATASETS.TRAIN", "('my_shapes',)", "DATASETS.TEST", "('my_shapes',)",
                    "OUTPUT_DIR", out)  # fmt: skip
    assert {"AP", "AP50"} <= set(results["bbox"])
    assert "my_shapes" in DatasetCatalog.list()
    with pytest.raises(ConfigError, match=r"the annotation file '.*missing.json' does not exist"):
        _main("--coco-dataset", "x", str(tmp_path / "missing.json"), images,
              "--config-file", os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml"))  # fmt: skip
    with pytest.raises(ConfigError, match="'my_shapes' is registered already"):
        _main("--coco-dataset", "my_shapes", annotations, str(tmp_path),
              "--config-file", os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml"))  # fmt: skip
    with pytest.raises(ConfigError, match="--coco-dataset NAME JSON IMAGE_DIR"):
        _main("--config-file", os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml"),
              "DATASETS.TRAIN", "('not_registered',)")  # fmt: skip

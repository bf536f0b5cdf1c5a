"""tools/export_student.py: the exported student is plain Detectron2 (merged by its own get_cfg,
no d2dist keys, no device, no absolute path) and predicts as the distillation run's student."""

import os

import pytest
import torch
import yaml
from _plain import assert_same_predictions, plain_predictions, run_predictions
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA
from _tools import load_tool
from detectron2.modeling import build_model

from d2dist.config import get_cfg
from d2dist.engine import argument_parser

pytestmark = pytest.mark.slow  # a distillation run, exported and compared with plain Detectron2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
DISTILL_CFG = os.path.join(SHAPES, "kd_faster_rcnn_R18_from_R50_FPN_1x.yaml")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    teacher_cfg = os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml")
    cfg = get_cfg()
    cfg.merge_from_file(teacher_cfg)
    cfg.merge_from_list(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY)
    torch.manual_seed(0)
    weights = str(tmp / "teacher.pth")
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    out = str(tmp / "run")
    argv = ["--config-file", DISTILL_CFG, *SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY,
            "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "SOLVER.BASE_LR", "0.002",
            "MODEL.DISTILL.TEACHER.WEIGHTS", weights,
            "MODEL.DISTILL.TEACHER.OPTS", str(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY),
            "OUTPUT_DIR", out]  # fmt: skip
    load_tool("train_net").main(argument_parser().parse_args(argv))
    return out


def test_the_exported_config_is_plain_detectron2(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the weights path is written relative to the working directory
    assert load_tool("export_student").main(["--run-dir", run]) == 0
    with open(os.path.join(run, "student.yaml")) as f:
        text = f.read()
    exported = yaml.safe_load(text)
    assert "DISTILL" not in exported["MODEL"] and "FCOS" not in exported["MODEL"]
    assert "DEVICE" not in exported["MODEL"]
    assert "SINGLE_CATEGORY_MAX_AREA" not in exported["INPUT"]["CROP"]  # DeepLab's, unused
    assert exported["MODEL"]["META_ARCHITECTURE"] == "GeneralizedRCNN"
    assert not os.path.isabs(exported["MODEL"]["WEIGHTS"])
    assert os.path.samefile(exported["MODEL"]["WEIGHTS"], os.path.join(run, "student.pth"))
    assert REPO not in text and str(tmp_path) not in text
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]


def test_the_exported_student_predicts_as_the_run_without_d2dist(run, tmp_path):
    assert load_tool("export_student").main(["--run-dir", run, "--output",
                                             str(tmp_path / "s.pth")]) == 0  # fmt: skip
    plain = plain_predictions(str(tmp_path / "s.yaml"), tmp_path)
    assert_same_predictions(plain, run_predictions(run))


def test_export_refuses_to_overwrite_its_input_or_write_into_a_directory(run, capsys):
    final = os.path.join(run, "model_final.pth")
    before = os.path.getsize(final)
    export = load_tool("export_student")
    assert export.main(["--run-dir", run, "--output", final]) == 2
    assert "is the checkpoint being exported" in capsys.readouterr().err
    assert (
        os.path.getsize(final) == before
        and "optimizer" in torch.load(final, weights_only=False)["trainer"]["_trainer"]
    )
    assert export.main(["--run-dir", run, "--output", run]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert export.main(["--run-dir", os.path.join(run, "nothing")]) == 2
    assert "has no config.yaml (is it the OUTPUT_DIR of a training run?)" in capsys.readouterr().err

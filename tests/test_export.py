"""tools/export_student.py: the exported student is plain Detectron2 (merged by its own get_cfg,
no d2dist keys, no device, no absolute path) and predicts as the distillation run's student."""

import os
import subprocess
import sys

import pytest
import torch
import yaml
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA
from _tools import load_tool
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from d2dist.config import get_cfg
from d2dist.engine import argument_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
DISTILL_CFG = os.path.join(SHAPES, "kd_faster_rcnn_R18_from_R50_FPN_1x.yaml")

# Loads the exported student with d2dist unimportable and prints its predictions on fixed images.
PLAIN = """
import sys
sys.modules["d2dist"] = None  # `import d2dist` now fails
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
try:
    import d2dist  # noqa: F401
    raise SystemExit("d2dist is importable")
except ImportError:
    pass
cfg = get_cfg()
cfg.merge_from_file(sys.argv[1])  # no set_new_allowed
cfg.MODEL.DEVICE = "cpu"
model = build_model(cfg).eval()
DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
torch.manual_seed(0)
batch = [{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64} for _ in range(2)]
with torch.no_grad():
    out = model(batch)
torch.save([o["instances"].get_fields() for o in out], sys.argv[2])
"""


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
    script = tmp_path / "plain.py"
    script.write_text(PLAIN)
    got = str(tmp_path / "plain.pt")
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "s.yaml"), got],
                          cwd=os.getcwd(), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    # The same images through the distillation run's own model (a Distiller, in eval mode).
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(run, "config.yaml"))
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(os.path.join(run, "model_final.pth"))
    torch.manual_seed(0)
    batch = [{"image": torch.rand(3, 64, 64) * 255, "height": 64, "width": 64} for _ in range(2)]
    with torch.no_grad():
        expected = [o["instances"].get_fields() for o in model(batch)]
    plain = torch.load(got, weights_only=False)
    for a, b in zip(plain, expected):
        assert a["pred_classes"].tolist() == b["pred_classes"].tolist()
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["pred_boxes"].tensor, b["pred_boxes"].tensor)


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

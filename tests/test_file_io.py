"""d2dist:// paths name files of the checkout from any working directory: the shipped Shapes
distillation configs name their teacher (config and the checkpoint `make demo` writes) that way,
so they run from outside the repository root, with d2dist's tools and plain Detectron2 alike. An
installed d2dist reads d2dist://configs from its package and other d2dist:// paths from the working
directory; a config's _BASE_ may be a d2dist:// path."""

import json
import os
import pickle
import shutil

import pytest
import torch
from _tiny import LAZY_TINY_DATA, SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA
from _tools import load_tool
from detectron2.config import CfgNode as D2CfgNode
from detectron2.config import get_cfg as d2_get_cfg
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from d2dist import file_io
from d2dist.config import CfgNode, add_distill_config, get_cfg, merge_config_file
from d2dist.engine import argument_parser
from d2dist.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
TEACHER_CFG = "d2dist://configs/Shapes-Detection/faster_rcnn_R50_FPN_3x.yaml"
DEMO_TEACHER = "d2dist://output/study/faster_rcnn/teacher/model_final.pth"


def test_d2dist_paths_name_files_of_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert file_io.CHECKOUT == REPO
    local = os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml")
    assert file_io.local_path(TEACHER_CFG) == local
    assert file_io.local_path(DEMO_TEACHER) == os.path.join(
        REPO, "output", "study", "faster_rcnn", "teacher", "model_final.pth"
    )
    assert file_io.local_path("relative/path.pth") == "relative/path.pth"  # unchanged
    assert PathManager.isfile(TEACHER_CFG) and PathManager.isdir("d2dist://configs")
    assert not PathManager.exists("d2dist://configs/nothing.yaml")
    assert "Shapes-Detection" in PathManager.ls("d2dist://configs")
    with PathManager.open(TEACHER_CFG) as f, open(local) as g:
        assert f.read() == g.read()
    assert PathManager.get_local_path(TEACHER_CFG) == local


def test_an_installed_copy_without_a_checkout_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(file_io, "CHECKOUT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="installed at .* without one"):
        file_io.local_path(TEACHER_CFG)
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(SHAPES, "kd_faster_rcnn_R18_from_R50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(ConfigError, match="TEACHER.CONFIG_FILE: 'd2dist://.*without one"):
        build_model(cfg)


def test_an_installed_copy_reads_its_packaged_configs_and_the_working_directory(
    tmp_path, monkeypatch
):
    site = tmp_path / "site-packages"
    package = site / "d2dist"
    shutil.copytree(os.path.join(REPO, "configs"), package / "configs")  # as setup.py does
    monkeypatch.setattr(file_io, "CHECKOUT", str(site))
    monkeypatch.setattr(file_io, "PACKAGE", str(package))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert file_io.checkout() is None and file_io.project_dir() == str(work)
    packaged = str(package / "configs" / "Shapes-Detection" / "faster_rcnn_R50_FPN_3x.yaml")
    assert file_io.local_path(TEACHER_CFG) == packaged
    assert PathManager.isfile(TEACHER_CFG)
    assert file_io.local_path(DEMO_TEACHER) == str(
        work / "output" / "study" / "faster_rcnn" / "teacher" / "model_final.pth"
    )
    cfg = get_cfg()  # a packaged config and its relative _BASE_ chain, through d2dist://
    cfg.merge_from_file("d2dist://configs/Shapes-Detection/kd_faster_rcnn_R18_from_R50_FPN_1x.yaml")
    assert cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE == TEACHER_CFG


def test_a_checkout_is_found_beside_the_package():
    assert file_io.checkout() == REPO and file_io.project_dir() == REPO
    assert file_io.PACKAGE == os.path.join(REPO, "d2dist")


BASE_USER_CONFIG = """_BASE_: "d2dist://configs/Shapes-Detection/faster_rcnn_R18_FPN_1x.yaml"
SOLVER:
  MAX_ITER: 7
"""


def _user_config(folder) -> str:
    """A user's config in a folder of their own, based on a config d2dist ships."""
    path = os.path.join(str(folder), "mine.yaml")
    with open(path, "w") as f:
        f.write(BASE_USER_CONFIG)
    return path


def test_a_base_may_be_a_d2dist_path_in_d2dists_get_cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _user_config(tmp_path)
    cfg = get_cfg()
    assert isinstance(cfg, CfgNode) and type(cfg.MODEL) is D2CfgNode
    cfg.merge_from_file(path)  # Detectron2's own merge_from_file
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.RESNETS.DEPTH == 18  # the base's (and its base)
    assert cfg.DATASETS.TRAIN == ("d2dist_shapes_train",)
    for copy in (cfg.clone(), pickle.loads(pickle.dumps(cfg))):
        assert type(copy) is CfgNode and copy == cfg
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(cfg.dump())
    again = get_cfg()
    again.merge_from_file(str(dumped))
    assert type(again) is CfgNode and (again.SOLVER.MAX_ITER, again.MODEL.RESNETS.DEPTH) == (7, 18)
    from detectron2.projects.point_rend import add_pointrend_config

    cfg = get_cfg()  # a project's keys added afterwards merge too (nodes of Detectron2's class)
    add_pointrend_config(cfg)
    cfg.merge_from_list(["MODEL.POINT_HEAD.NUM_FC", "2"])
    cfg.merge_from_file(path)
    assert cfg.MODEL.POINT_HEAD.NUM_FC == 2 and cfg.SOLVER.MAX_ITER == 7


def test_a_base_may_be_a_d2dist_path_in_merge_config_file_with_detectron2s_cfg(tmp_path):
    path = _user_config(tmp_path)
    cfg = d2_get_cfg()
    add_distill_config(cfg)
    merge_config_file(cfg, path, "config 'mine.yaml'")
    assert type(cfg) is D2CfgNode  # its class is left as it was
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.RESNETS.DEPTH == 18
    plain = d2_get_cfg()  # Detectron2's own merge joins the base to the file's folder
    with pytest.raises(Exception, match="d2dist:"):
        plain.merge_from_file(path)


def test_the_tools_take_d2dist_config_files_from_any_directory(tmp_path, monkeypatch):
    from d2dist.engine import load_config
    from d2dist.engine.lazy import load_lazy_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        "d2dist://configs/Shapes-Detection/faster_rcnn_R18_FPN_1x.yaml", ["MODEL.DEVICE", "cpu"]
    )
    assert cfg.MODEL.RESNETS.DEPTH == 18
    lazy = load_lazy_config(
        "d2dist://configs/Shapes-Detection/mask_rcnn_R18_FPN_1x.py", LAZY_TINY_DATA
    )  # its relative imports are read beside the file
    assert lazy.train.device == "cpu"
    with pytest.raises(ConfigError, match="d2dist://configs/none.yaml' does not exist"):
        load_config("d2dist://configs/none.yaml", [])


def test_the_shipped_configs_name_the_demo_teacher():
    for name in sorted(os.listdir(SHAPES)):
        if "_faster_rcnn_R18_from_R50_" not in name:
            continue
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(SHAPES, name))
        assert cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE == TEACHER_CFG, name
        assert cfg.MODEL.DISTILL.TEACHER.WEIGHTS == DEMO_TEACHER, name


@pytest.mark.slow
def test_a_shipped_config_runs_from_outside_the_repository(tmp_path, monkeypatch):
    """kd_...yaml from another working directory: the teacher config through d2dist://, and its
    weights through d2dist:// too (a checkpoint this test writes, named relative to the checkout).
    """
    monkeypatch.chdir(tmp_path)
    teacher = d2_get_cfg()
    teacher.merge_from_file(os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml"))
    teacher.merge_from_list(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY)
    torch.manual_seed(0)
    model = build_model(teacher)
    weights = tmp_path / "teacher.pth"
    torch.save({"model": model.state_dict()}, weights)
    via_checkout = "d2dist://" + os.path.relpath(weights, REPO)
    out = str(tmp_path / "run")
    argv = ["--config-file", os.path.join(SHAPES, "kd_faster_rcnn_R18_from_R50_FPN_1x.yaml"),
            *SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY, "SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()",
            "MODEL.DISTILL.TEACHER.WEIGHTS", via_checkout,
            "MODEL.DISTILL.TEACHER.OPTS", str(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY),
            "OUTPUT_DIR", out]  # fmt: skip
    results = load_tool("train_net").main(argument_parser().parse_args(argv))
    assert "bbox" in results
    with open(os.path.join(out, "metrics.json")) as f:
        assert any("loss_distill_kd" in json.loads(line) for line in f)
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert f"Teacher: GeneralizedRCNN from GeneralizedRCNN config {TEACHER_CFG}" in log
    assert f"weights {weights} " in log  # the checkpoint d2dist:// named

    # The demo teacher's path, when `make demo` has not run: the message names the file.
    missing = os.path.join(REPO, "output", "study", "faster_rcnn", "teacher", "model_final.pth")
    if not os.path.exists(missing):
        cfg = get_cfg()
        cfg.merge_from_file(os.path.join(SHAPES, "kd_faster_rcnn_R18_from_R50_FPN_1x.yaml"))
        cfg.MODEL.DEVICE = "cpu"
        with pytest.raises(ConfigError, match=f"the file {missing}\\) does not exist"):
            build_model(cfg).load_teacher()

import glob
import os
import subprocess
import sys

import pytest
from detectron2.modeling import build_model

import d2dist
from d2dist.config import add_distill_config, get_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def test_version_and_import_from_any_directory(tmp_path):
    assert d2dist.__version__.count(".") == 2
    out = subprocess.run(
        [sys.executable, "-c", "import d2dist; print(d2dist.__version__, d2dist.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == d2dist.__version__
    assert out[1].startswith(os.path.join(REPO, "d2dist"))


def test_get_cfg_has_distill_and_deeplab_keys():
    cfg = get_cfg()
    assert "DISTILL" in cfg.MODEL
    assert "ASPP_CHANNELS" in cfg.MODEL.SEM_SEG_HEAD  # detectron2.projects.deeplab


def test_add_distill_config_writes_only_under_model_distill():
    from detectron2.config import get_cfg as d2_get_cfg

    before = d2_get_cfg()
    after = d2_get_cfg()
    add_distill_config(after)
    del after.MODEL["DISTILL"]
    assert after.dump() == before.dump()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_config_loads_and_builds(path):
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        model = build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) > 0
        return
    # A distillation config: build its student and its teacher (whose weights a fresh clone
    # does not have) and its terms.
    from d2dist.modeling import build_distill_terms, load_teacher_config
    from d2dist.modeling.teacher import build_meta_arch

    d = cfg.MODEL.DISTILL
    cwd = os.getcwd()
    os.chdir(REPO)  # configs name the teacher config relative to the repository root
    try:
        teacher_cfg = load_teacher_config(cfg)
    finally:
        os.chdir(cwd)
    student = build_meta_arch(cfg, d.STUDENT_META_ARCHITECTURE, "student")
    teacher = build_meta_arch(teacher_cfg, teacher_cfg.MODEL.META_ARCHITECTURE, "teacher")
    assert len(build_distill_terms(cfg, student, teacher)) == len(d.LOSSES) > 0

import os
import subprocess
import sys

import pytest

import d2dist
from d2dist.config import add_distill_config, get_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
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

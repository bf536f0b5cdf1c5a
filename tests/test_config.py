"""The defaults a config was built on (Detectron2's plus a project's config functions) are recorded
in the config itself (MODEL.DISTILL.TEACHER.BASE_DEFAULTS), so they survive the run's config.yaml:
the teacher's yacs config starts from them however the config was loaded."""

import pytest
import yaml
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg as d2_get_cfg
from detectron2.projects.point_rend import add_pointrend_config

from d2dist.config import add_distill_config, config_defaults, get_cfg
from d2dist.errors import ConfigError
from d2dist.modeling import load_teacher_config


def _reload(cfg, tmp_path, new_allowed=False):
    """``cfg`` dumped as a run's config.yaml, merged into d2dist's plain get_cfg()."""
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    loaded = get_cfg()
    if new_allowed:
        loaded.set_new_allowed(True)
    loaded.merge_from_file(str(path))
    return loaded


def _tree(cfg):
    return yaml.safe_load(cfg.dump())


def test_a_config_without_project_keys_records_an_empty_node():
    cfg = get_cfg()
    assert cfg.MODEL.DISTILL.TEACHER.BASE_DEFAULTS == CN()
    assert "BASE_DEFAULTS: {}" in cfg.dump()  # readable: one line
    assert config_defaults(cfg) == get_cfg()
    plain = d2_get_cfg()  # Detectron2's own (no DeepLab, FCOS keys): nothing to add either
    add_distill_config(plain)
    assert plain.MODEL.DISTILL.TEACHER.BASE_DEFAULTS == CN()


def test_a_project_s_keys_survive_the_run_s_config_yaml(tmp_path):
    cfg = get_cfg(add_pointrend_config)
    record = cfg.MODEL.DISTILL.TEACHER.BASE_DEFAULTS
    assert set(record) == {"INPUT", "MODEL"}  # what PointRend adds, nothing else
    assert record.MODEL.POINT_HEAD.NUM_CLASSES == 80 and "SEM_SEG_HEAD" not in record.MODEL
    cfg.merge_from_list(["MODEL.POINT_HEAD.NUM_CLASSES", 3])  # the run's value, not a default
    add_distill_config(cfg.clone())  # (a second call records the same: MODEL.DISTILL left out)
    # PointRend's keys are the student's too, so a strict merge into plain get_cfg() refuses them
    # (as before); with new keys allowed the config.yaml loads, and so do its recorded defaults.
    with pytest.raises(KeyError, match="Non-existent config key: INPUT.COLOR_AUG_SSD"):
        _reload(cfg, tmp_path)
    loaded = _reload(cfg, tmp_path, new_allowed=True)
    assert config_defaults(loaded) == config_defaults(cfg)
    # the defaults of get_cfg(add_pointrend_config), PointRend's tuples as lists (as YAML has them)
    assert _tree(config_defaults(loaded)) == _tree(get_cfg(add_pointrend_config))

    teacher = tmp_path / "teacher.yaml"
    teacher.write_text("MODEL:\n  POINT_HEAD:\n    NUM_CLASSES: 5\n")
    loaded.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(teacher)
    t_cfg = load_teacher_config(loaded)  # no TEACHER.CONFIG_FUNCTIONS needed
    assert (t_cfg.MODEL.POINT_HEAD.NUM_CLASSES, t_cfg.MODEL.POINT_HEAD.FC_DIM) == (5, 256)
    without = get_cfg()  # the same teacher file, from a config without PointRend's defaults
    without.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(teacher)
    with pytest.raises(ConfigError, match="Non-existent config key: MODEL.POINT_HEAD"):
        load_teacher_config(without)


def _eight_classes(cfg):
    """A project's config function that changes two of Detectron2's defaults."""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 8
    cfg.INPUT.MIN_SIZE_TRAIN = (512,)


def test_defaults_a_project_changed_survive_a_strict_merge(tmp_path):
    cfg = get_cfg(_eight_classes)
    record = CN({"MODEL": {"ROI_HEADS": {"NUM_CLASSES": 8}}, "INPUT": {"MIN_SIZE_TRAIN": [512]}})
    assert cfg.MODEL.DISTILL.TEACHER.BASE_DEFAULTS == record
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    loaded = _reload(cfg, tmp_path)
    defaults = config_defaults(loaded)
    assert defaults.MODEL.ROI_HEADS.NUM_CLASSES == 8 and defaults.INPUT.MIN_SIZE_TRAIN == (512,)
    assert defaults == config_defaults(cfg) == get_cfg(_eight_classes)

"""Every config under configs/ loads with d2dist's config and builds its models on the CPU.

Distillation configs build the whole Distiller: the student, the teacher (from its own config;
building reads no weights) and the distillation terms with their target extractor, so every
feature name, width, logit target and class count is checked against the real networks.
"""

import glob
import os

import pytest
import torch
from detectron2.modeling import build_model

from d2dist.config import get_cfg
from d2dist.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
)


def test_the_configs_are_found():
    assert "configs/COCO-Detection/reviewkd_faster_rcnn_R18_from_R101_FPN_1x.yaml" in CONFIGS
    assert "configs/Shapes-Detection/faster_rcnn_R50_FPN_3x.yaml" in CONFIGS


def _layer(paths):
    """The built-in dataset's configs build small models; the full-size ones (COCO, Cityscapes)
    take seconds each on a CPU: they are in `make test`, not `make test-fast`."""
    return [p if "/Shapes-" in p else pytest.param(p, marks=pytest.mark.slow) for p in paths]


@pytest.mark.parametrize("path", _layer(CONFIGS))
def test_config_loads_and_builds(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # configs name their teachers' configs by d2dist:// or model_zoo:
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, path))
    cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        _build_solver(cfg, build_model(cfg))
        return
    # build_model reads no weights (the teacher's are loaded by the trainer), so a distillation
    # config builds on a fresh clone without its teacher's checkpoint.
    model = build_model(cfg)
    d = cfg.MODEL.DISTILL
    assert [t.CONFIG_KEY for t in model.terms] == [n.upper() for n in d.LOSSES]
    assert not model.teacher_wrapper.loaded
    assert d.TEACHER.WEIGHTS, f"{path}: a distillation config names its teacher's weights"
    _build_solver(cfg, model)


def _build_solver(cfg, model):
    """The config's optimizer and LR scheduler build (e.g. the name of the scheduler exists)."""
    optimizer = Trainer.build_optimizer(cfg, model)
    Trainer.build_lr_scheduler(cfg, optimizer)


def test_fcos_backbone_computes_p6_p7_from_p5_like_upstream():
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "COCO-Detection", "fcos_R50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    backbone = build_model(cfg).backbone
    assert backbone.top_block.in_feature == "p5"
    assert list(backbone.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    assert backbone.top_block.p6.in_channels == cfg.MODEL.FPN.OUT_CHANNELS


LAZY_CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.py"), recursive=True)
    if not p.endswith("common_lazy.py")  # shared pieces, no model of their own
)


def test_the_lazy_configs_are_found():
    assert "configs/Shapes-Detection/distplus_mask_rcnn_R18_from_ViTDet_tiny_1x.py" in LAZY_CONFIGS
    assert any(p.startswith("configs/COCO-InstanceSegmentation/") for p in LAZY_CONFIGS)


@pytest.mark.parametrize("path", _layer(LAZY_CONFIGS))
def test_lazy_config_loads_and_builds(path, monkeypatch, tmp_path):
    from detectron2.config import LazyConfig, instantiate

    from d2dist.modeling import Distiller

    monkeypatch.chdir(tmp_path)  # they name their teachers' config files relative to themselves
    cfg = LazyConfig.load(os.path.join(REPO, path))
    assert {"model", "dataloader", "optimizer", "lr_multiplier", "train"} <= set(cfg)
    model = instantiate(cfg.model)
    if isinstance(model, Distiller):  # built without reading the teacher's weights
        assert not model.teacher_wrapper.loaded and model.teacher_wrapper.weights
        assert model.terms
    cfg.optimizer.params.model = model
    instantiate(cfg.optimizer)
    instantiate(cfg.lr_multiplier)

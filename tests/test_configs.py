"""Every config under configs/ loads with d2dist's config and builds its models on the CPU.

Distillation configs build the student, the teacher (from its own config, without weights) and
the distillation terms with their target extractor, so every feature name, width, logit target
and class count is checked against the real networks.
"""

import glob
import os

import pytest
import torch
from detectron2.modeling import build_model

from d2dist.config import get_cfg
from d2dist.engine import Trainer
from d2dist.modeling.losses import build_distill_terms
from d2dist.modeling.targets import TargetExtractor, TargetRequest
from d2dist.modeling.teacher import build_meta_arch, load_teacher_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
)


def test_the_configs_are_found():
    assert "configs/COCO-Detection/reviewkd_faster_rcnn_R18_from_R101_FPN_1x.yaml" in CONFIGS
    assert "configs/Shapes-Detection/faster_rcnn_R50_FPN_3x.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_builds(path, monkeypatch):
    monkeypatch.chdir(REPO)  # configs name their teachers relative to the repository root
    cfg = get_cfg()
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.META_ARCHITECTURE != "Distiller":
        _build_solver(cfg, build_model(cfg))
        return
    d = cfg.MODEL.DISTILL
    student = build_meta_arch(cfg, d.STUDENT_META_ARCHITECTURE, "STUDENT_META_ARCHITECTURE")
    tcfg = load_teacher_config(cfg)
    teacher = build_meta_arch(tcfg, tcfg.MODEL.META_ARCHITECTURE, "teacher META_ARCHITECTURE")
    terms = build_distill_terms(cfg, student, teacher)
    assert [t.CONFIG_KEY for t in terms] == [n.upper() for n in d.LOSSES]
    request = TargetRequest()
    for term in terms:
        request = request | term.request()
    TargetExtractor(student, teacher, request, input_format=cfg.INPUT.FORMAT,
                    teacher_format=tcfg.INPUT.FORMAT)  # fmt: skip
    assert d.TEACHER.WEIGHTS, f"{path}: a distillation config names its teacher's weights"
    _build_solver(cfg, torch.nn.ModuleList([student, terms]))


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

"""MODEL.DISTILL.INHERIT: a new run initialises the student's named parameters from the teacher's
of the same name and shape (the one-stage COCO configs of MGD, FGD and CrossKD do so)."""

import pytest
import torch
from _tiny import distill_cfg, write_teacher
from detectron2.modeling import build_model

from d2dist.checkpoint import initialise_student
from d2dist.errors import ConfigError
from d2dist.modeling import TeacherNotLoadedError

NECK_AND_HEAD = ["backbone.fpn_", "backbone.top_block", "head"]


def _cfg(tmp_path, inherit, **teacher):
    cfg = distill_cfg("retinanet", *write_teacher(str(tmp_path), "retinanet", **teacher),
                      losses=["PKD"])  # fmt: skip
    cfg.MODEL.DISTILL.PKD.IN_FEATURES = ["p3", "p4"]
    cfg.MODEL.DISTILL.INHERIT = inherit
    return cfg


def test_the_neck_and_head_start_from_the_teacher(tmp_path):
    model = build_model(_cfg(tmp_path, NECK_AND_HEAD, MODEL__FPN__OUT_CHANNELS=16))
    with pytest.raises(TeacherNotLoadedError):
        model.inherit_from_teacher()  # the teacher's weights first
    model.load_teacher()
    bottom_up = {k: v.clone() for k, v in model.student.backbone.bottom_up.state_dict().items()}
    initialise_student(model, "", "MODEL.WEIGHTS")  # a new run's start, as the trainers do
    s, t = model.student.state_dict(), model.teacher.state_dict()
    inherited, skipped = model._inherited_keys()
    assert inherited and all(torch.equal(s[k], t[k]) for k in inherited)
    assert {"head.cls_score.weight", "head.cls_subnet.0.weight", "backbone.fpn_output3.weight",
            "backbone.top_block.p7.weight"} <= set(inherited)  # fmt: skip
    # the lateral convs and P6 read ResNets of other widths: their kernels are left as they were
    assert set(skipped) == {
        "backbone.fpn_lateral3.weight",
        "backbone.fpn_lateral4.weight",
        "backbone.fpn_lateral5.weight",
        "backbone.top_block.p6.weight",
    }
    # the student's ResNet-18 stays its own (the teacher's is a ResNet-50)
    for k, v in model.student.backbone.bottom_up.state_dict().items():
        assert torch.equal(v, bottom_up[k])


def test_what_does_not_fit_is_left_as_it_is(tmp_path):
    # one anchor shape per location in the teacher, three in the student: their predictors differ
    model = build_model(_cfg(tmp_path, ["head"], MODEL__FPN__OUT_CHANNELS=16,
                             MODEL__ANCHOR_GENERATOR__ASPECT_RATIOS=[[1.0]]))  # fmt: skip
    model.load_teacher()
    before = model.student.head.cls_score.weight.clone()
    copied = model.inherit_from_teacher()
    _, skipped = model._inherited_keys()
    assert "head.cls_subnet.0.weight" in copied and "head.bbox_subnet.0.bias" in copied
    assert {"head.cls_score.weight", "head.bbox_pred.weight"} <= set(skipped)
    assert torch.equal(model.student.head.cls_score.weight, before)
    torch.testing.assert_close(model.student.head.cls_subnet[0].weight,
                               model.teacher.head.cls_subnet[0].weight)  # fmt: skip


def test_prefixes_are_checked_at_build_time(tmp_path):
    with pytest.raises(ConfigError, match="INHERIT names 'neck', which starts no parameter"):
        build_model(_cfg(tmp_path, ["neck"]))
    with pytest.raises(ConfigError, match="no student parameter under these prefixes has a "
                       "teacher parameter of the same name and shape"):  # fmt: skip
        build_model(_cfg(tmp_path, ["backbone.fpn_"]))  # FPN widths 16 and 32

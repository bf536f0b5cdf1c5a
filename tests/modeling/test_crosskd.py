"""CrossKD (Wang et al., CVPR 2024) for RetinaNet and FCOS students: its loss functions, its
normalisers, a student that is a copy of its teacher (every loss ~0), and the term end to end."""

import pytest
import torch
import torch.nn.functional as F
from _tiny import build_distiller, distill_cfg, inputs, tiny_cfg, write_teacher
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from d2dist.errors import ConfigError
from d2dist.modeling import Distiller, Teacher, TermSpec
from d2dist.modeling.terms import quality_focal_kd_loss
from d2dist.modeling.terms.crosskd import box_iou_aligned

SAME_WIDTH = {"MODEL__FPN__OUT_CHANNELS": 16}  # the tiny teachers' heads at the students' width


def test_quality_focal_kd_fixed_values_and_zero_at_agreement():
    s, t = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    # row 1: BCE(0, 0.5) * |0.5 - 0.5| = 0; BCE(2, 0.5) * |sigmoid(2) - 0.5|
    bce = F.binary_cross_entropy_with_logits(torch.tensor(2.0), torch.tensor(0.5))
    expected = bce * (torch.sigmoid(torch.tensor(2.0)) - 0.5)
    torch.testing.assert_close(quality_focal_kd_loss(s, t, torch.ones(1)), expected)
    torch.testing.assert_close(quality_focal_kd_loss(s, t, torch.zeros(1)), torch.tensor(0.0))
    beta2 = quality_focal_kd_loss(s, t, torch.ones(1), beta=2.0)
    torch.testing.assert_close(beta2, bce * (torch.sigmoid(torch.tensor(2.0)) - 0.5) ** 2)
    assert quality_focal_kd_loss(t, t, torch.ones(1)) == 0


def test_aligned_iou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(box_iou_aligned(a, b), torch.tensor([1.0 / 7, 1.0]))


def test_retinanet_box_regression_weighs_ignored_anchors_zero_like_the_authors():
    """The authors weigh each anchor's box loss by the teacher's top class probability and zero it
    where the classification weight is 0 (the anchors RetinaNet's matcher ignores, IoU in
    [0.4, 0.5)). Three anchors, all decoding the cross-head to [0, 0, 10, 10]; the teacher's boxes
    [0, 0, 10, 12] (positive), [5, 5, 15, 15] (negative), [2, 0, 12, 10] (ignored)."""
    from d2dist.modeling.terms.crosskd import CrossKD

    student = build_model(tiny_cfg("retinanet"))
    term = CrossKD(weight=1.0, student=student, depth=3, cls_weight=1.0, reg_weight=1.0, beta=1.0)
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(3, 1)
    teacher_boxes = torch.tensor([[0.0, 0.0, 10.0, 12.0], [5.0, 5.0, 15.0, 15.0],
                                  [2.0, 0.0, 12.0, 10.0]])  # fmt: skip
    t_deltas = student.box2box_transform.get_deltas(anchor, teacher_boxes)
    t_logits = torch.tensor([[1.0, -3.0], [-2.0, -5.0], [0.5, -1.0]])  # max: 1, -2, 0.5
    valid = torch.tensor([[1.0, 1.0, 0.0]])  # the classification weights: ignored -> 0
    reg = term._regression(
        [Boxes(anchor)], torch.zeros(1, 3, 4), t_deltas[None], t_logits[None], valid
    )
    # GIoU losses by hand: 1 - 100/120; 1 - (25/175 - (225 - 175)/225); (ignored: 1 - 80/120)
    sig = torch.sigmoid
    expected = sig(torch.tensor(1.0)) * (1 - 100 / 120) + sig(torch.tensor(-2.0)) * (
        1 - (25 / 175 - 50 / 225)
    )
    torch.testing.assert_close(reg, expected, rtol=1e-5, atol=1e-6)
    assert abs(float(reg) - 0.25051) < 1e-4  # the value of the authors' formula
    everywhere = term._regression(
        [Boxes(anchor)], torch.zeros(1, 3, 4), t_deltas[None], t_logits[None], torch.ones(1, 3)
    )
    assert abs(float(everywhere) - 0.45799) < 1e-4  # the ignored anchor counted: d2dist before


def _copy_of_the_teacher(arch, depth):
    """A student that is a copy of its teacher (same config and weights; frozen norms, so that
    the student in training mode computes what the teacher computes in eval mode)."""
    cfg = tiny_cfg(arch, role="teacher")
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    torch.manual_seed(3)
    teacher = build_model(cfg)
    # small box deltas: a random head's large ones decode to empty boxes, where the GIoU (of any
    # implementation) of two equal boxes is not 1 (0 / (0 + eps))
    teacher.head.bbox_pred.weight.data.mul_(0.1)
    if arch == "fcos":  # its deltas are distances to the box sides, in strides: about one
        teacher.head.bbox_pred.bias.data.fill_(1.0)
    student = build_model(cfg)
    student.load_state_dict(teacher.state_dict())
    return Distiller(student=student, teacher=Teacher(teacher, loaded=True, input_format="BGR"),
                     terms=[TermSpec("CrossKD", depth=depth)], input_format="BGR")  # fmt: skip


@pytest.mark.parametrize("arch,depth", [("retinanet", 1), ("retinanet", 0), ("fcos", 1)])
def test_a_student_that_copies_its_teacher_has_nothing_to_learn(arch, depth):
    model = _copy_of_the_teacher(arch, depth)
    model.train()
    torch.manual_seed(0)
    with EventStorage(0) as storage:
        losses = model(inputs(arch))
    logged = storage.latest()
    assert logged["distill/crosskd/cls"][0] < 1e-4 and logged["distill/crosskd/reg"][0] < 1e-4
    assert losses["loss_distill_crosskd"].abs() < 1e-4
    # ... while a student that differs below the cut has something to learn
    with torch.no_grad():
        for conv in (model.student.backbone.fpn_output3, model.student.backbone.fpn_output4):
            conv.weight.add_(0.2 * torch.randn_like(conv.weight))  # (alignment undoes a scale)
        model.student.head.cls_subnet[0].weight.add_(0.05 * torch.randn_like(
            model.student.head.cls_subnet[0].weight))  # fmt: skip
    with EventStorage(0):
        assert model(inputs(arch))["loss_distill_crosskd"] > 1e-2


def _targets_and_term(model, batch):
    model.train()
    torch.manual_seed(0)
    with EventStorage(0):
        with model.extractor.student_recorder() as rec:
            model.student(batch)
        return model.extractor.extract(batch, rec), model.terms[0]


def test_retinanet_normaliser_is_the_number_of_positive_anchors(tmp_path):
    teacher = write_teacher(str(tmp_path), "retinanet", **SAME_WIDTH)
    cfg = distill_cfg("retinanet", *teacher, losses=["CrossKD"])
    cfg.MODEL.DISTILL.CROSSKD.DEPTH = 1
    model = build_distiller(cfg)
    batch = inputs("retinanet")
    targets, term = _targets_and_term(model, batch)
    grids = targets.cross_head.student_features[(term.depth, "reg")]
    anchors = model.student.anchor_generator(grids)
    labels, _ = model.student.label_anchors(anchors, [x["instances"] for x in batch])
    labels = torch.stack(labels)
    weights, normalizer = term._assignment(anchors, [x["instances"] for x in batch])
    positives = ((labels >= 0) & (labels != model.student.num_classes)).sum()
    assert normalizer == positives.clamp(min=1) and positives > 0
    assert torch.equal(weights, (labels >= 0).float())  # ignored anchors weigh 0
    assert (labels == -1).any()


def test_fcos_normaliser_is_the_positives_centerness(tmp_path):
    teacher = write_teacher(str(tmp_path), "fcos", **SAME_WIDTH)
    cfg = distill_cfg("fcos", *teacher, losses=["CrossKD"])
    cfg.MODEL.DISTILL.CROSSKD.DEPTH = 1
    model = build_distiller(cfg)
    batch = inputs("fcos")
    targets, term = _targets_and_term(model, batch)
    grids = targets.cross_head.student_features[(1, "reg")]
    anchors = model.student.anchor_generator(grids)
    labels, boxes = model.student.label_anchors(anchors, [x["instances"] for x in batch])
    positive = torch.stack(labels) != model.student.num_classes
    ctrness = model.student.compute_ctrness_targets(anchors, boxes)
    weights, normalizer = term._assignment(anchors, [x["instances"] for x in batch])
    torch.testing.assert_close(normalizer, ctrness[positive].sum())
    assert (weights == 1).all()


def test_the_term_end_to_end_and_its_checks(tmp_path):
    teacher = write_teacher(str(tmp_path), "retinanet", **SAME_WIDTH)
    cfg = distill_cfg("retinanet", *teacher, losses=["CrossKD", "PKD"])
    cfg.MODEL.DISTILL.CROSSKD.DEPTH = 1
    cfg.MODEL.DISTILL.PKD.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    model = build_distiller(cfg)
    model.train()
    torch.manual_seed(0)
    with EventStorage(0):
        losses = model(inputs("retinanet"))
    assert losses["loss_distill_crosskd"] > 0 and torch.isfinite(losses["loss_distill_pkd"])
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())

    cfg.MODEL.DISTILL.CROSSKD.CLS_WEIGHT = cfg.MODEL.DISTILL.CROSSKD.REG_WEIGHT = 0.0
    with pytest.raises(ConfigError, match="CLS_WEIGHT and REG_WEIGHT are both 0"):
        build_distiller(cfg)
    cfg.MODEL.DISTILL.CROSSKD.CLS_WEIGHT = 1.0
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    with pytest.raises(ConfigError, match="their anchors differ"):
        build_distiller(cfg)

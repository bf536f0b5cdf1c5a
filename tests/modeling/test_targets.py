"""Target kinds: the registry (a user's own kind, with no edit of d2dist), requests, the ground truth
at feature resolution, the cross-head kind's structure, the DeepLab pooling check, leaves."""

import pytest
import torch
from _tiny import build_distiller, distill_cfg, extract_targets, inputs, tiny_cfg, write_teacher
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from d2dist.errors import ConfigError
from d2dist.modeling import Distiller, Teacher, TermSpec
from d2dist.modeling.targets import (
    TARGET_KIND_REGISTRY,
    LevelGroundTruth,
    TargetKind,
    TargetNotRequested,
    TargetRequest,
    Targets,
    leaf,
)
from d2dist.modeling.targets.cross_head import align_to
from d2dist.modeling.terms import DISTILL_TERM_REGISTRY, DistillTerm, TermOutput


def _step(model, batch, iteration=0):
    torch.manual_seed(0)
    model.train()
    with EventStorage(iteration):
        return model(batch)


def test_requests_merge_options_per_kind_in_order():
    a = TargetRequest(features=("p2", "p3"), roi=())
    b = TargetRequest(features=("p3", "p4"), gt=("p2",))
    merged = a | b
    assert dict(merged) == {"features": ("p2", "p3", "p4"), "roi": (), "gt": ("p2",)}
    assert "roi" in merged and "dense" not in merged
    assert a | TargetRequest() == a
    assert TargetRequest(roi=()) == TargetRequest(roi=[])


def test_targets_read_by_kind_and_unrequested_kinds_are_errors():
    t = Targets({"roi": 1}, batched_inputs=["x"])
    assert t.roi == 1 and t["roi"] == 1 and t.batched_inputs == ["x"]
    assert "pixel" not in t
    for read in (lambda: t.pixel, lambda: t["pixel"]):
        with pytest.raises(TargetNotRequested, match=r"read the target kind 'pixel'.*\['roi'\]"):
            read()
    with pytest.raises(AttributeError, match="registered kinds"):
        t.nonsense


def test_a_term_reading_a_kind_it_did_not_request_is_named():
    """Each term reads its own view of the step's targets: a user's term whose forward reads a
    kind its request() omits fails there, naming the term and the kind, even when another term of
    the step requested that kind."""

    class UsesRoi(DistillTerm):
        def request(self):
            return TargetRequest(roi=())

        def forward(self, targets):
            s, t = targets.roi
            return TermOutput((s - t).square().mean())

    class Forgetful(DistillTerm):
        def request(self):
            return TargetRequest(features=("p2",))

        def forward(self, targets):
            s, t = targets.roi  # not requested
            return TermOutput((s - t).square().mean())

    student = build_model(tiny_cfg("faster_rcnn"))
    teacher = Teacher(build_model(tiny_cfg("faster_rcnn", role="teacher")), loaded=True)
    model = Distiller(student=student, teacher=teacher, terms=[UsesRoi(weight=1.0)])
    assert torch.isfinite(_step(model, inputs("faster_rcnn"))["loss_distill_usesroi"])
    model = Distiller(student=student, teacher=teacher,
                      terms=[UsesRoi(weight=1.0), Forgetful(weight=1.0)])  # fmt: skip
    with pytest.raises(
        TargetNotRequested,
        match=r"term 'FORGETFUL' read the target kind 'roi', but its request\(\) names "
        r"\['features'\]",
    ):
        _step(model, inputs("faster_rcnn"))


def test_the_built_in_kinds_are_registered_by_name():
    names = {n for n, _ in TARGET_KIND_REGISTRY}
    assert {"features", "roi", "dense", "pixel", "gt", "cross_head"} <= names


@pytest.fixture
def user_kind_and_term():
    """A user's own kind (the teacher's RPN objectness logits on the step's images, paired with
    the student's) and a term using it, registered from outside d2dist."""

    class RPNObjectness(TargetKind):
        name = "test_rpn_objectness"

        def student_outputs(self):
            return ["proposal_generator.rpn_head"]

        def teacher_forward(self, run, student_rec):
            feats = [run.features[f] for f in self.teacher_model.proposal_generator.in_features]
            return self.teacher_model.proposal_generator.rpn_head(feats)[0]

        def pair(self, batched_inputs, student_rec, teacher_out):
            s = student_rec.output("proposal_generator.rpn_head")[0]
            return {i: (a, b.float()) for i, (a, b) in enumerate(zip(s, teacher_out))}

    class TestObjectnessMSE(DistillTerm):
        def __init__(self, weight=1.0):
            super().__init__(weight=weight)

        def request(self):
            return TargetRequest(test_rpn_objectness=())

        def forward(self, targets):
            parts = {f"l{i}": (s - t).square().mean()
                     for i, (s, t) in targets.test_rpn_objectness.items()}  # fmt: skip
            return TermOutput(torch.stack(list(parts.values())).sum(), parts)

    TARGET_KIND_REGISTRY.register(RPNObjectness)
    DISTILL_TERM_REGISTRY.register(TestObjectnessMSE)
    yield RPNObjectness, TestObjectnessMSE
    TARGET_KIND_REGISTRY._obj_map.pop("test_rpn_objectness")  # tests leave the registries clean
    DISTILL_TERM_REGISTRY._obj_map.pop("TestObjectnessMSE")


def test_a_users_own_kind_and_term_work_without_editing_d2dist(user_kind_and_term, tmp_path):
    kind, term = user_kind_and_term
    student = build_model(tiny_cfg("faster_rcnn"))
    teacher = build_model(tiny_cfg("faster_rcnn", role="teacher"))
    model = Distiller(student=student, teacher=Teacher(teacher, loaded=True), terms=[term()])
    assert isinstance(model.extractor.kinds["test_rpn_objectness"], kind)
    losses = _step(model, inputs("faster_rcnn"))
    assert torch.isfinite(losses["loss_distill_testobjectnessmse"])
    sum(losses.values()).backward()
    assert student.proposal_generator.rpn_head.objectness_logits.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_an_unknown_kind_is_a_config_error():
    class Asks(DistillTerm):
        def request(self):
            return TargetRequest(nothing_of_that_name=())

    student = build_model(tiny_cfg("faster_rcnn"))
    teacher = Teacher(build_model(tiny_cfg("faster_rcnn", role="teacher")), loaded=True)
    with pytest.raises(ConfigError, match="'nothing_of_that_name' is not registered.*'gt'"):
        Distiller(student=student, teacher=teacher, terms=[Asks(weight=1.0)])


def _instances(boxes, size=64, masks=None):
    inst = Instances((size, size))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.zeros(len(boxes), dtype=torch.long)
    if masks is not None:
        inst.gt_masks = masks
    return inst


def test_ground_truth_coverage_of_boxes_is_exact():
    gt = LevelGroundTruth([torch.tensor([[4.0, 0.0, 12.0, 6.0]])], [torch.zeros(1)],
                          [(16, 16)], stride=8)  # fmt: skip
    cover = gt.coverage((2, 2))[0][0]
    # x: [4, 12) covers half of column 0 ([0, 8)) and half of column 1; y: [0, 6) 3/4 of row 0
    torch.testing.assert_close(cover, torch.tensor([[0.375, 0.375], [0.0, 0.0]]))
    torch.testing.assert_close(gt.level_boxes()[0], torch.tensor([[0.5, 0.0, 1.5, 0.75]]))


def test_ground_truth_coverage_of_masks_pools_their_pixels():
    bits = torch.zeros(1, 6, 6, dtype=torch.bool)
    bits[0, :2, :4] = True  # 8 pixels: rows 0-1, columns 0-3
    gt = LevelGroundTruth([torch.tensor([[0.0, 0.0, 4.0, 2.0]])], [torch.zeros(1)], [(6, 6)],
                          stride=4, instance_masks=[BitMasks(bits)])  # fmt: skip
    cover = gt.coverage((2, 2))[0][0]  # a grid of 8 x 8 pixels: the mask is padded
    torch.testing.assert_close(cover, torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
    polygon = PolygonMasks([[[0.0, 0.0, 4.0, 0.0, 4.0, 2.0, 0.0, 2.0]]])
    gt.instance_masks = [polygon]
    poly_cover = gt.coverage((2, 2))[0][0]
    assert poly_cover[0, 0] > 0 and poly_cover[1:].sum() == 0 and poly_cover[:, 1].sum() == 0


def test_the_gt_kind_maps_each_images_boxes_onto_the_levels(tmp_path):
    teacher = write_teacher(str(tmp_path), "faster_rcnn")
    cfg = distill_cfg("faster_rcnn", *teacher, losses=["FGD"])
    model = build_distiller(cfg)
    batch = inputs("faster_rcnn")
    targets, _ = extract_targets(model, batch)
    assert set(targets.gt) == {"p2", "p3", "p4", "p5"}
    p3 = targets.gt["p3"]
    assert p3.stride == 8 and p3.image_sizes == [(64, 64), (64, 64)]
    for got, x in zip(p3.boxes, batch):
        assert torch.equal(got, x["instances"].gt_boxes.tensor)
    assert p3.instance_masks is not None  # the batch has BitMasks
    assert model.extractor.kinds["gt"].leaf(targets.gt) is targets.gt  # no student tensors
    unannotated = [{k: v for k, v in x.items() if k != "instances"} for x in batch]
    with pytest.raises(ConfigError, match="needs the ground-truth instances"):
        model.extractor.kinds["gt"].pair(unannotated, None, None)


def test_the_gt_kind_checks_its_levels(tmp_path):
    teacher = write_teacher(str(tmp_path), "faster_rcnn")
    cfg = distill_cfg("faster_rcnn", *teacher, losses=["FGD"])
    cfg.MODEL.DISTILL.FGD.IN_FEATURES = ["p2", "p9"]
    with pytest.raises(ConfigError, match="'p9'"):
        build_distiller(cfg)


@pytest.fixture(scope="module")
def crosskd_model(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("cross"))
    teacher = write_teacher(tmp, "retinanet", MODEL__FPN__OUT_CHANNELS=16,
                            MODEL__RETINANET__NUM_CONVS=2)  # fmt: skip
    cfg = distill_cfg("retinanet", *teacher, losses=["CrossKD"])
    cfg.MODEL.RETINANET.NUM_CONVS = 2
    cfg.MODEL.DISTILL.CROSSKD.DEPTH = 1
    return build_distiller(cfg)


def test_cross_head_output_is_the_teachers_tail_on_the_aligned_student(crosskd_model):
    model = crosskd_model
    targets, _ = extract_targets(model, inputs("retinanet"))
    value = targets.cross_head
    t_head = model.teacher.head
    for branch, subnet, predictor in (("cls", t_head.cls_subnet, t_head.cls_score),
                                      ("reg", t_head.bbox_subnet, t_head.bbox_pred)):  # fmt: skip
        aligned = value.aligned(1, branch)
        cross = value.cross(1, branch)
        stats = value.teacher_stats[(1, branch)]
        for z, c, s, (mean, std) in zip(aligned, cross, value.student_features[(1, branch)],
                                        stats):  # fmt: skip
            # the student's feature after its first conv (pre-activation), with the teacher's
            # per-channel mean and std there
            torch.testing.assert_close(z.mean(dim=(0, 2, 3)), mean, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(z.std(dim=(0, 2, 3)), std, atol=1e-4, rtol=1e-3)
            # the teacher's layers from the ReLU that ends its first conv, then its predictor
            expected = predictor(subnet[3](subnet[2](subnet[1](z))))
            torch.testing.assert_close(c, expected)
            assert s.requires_grad and z.shape == s.shape


def test_cross_head_gradients_reach_only_the_student_below_the_cut(crosskd_model):
    model = crosskd_model
    model.zero_grad()
    losses = _step(model, inputs("retinanet"))
    losses["loss_distill_crosskd"].backward()
    s_head = model.student.head
    assert s_head.cls_subnet[0].weight.grad.abs().sum() > 0  # below the cut (conv 1)
    assert s_head.bbox_subnet[0].weight.grad.abs().sum() > 0
    assert model.student.backbone.fpn_output3.weight.grad.abs().sum() > 0
    for module in (s_head.cls_subnet[2], s_head.bbox_subnet[2], s_head.cls_score, s_head.bbox_pred):
        assert module.weight.grad is None  # from the cut on: nothing from these losses
    assert all(p.grad is None for p in model.teacher.parameters())


def test_align_to_gives_the_target_statistics():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 4, 5) * 3 + 1
    mean, std = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 0.1, 4.0])
    z = align_to(s, mean, std)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), std, atol=1e-5, rtol=1e-5)


def test_cross_head_checks(tmp_path):
    teacher = write_teacher(str(tmp_path), "retinanet")  # FPN width 32, the student's 16
    cfg = distill_cfg("retinanet", *teacher, losses=["CrossKD"])
    cfg.MODEL.DISTILL.CROSSKD.DEPTH = 1
    with pytest.raises(ConfigError, match="cut 1: the student's cls_subnet has 16 channels"):
        build_distiller(cfg)
    teacher = write_teacher(str(tmp_path), "retinanet", MODEL__FPN__OUT_CHANNELS=16)
    cfg = distill_cfg("retinanet", *teacher, losses=["CrossKD"])
    cfg.MODEL.DISTILL.CROSSKD.DEPTH = 3  # the tiny heads have one conv
    with pytest.raises(ConfigError, match="cut 3 .* has 1 convs; use a cut from 0 to 1"):
        build_distiller(cfg)
    teacher = write_teacher(str(tmp_path), "faster_rcnn")
    cfg = distill_cfg("faster_rcnn", *teacher, losses=["CrossKD"])
    with pytest.raises(ConfigError, match="CrossKD.*dense detectors.*GeneralizedRCNN"):
        build_distiller(cfg)


def test_the_deeplab_pooling_check_runs_on_every_teacher_kind(tmp_path):
    """A teacher whose ASPP pools with a fixed kernel (its training crop) is checked on the
    step's images, also when it was built by hand (or from a LazyConfig): no yacs config needed."""
    cfg = tiny_cfg("deeplab_v3", role="teacher")
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = True, "absolute", (32, 32)
    t_model = build_model(cfg)  # pool kernel 2 x 2 at stride 16
    student = build_model(tiny_cfg("deeplab_v3"))
    model = Distiller(student=student, teacher=Teacher(t_model, loaded=True, input_format="BGR"),
                      terms=[TermSpec("DIST", target="pixel")], input_format="BGR")  # fmt: skip
    with pytest.raises(ConfigError, match=r"kernel \(2, 2\) fixed for its training crop.*\(4, 4\)"):
        _step(model, inputs("deeplab_v3"))  # 64 px images: a 4 x 4 input
    small = [dict(x, image=x["image"][:, :32, :32], sem_seg=x["sem_seg"][:32, :32])
             for x in inputs("deeplab_v3")]  # fmt: skip
    losses = _step(model, small)  # the teacher's crops: accepted
    assert torch.isfinite(losses["loss_distill_dist"])


def test_leaf_replaces_the_student_side_only():
    s, t = torch.ones(2, requires_grad=True) * 2, torch.zeros(2)
    out = leaf({"p2": (s, t), "x": [(s, t)]})
    a, b = out["p2"]
    assert a.is_leaf and a.requires_grad and b is t and torch.equal(a, s.detach())
    with pytest.raises(TypeError, match="must implement TargetKind.leaf"):
        leaf(object())


def test_dense_heads_on_levels_of_other_strides_are_refused():
    import types

    from detectron2.layers import ShapeSpec

    from d2dist.modeling.targets.base import check_head_strides

    def net(levels):
        shapes = {f"p{i}": ShapeSpec(channels=8, stride=2**i) for i in range(3, 8)}
        backbone = types.SimpleNamespace(output_shape=lambda: shapes)
        return types.SimpleNamespace(backbone=backbone, head_in_features=levels)

    check_head_strides(net(["p3", "p4"]), net(["p3", "p4"]), "dense logits", "why")
    with pytest.raises(ConfigError, match=r"dense logits: student head levels \['p3', 'p4'\] "
                       r"\(strides \[8, 16\]\) and teacher head levels \['p4', 'p5'\] \(strides "
                       r"\[16, 32\]\) differ; why"):  # fmt: skip
        check_head_strides(net(["p3", "p4"]), net(["p4", "p5"]), "dense logits", "why")

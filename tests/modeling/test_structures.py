"""Teachers and students of other projects' structures, end to end on tiny models: a
Panoptic-DeepLab teacher on pixel logits (only its semantic head runs, and only it is checked), a
TridentNet-shaped student (several branches per image, concatenated along the batch), C4 R-CNNs
(Res5ROIHeads) on RoI logits, and a Mask2Former-shaped model (no per-pixel classifier).

The TridentNet- and Mask2Former-shaped parts are written here, in the shape of the upstream
projects' code (which is not installed), and registered under test-only names.
"""

import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from _tiny import (
    NUM_SEM,
    _calibrate_batchnorm,
    build_distiller,
    extract_targets,
    inputs,
    tiny_cfg,
    with_and_without_head_acclimation,
    write_teacher,
)
from detectron2 import model_zoo
from detectron2.layers import Conv2d
from detectron2.modeling import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_HEADS_REGISTRY,
    Backbone,
    build_backbone,
    build_model,
    build_resnet_backbone,
)
from detectron2.modeling.proposal_generator import RPN
from detectron2.modeling.roi_heads import Res5ROIHeads, StandardROIHeads
from detectron2.structures import ImageList
from detectron2.utils.events import EventStorage
from torch import nn

from d2dist.config import get_cfg
from d2dist.errors import ConfigError
from d2dist.modeling import Distiller, Teacher, TermSpec
from d2dist.modeling.targets import natural_logit_target, num_branches, pair_batch, repeat_batch

PANOPTIC_DEEPLAB = "detectron2.projects.panoptic_deeplab.add_panoptic_deeplab_config"
NUM_BRANCH = 3


# ---- helpers ---------------------------------------------------------------------------------
def _save_teacher(tmp, cfg, name, calibrate_as="faster_rcnn"):
    """Write a teacher's config and a checkpoint of its (random, BatchNorm-calibrated) weights."""
    path = os.path.join(str(tmp), f"{name}.yaml")
    with open(path, "w") as f:
        f.write(cfg.dump())
    torch.manual_seed(1)
    model = build_model(cfg)
    _calibrate_batchnorm(model, calibrate_as)
    weights = os.path.join(str(tmp), f"{name}.pth")
    torch.save({"model": model.state_dict()}, weights)
    return path, weights


def _distill(student_cfg, teacher, losses, **namespaces):
    """A Distiller config of ``student_cfg`` taught by ``teacher`` (config, weights); keyword
    arguments set term namespaces: ``MIMIC={"IN_FEATURES": ["res4"]}``."""
    cfg = student_cfg.clone()
    cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = cfg.MODEL.META_ARCHITECTURE
    cfg.MODEL.META_ARCHITECTURE = "Distiller"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE, cfg.MODEL.DISTILL.TEACHER.WEIGHTS = teacher
    cfg.MODEL.DISTILL.LOSSES = list(losses)
    for namespace, values in namespaces.items():
        for key, value in values.items():
            cfg.MODEL.DISTILL[namespace][key] = value
    return cfg


def _train(model, batch, steps=2):
    """Real training steps (SGD on the Distiller's parameters): the last step's losses."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)
    before = [p.detach().clone() for p in model.student.parameters()]
    for i in range(steps):
        torch.manual_seed(i)
        with EventStorage(i):
            losses = model(batch)
        bad = {k: v for k, v in losses.items() if not torch.isfinite(v)}
        assert not bad, bad
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.student.parameters()))
    return losses


# ---- 1. a Panoptic-DeepLab teacher: only the semantic head runs, only it is checked -----------
@pytest.fixture(scope="module")
def panoptic_deeplab():
    """Detectron2's ``projects.panoptic_deeplab``. Its package imports ``panopticapi`` (COCO's
    panoptic API, not on PyPI) for its dataset mapper, which these tests do not use: where it is
    not installed, a stand-in lets the package import and is removed again."""
    stub = None
    try:
        import panopticapi.utils  # noqa: F401
    except ImportError:
        stub = types.ModuleType("panopticapi")
        stub.utils = types.ModuleType("panopticapi.utils")
        stub.utils.rgb2id = None  # used by the dataset mapper only
        sys.modules.update({"panopticapi": stub, "panopticapi.utils": stub.utils})
    try:
        import detectron2.projects.panoptic_deeplab  # noqa: F401  registers PanopticDeepLab
    finally:
        if stub is not None:
            sys.modules.pop("panopticapi")
            sys.modules.pop("panopticapi.utils")
    return PANOPTIC_DEEPLAB


def _panoptic_deeplab_teacher(tmp):
    """Detectron2's own Panoptic-DeepLab (tiny widths), trained on 64 px crops: both heads' ASPPs
    pool with the fixed kernel of those crops; its classes are the tiny semantic models'."""
    cfg = get_cfg(PANOPTIC_DEEPLAB)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "PanopticDeepLab"
    cfg.MODEL.PIXEL_STD = [57.0, 57.0, 58.0]
    cfg.DATASETS.TRAIN = ("test_structures_panoptic_deeplab",)  # its metadata (unused here)
    cfg.INPUT.FORMAT = "BGR"
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = True, "absolute", (64, 64)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_deeplab_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.NORM, r.STEM_TYPE, r.RES5_DILATION = 50, "BN", "deeplab", 2
    r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, r.WIDTH_PER_GROUP = 16, 32, 8
    r.OUT_FEATURES = ["res2", "res3", "res5"]
    for h in (cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.INS_EMBED_HEAD):
        h.IN_FEATURES = ["res2", "res3", "res5"]
        h.PROJECT_FEATURES = ["res2", "res3"]
        h.PROJECT_CHANNELS = [4, 8]
        h.ASPP_CHANNELS, h.CONVS_DIM, h.HEAD_CHANNELS = 16, 16, 8
        h.ASPP_DILATIONS, h.ASPP_DROPOUT = [2, 4, 6], 0.0
        h.COMMON_STRIDE, h.NORM = 4, "BN"
    s = cfg.MODEL.SEM_SEG_HEAD
    s.NAME, s.NUM_CLASSES, s.IGNORE_VALUE = "PanopticDeepLabSemSegHead", NUM_SEM, 255
    s.LOSS_TYPE = "hard_pixel_mining"
    return _save_teacher(tmp, cfg, "panoptic_deeplab", calibrate_as="deeplab_v3")


def _semantic_student_of_panoptic_deeplab(tmp, losses, **namespaces):
    cfg = tiny_cfg("semantic_fpn")
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = True, "absolute", (64, 64)
    cfg = _distill(cfg, _panoptic_deeplab_teacher(tmp), losses, **namespaces)
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FUNCTIONS = [PANOPTIC_DEEPLAB]
    return cfg


@pytest.mark.parametrize("term", ["DIST", "KD"])
def test_a_panoptic_deeplab_teacher_teaches_pixel_logits(panoptic_deeplab, tmp_path, term):
    """Only the semantic head runs for pixel logits: the instance head's ASPP (with its own
    fixed pooling kernel) is not checked, which before was a RecorderError about it."""
    cfg = _semantic_student_of_panoptic_deeplab(tmp_path, [term], **{term: {"TARGET": "pixel"}})
    model = build_distiller(cfg)
    assert type(model.teacher).__name__ == "PanopticDeepLab"
    losses = _train(model, inputs("semantic_fpn"))
    assert losses[f"loss_distill_{term.lower()}"] > 0
    kind = model.extractor.kinds["pixel"]  # the semantic head's pooling is the one checked
    assert kind._pools and all(p.startswith("sem_seg_head.") for p in kind._pools)
    # the pixel logits are the teacher's semantic predictor, resized to the student's 16 x 16
    targets, _ = extract_targets(model, inputs("semantic_fpn"))
    assert targets.pixel.student.shape == targets.pixel.teacher.shape == (2, NUM_SEM, 16, 16)


def test_a_panoptic_deeplab_teacher_still_checks_its_semantic_pooling(panoptic_deeplab, tmp_path):
    cfg = _semantic_student_of_panoptic_deeplab(tmp_path, ["KD"], KD={"TARGET": "pixel"})
    cfg.INPUT.CROP.ENABLED = False
    with pytest.raises(ConfigError, match=r"pools with a kernel made for its training crop"):
        build_distiller(cfg)
    cfg = _semantic_student_of_panoptic_deeplab(tmp_path, ["KD"], KD={"TARGET": "pixel"})
    model = build_distiller(cfg)
    pad = (0, 64, 0, 64)
    big = [dict(x, image=F.pad(x["image"], pad), sem_seg=F.pad(x["sem_seg"], pad))
           for x in inputs("semantic_fpn")]  # fmt: skip
    with pytest.raises(ConfigError, match=r"\(sem_seg_head\..*kernel \(4, 4\) fixed.*\(8, 8\)"):
        _train(model, big, steps=1)  # 128 px images: the semantic ASPP would pool locally


# ---- 2. TridentNet-shaped students: k branches per image, branch-major ------------------------
class _TridentShapedBackbone(Backbone):
    """TridentNet's shape: a ResNet to res4 once, then one trident block whose k branches share
    their weights with dilations 1..k; in training (and in eval with ``test_branch_idx`` -1)
    the branches are concatenated along the batch, branch-major ([branch 0's images, branch 1's,
    ...]), otherwise one branch runs."""

    def __init__(self, cfg, input_shape):
        super().__init__()
        self.resnet = build_resnet_backbone(cfg, input_shape)
        assert list(self.resnet.output_shape()) == ["res4"]
        channels = self.resnet.output_shape()["res4"].channels
        self.trident = nn.Conv2d(channels, channels, 3, padding=1)
        self.dilations = tuple(range(1, NUM_BRANCH + 1))
        self.test_branch_idx = 1

    def forward(self, x):
        y = self.resnet(x)["res4"]
        all_branches = self.training or self.test_branch_idx == -1
        dilations = self.dilations if all_branches else [self.dilations[self.test_branch_idx]]
        w, b = self.trident.weight, self.trident.bias
        branches = [y + F.relu(F.conv2d(y, w, b, padding=d, dilation=d)) for d in dilations]
        return {"res4": torch.cat(branches)}

    def output_shape(self):
        return self.resnet.output_shape()


@BACKBONE_REGISTRY.register()
def build_structures_test_trident_backbone(cfg, input_shape):
    return _TridentShapedBackbone(cfg, input_shape)


def _branches(features, images) -> int:
    return next(iter(features.values())).shape[0] // len(images)


@PROPOSAL_GENERATOR_REGISTRY.register()
class StructuresTestTridentRPN(RPN):
    """TridentNet's RPN: the images and ground truth repeated once per branch."""

    def forward(self, images, features, gt_instances=None):
        k = _branches(features, images)
        images = ImageList(torch.cat([images.tensor] * k), images.image_sizes * k)
        return super().forward(images, features, gt_instances * k if gt_instances else None)


@ROI_HEADS_REGISTRY.register()
class StructuresTestTridentRes5ROIHeads(Res5ROIHeads):
    """TridentNet's C4 RoI heads: the ground truth repeated once per branch."""

    def forward(self, images, features, proposals, targets=None):
        k = len(proposals) // len(images)
        return super().forward(images, features, proposals, targets * k if targets else None)


@ROI_HEADS_REGISTRY.register()
class StructuresTestTridentStandardROIHeads(StandardROIHeads):
    """TridentNet's RoI heads for pooled-box heads: the ground truth repeated once per branch."""

    def forward(self, images, features, proposals, targets=None):
        k = len(proposals) // len(images)
        return super().forward(images, features, proposals, targets * k if targets else None)


def _c4_cfg(role="student"):
    """Detectron2's own C4 R-CNN (Base-RCNN-C4.yaml: Res5ROIHeads on res4 of
    build_resnet_backbone), at tiny widths: res4 of 64 (student) or 128 (teacher) channels."""
    cfg = tiny_cfg("faster_rcnn", role)
    cfg.merge_from_file(model_zoo.get_config_file("Base-RCNN-C4.yaml"))
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads"
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100, 50
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    r = cfg.MODEL.RESNETS
    r.DEPTH, r.STEM_OUT_CHANNELS = 50, 16
    r.RES2_OUT_CHANNELS, r.WIDTH_PER_GROUP = (16, 4) if role == "student" else (32, 8)
    r.OUT_FEATURES = ["res4"]
    cfg.MODEL.RPN.IN_FEATURES = ["res4"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32]]
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
    return cfg


def _trident_cfg(roi_heads="StructuresTestTridentRes5ROIHeads"):
    """A tiny TridentNet-shaped C4 student (as upstream's Base-TridentNet-Fast-C4)."""
    cfg = _c4_cfg("student")
    cfg.MODEL.BACKBONE.NAME = "build_structures_test_trident_backbone"
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "StructuresTestTridentRPN"
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    return cfg


@pytest.fixture(scope="module")
def c4_teacher(tmp_path_factory):
    return _save_teacher(tmp_path_factory.mktemp("c4"), _c4_cfg("teacher"), "c4_teacher")


@pytest.fixture(scope="module")
def fpn_teacher(tmp_path_factory):
    return write_teacher(str(tmp_path_factory.mktemp("fpn")), "faster_rcnn")


def test_the_trident_shaped_student_runs_three_branches_per_image():
    student = build_model(_trident_cfg())
    student.train()
    feats = student.backbone(torch.zeros(2, 3, 64, 64))
    assert feats["res4"].shape[0] == 2 * NUM_BRANCH
    student.eval()
    assert student.backbone(torch.zeros(2, 3, 64, 64))["res4"].shape[0] == 2


def test_a_trident_student_trains_with_feature_terms(c4_teacher):
    """MIMIC and PKD pair each branch's res4 with the teacher's res4 of the same image. Before,
    the feature terms failed on the batches (6 rows against 2)."""
    levels = {"IN_FEATURES": ["res4"]}
    cfg = _distill(_trident_cfg(), c4_teacher, ["MIMIC", "PKD"], MIMIC=levels, PKD=levels)
    torch.manual_seed(0)
    model = build_distiller(cfg)
    losses = _train(model, inputs("faster_rcnn"))
    assert losses["loss_distill_mimic"] > 0 and losses["loss_distill_pkd"] > 0

    batch = inputs("faster_rcnn")
    targets, _ = extract_targets(model, batch)
    s, t = targets.features["res4"]
    assert s.shape[0] == t.shape[0] == 2 * NUM_BRANCH
    with torch.no_grad():
        t_res4 = model.teacher.backbone(model.teacher_wrapper.images(batch, "BGR").tensor)["res4"]
    for branch in range(NUM_BRANCH):  # branch-major: rows 2b, 2b + 1 are images 0, 1
        torch.testing.assert_close(t[2 * branch : 2 * branch + 2], t_res4)


def test_a_trident_student_trains_with_roi_logits_and_feature_terms(c4_teacher):
    """KD's RoI logits score each branch's RoIs with the teacher's features of their image."""
    levels = {"IN_FEATURES": ["res4"]}
    cfg = _distill(_trident_cfg(), c4_teacher, ["MIMIC", "PKD", "KD"], MIMIC=levels, PKD=levels)
    torch.manual_seed(0)
    model = build_distiller(cfg)
    losses = _train(model, inputs("faster_rcnn"))
    assert {"loss_distill_mimic", "loss_distill_pkd", "loss_distill_kd"} <= set(losses)

    batch = inputs("faster_rcnn")
    targets, rec = extract_targets(model, batch)
    (_, boxes), = rec.all_inputs("roi_heads.pooler")  # fmt: skip
    assert len(boxes) == 2 * NUM_BRANCH
    heads = model.teacher.roi_heads
    with torch.no_grad():
        t_res4 = model.teacher.backbone(model.teacher_wrapper.images(batch, "BGR").tensor)["res4"]
        expected = torch.cat([
            heads.box_predictor(heads._shared_roi_transform([t_res4[i % 2 : i % 2 + 1]], [b])
                                .mean(dim=[2, 3]))[0]
            for i, b in enumerate(boxes)
        ])  # fmt: skip
    torch.testing.assert_close(targets.roi.teacher, expected, rtol=1e-4, atol=1e-5)
    assert targets.roi.student.shape == expected.shape


def test_a_trident_student_with_an_fpn_teacher_on_roi_logits(fpn_teacher):
    """The teacher's FPN box pooler gets each level repeated once per student branch."""
    cfg = _distill(_trident_cfg(), fpn_teacher, ["KD", "DIST"], KD={"TARGET": "auto"})
    model = build_distiller(cfg)
    losses = _train(model, inputs("faster_rcnn"))
    assert losses["loss_distill_kd"] > 0 and torch.isfinite(losses["loss_distill_dist"])


def test_a_trident_student_with_pooled_box_heads_and_fgd(c4_teacher):
    """TridentNet's StandardROIHeads variant, and FGD: the ground truth of each image is given
    once per branch, as the student's res4 rows are."""
    levels = {"IN_FEATURES": ["res4"]}
    cfg = _distill(_trident_cfg("StructuresTestTridentStandardROIHeads"), c4_teacher,
                   ["FGD", "KD"], FGD=levels)  # fmt: skip
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    model = build_distiller(cfg)
    losses = _train(model, inputs("faster_rcnn"))
    assert torch.isfinite(losses["loss_distill_fgd"]) and losses["loss_distill_kd"] > 0
    targets, _ = extract_targets(model, inputs("faster_rcnn"))
    assert len(targets.gt["res4"].boxes) == 2 * NUM_BRANCH


def test_a_teacher_running_all_its_branches_cannot_be_paired():
    """A TridentNet-shaped teacher that runs all its branches in eval mode has 3 rows per image,
    the student one: no pairing makes sense, and the message says how to fix it."""
    t_cfg = _trident_cfg()
    t_cfg.MODEL.RESNETS.RES2_OUT_CHANNELS, t_cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 32, 8
    teacher = build_model(t_cfg)
    teacher.backbone.test_branch_idx = -1  # eval: all branches (TEST_BRANCH_IDX -1)
    student = build_model(_c4_cfg())
    model = Distiller(
        student=student,
        teacher=Teacher(teacher, loaded=True, input_format="BGR"),
        terms=[TermSpec("MIMIC", in_features=["res4"])],
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"feature 'res4': a batch of 2 in the student and of "
                                          r"6 in the teacher.*TEST_BRANCH_IDX"):  # fmt: skip
        _train(model, inputs("faster_rcnn"), steps=1)
    model = Distiller(
        student=student,
        teacher=Teacher(teacher, loaded=True, input_format="BGR"),
        terms=[TermSpec("KD", target="roi")],
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"RoI logits .*a batch of 2 in the student and of 6"):
        _train(model, inputs("faster_rcnn"), steps=1)


def test_cross_head_refuses_a_student_with_several_rows_per_image(tmp_path):
    """CrossKD assigns each image's ground truth to the student's anchors, one row per image:
    a dense head that ran on 2 rows for 1 image (as a 2-branch student would) is refused."""
    teacher = write_teacher(str(tmp_path), "retinanet", MODEL__FPN__OUT_CHANNELS=16)
    cfg = _distill(tiny_cfg("retinanet"), teacher, ["CrossKD"], CROSSKD={"DEPTH": 0})
    model = build_distiller(cfg)
    batch = inputs("retinanet")
    _, rec = extract_targets(model, batch)
    t_out = model.extractor.teacher_forward(batch[:1], rec)
    with pytest.raises(ConfigError, match=r"CrossKD.*ran on 2 rows for the step's 1 images.*KD"):
        model.extractor.pair(batch[:1], rec, t_out)


def test_branch_pairing_helpers():
    t = torch.arange(4.0).view(2, 2)
    assert num_branches(6, 2, "x") == 3 and num_branches(2, 2, "x") == 1
    torch.testing.assert_close(pair_batch(torch.zeros(6, 2), t, "x"), torch.cat([t, t, t]))
    assert pair_batch(torch.zeros(2, 2), t, "x") is t
    assert repeat_batch(["a", "b"], 2) == ["a", "b", "a", "b"]
    with pytest.raises(ConfigError, match=r"'p3': a batch of 5 in the student and of 2 in the "
                                          r"teacher.*not a whole multiple"):  # fmt: skip
        num_branches(5, 2, "'p3'")


# ---- 3. C4 R-CNNs (Res5ROIHeads) on RoI logits, in every mix ----------------------------------
C4_MIXES = ["c4_from_c4", "c4_from_fpn", "fpn_from_c4", "cascade_from_c4"]


def _mix(mix, c4_teacher, fpn_teacher):
    student = {"c4": _c4_cfg(), "fpn": tiny_cfg("faster_rcnn"),
               "cascade": tiny_cfg("cascade_rcnn")}[mix.split("_from_")[0]]  # fmt: skip
    teacher = {"c4": c4_teacher, "fpn": fpn_teacher}[mix.split("_from_")[1]]
    return student, teacher


@pytest.mark.parametrize("mix", C4_MIXES)
def test_c4_rcnns_have_roi_logits_in_every_mix(mix, c4_teacher, fpn_teacher):
    """KD and DIST on the RoI logits of a C4 R-CNN, as student, teacher or both. Before, a C4
    network had no 'roi' logits (nor any classification logits, said the message)."""
    student, teacher = _mix(mix, c4_teacher, fpn_teacher)
    cfg = _distill(student, teacher, ["KD", "DIST"], KD={"TARGET": "auto"}, DIST={"TARGET": "roi"})
    torch.manual_seed(0)
    model = build_distiller(cfg)
    assert model.terms[0].target == "roi"  # TARGET auto of a C4 student
    losses = _train(model, inputs("faster_rcnn"))
    assert losses["loss_distill_kd"] > 0 and torch.isfinite(losses["loss_distill_dist"])
    if mix.endswith("from_c4"):  # the C4 teacher scores the student's RoIs as its own
        batch = inputs("faster_rcnn")
        targets, rec = extract_targets(model, batch)
        pooler = "roi_heads.pooler" if mix.startswith("c4") else "roi_heads.box_pooler"
        heads = model.teacher.roi_heads
        with torch.no_grad():
            images = model.teacher_wrapper.images(batch, "BGR")
            res4 = model.teacher.backbone(images.tensor)["res4"]
            expected = torch.cat([
                heads.box_predictor(heads._shared_roi_transform([res4], boxes).mean(dim=[2, 3]))[0]
                for _, boxes in rec.all_inputs(pooler)
            ])  # fmt: skip
        torch.testing.assert_close(targets.roi.teacher, expected, rtol=1e-4, atol=1e-5)
        assert targets.roi.student.shape == expected.shape


@pytest.mark.parametrize("mix", ["c4_from_c4", "fpn_from_c4"])
def test_c4_teacher_classifier_inputs_for_dist_head_acclimation(mix, c4_teacher, fpn_teacher):
    """``classifier_inputs`` of a C4 teacher: the mean of its pooled res5 features, which its
    box classifier receives; DIST's head acclimation trains a copy of that classifier, equal to
    the teacher at step 0."""
    student, teacher = _mix(mix, c4_teacher, fpn_teacher)
    cfg = _distill(student, teacher, ["DIST"], DIST={"TARGET": "roi"})
    head, plain = with_and_without_head_acclimation(cfg)
    acclimation = head.terms[0].acclimation
    assert acclimation.layers == [head.teacher.roi_heads.box_predictor.cls_score]

    def step(model):
        torch.manual_seed(0)
        model.train()
        with EventStorage(0):
            return model(inputs("faster_rcnn"))

    first = step(head)
    torch.testing.assert_close(first["loss_distill_dist"], step(plain)["loss_distill_dist"])
    targets, _ = extract_targets(head, inputs("faster_rcnn"))
    ((stage, x),) = targets.roi.teacher_inputs
    res5_width = head.teacher.roi_heads.box_predictor.cls_score.in_features
    assert stage == 0 and x.shape == (targets.roi.student.shape[0], res5_width)
    torch.testing.assert_close(acclimation(x, 0), targets.roi.teacher, rtol=1e-4, atol=1e-5)
    losses = _train(head, inputs("faster_rcnn"))
    assert all(p.grad is not None for p in acclimation.parameters())
    assert losses["loss_distill_dist_acclimation_anchor"] >= 0


def test_roi_heads_of_another_structure_are_refused_with_the_reason(fpn_teacher):
    class Unpooled(nn.Module):  # a box predictor, but no pooler to run it on the student's RoIs
        box_predictor = nn.Linear(2, 2)

    student = build_model(tiny_cfg("faster_rcnn"))
    student.roi_heads = Unpooled()
    teacher = Teacher(build_model(tiny_cfg("faster_rcnn", "teacher")), loaded=True)
    message = (
        r"the student \(GeneralizedRCNN\) has no 'roi' logits \(its RoI heads \(Unpooled\) have a "
        r"box_predictor, but neither a box_pooler.*nor a pooler and res5"
    )
    with pytest.raises(ConfigError, match=message):
        Distiller(student=student, teacher=teacher, terms=[TermSpec("KD", target="roi")])


# ---- 4. heads without a per-pixel classifier (Mask2Former-shaped) -----------------------------
class _QueryDecoder(nn.Module):
    """Mask2Former's predictor shape: learned queries attend to the features and predict, per
    query, class logits (K + 1, with "no object") and a mask embedding."""

    def __init__(self, in_channels, num_classes, hidden=8, num_queries=5):
        super().__init__()
        self.query = nn.Embedding(num_queries, hidden)
        self.input_proj = Conv2d(in_channels, hidden, kernel_size=1)
        self.class_embed = nn.Linear(hidden, num_classes + 1)
        self.mask_embed = nn.Linear(hidden, hidden)

    def forward(self, x, mask_features):
        memory = self.input_proj(x).flatten(2)  # (N, C, HW)
        q = self.query.weight[None].expand(x.shape[0], -1, -1)
        q = q + torch.softmax(q @ memory, dim=-1) @ memory.transpose(1, 2)
        masks = torch.einsum("nqc,nchw->nqhw", self.mask_embed(q), mask_features)
        return {"pred_logits": self.class_embed(q), "pred_masks": masks}


class _MaskFormerShapedHead(nn.Module):
    """MaskFormerHead's shape: a pixel decoder (mask features) and a transformer ``predictor``."""

    def __init__(self, input_shape, num_classes, ignore_value=255):
        super().__init__()
        self.ignore_value = ignore_value
        self.pixel_decoder = Conv2d(input_shape["p2"].channels, 8, kernel_size=1)
        self.predictor = _QueryDecoder(input_shape["p5"].channels, num_classes)

    def forward(self, features):
        return self.predictor(features["p5"], self.pixel_decoder(features["p2"]))


@META_ARCH_REGISTRY.register()
class StructuresTestMaskFormer(nn.Module):
    """MaskFormer's meta-architecture shape: a backbone and a mask-classification
    ``sem_seg_head``; semantic segmentation from the queries' classes and masks."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.sem_seg_head = _MaskFormerShapedHead(
            self.backbone.output_shape(), cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        )
        self.input_format = cfg.INPUT.FORMAT
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def forward(self, batched_inputs):
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]  # fmt: skip
        images = ImageList.from_tensors(images, self.backbone.size_divisibility)
        out = self.sem_seg_head(self.backbone(images.tensor))
        classes = out["pred_logits"].softmax(-1)[..., :-1]
        semseg = torch.einsum("nqk,nqhw->nkhw", classes, out["pred_masks"].sigmoid())
        semseg = F.interpolate(semseg, size=images.tensor.shape[-2:], mode="bilinear")
        if not self.training:
            return [{"sem_seg": r} for r in semseg]
        gt = ImageList.from_tensors([x["sem_seg"].to(self.device) for x in batched_inputs],
                                    self.backbone.size_divisibility, 255).tensor  # fmt: skip
        ignore = self.sem_seg_head.ignore_value
        return {"loss_sem_seg": F.nll_loss(semseg.clamp(min=1e-6).log(), gt, ignore_index=ignore)}


def _mask_former_cfg(role="student"):
    cfg = tiny_cfg("semantic_fpn", role)
    cfg.MODEL.META_ARCHITECTURE = "StructuresTestMaskFormer"
    return cfg


@pytest.fixture(scope="module")
def mask_former_teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("m2f")
    return _save_teacher(tmp, _mask_former_cfg("teacher"), "mask_former_teacher", "semantic_fpn")


@pytest.fixture(scope="module")
def semantic_teacher(tmp_path_factory):
    return write_teacher(str(tmp_path_factory.mktemp("sem")), "semantic_fpn")


MASK_FORMER = "StructuresTestMaskFormer"
WHY = r"predicts with a _QueryDecoder, not a per-pixel classifier.*mask-classification head"


@pytest.mark.parametrize("term", ["KD", "DIST"])
def test_target_auto_refuses_a_mask_classification_student(term, semantic_teacher):
    """``TARGET: auto`` picked pixel logits for a Mask2Former-shaped model and crashed with
    AttributeError ('out_channels'); now: a ConfigError that says why and what to use."""
    assert not hasattr(build_model(_mask_former_cfg()).sem_seg_head.predictor, "out_channels")
    cfg = _distill(_mask_former_cfg(), semantic_teacher, [term], **{term: {"TARGET": "auto"}})
    with pytest.raises(ConfigError, match=rf"{term}.TARGET auto picks the student's logits, but "
                                          rf"StructuresTestMaskFormer has no classification logits "
                                          rf".*{WHY}.*feature terms.*MIMIC, PKD"):  # fmt: skip
        build_distiller(cfg)


@pytest.mark.parametrize("term", ["KD", "DIST", "CWD"])
def test_explicit_pixel_target_refuses_a_mask_classification_model(
    term, semantic_teacher, mask_former_teacher
):
    """Every logit kind refuses it, as student and as teacher."""
    cfg = _distill(_mask_former_cfg(), semantic_teacher, [term], **{term: {"TARGET": "pixel"}})
    message = (
        rf"the student \({MASK_FORMER}\) has no 'pixel' logits \(.*{WHY}.*\), nor any other.*MIMIC"
    )
    with pytest.raises(ConfigError, match=message):
        build_distiller(cfg)
    cfg = _distill(tiny_cfg("semantic_fpn"), mask_former_teacher, [term],
                   **{term: {"TARGET": "pixel"}})  # fmt: skip
    with pytest.raises(
        ConfigError, match=rf"the teacher \({MASK_FORMER}\) has no 'pixel' logits \(.*{WHY}"
    ):
        build_distiller(cfg)
    for target in ("roi", "dense"):
        if term == "CWD":
            continue
        cfg = _distill(_mask_former_cfg(), semantic_teacher, [term], **{term: {"TARGET": target}})
        with pytest.raises(ConfigError, match=rf"the student .* has no '{target}' logits"):
            build_distiller(cfg)


def test_dist_head_acclimation_refuses_a_mask_classification_teacher(mask_former_teacher):
    pixel = {"TARGET": "pixel"}
    cfg = _distill(tiny_cfg("semantic_fpn"), mask_former_teacher, ["DIST"], DIST=pixel)
    cfg.MODEL.DISTILL.ACCLIMATION.ENABLED = True
    cfg.MODEL.DISTILL.ACCLIMATION.MODE = "head"
    with pytest.raises(ConfigError, match=rf"the teacher \(StructuresTestMaskFormer\).*{WHY}"):
        build_distiller(cfg)


def test_a_mask_classification_model_trains_with_feature_terms(semantic_teacher,
                                                                mask_former_teacher):  # fmt: skip
    """What the message proposes works: feature terms, as student and as teacher."""
    levels = {"IN_FEATURES": ["p2", "p3", "p4", "p5"]}
    cfg = _distill(_mask_former_cfg(), semantic_teacher, ["MIMIC", "PKD"], MIMIC=levels,
                   PKD=levels)  # fmt: skip
    losses = _train(build_distiller(cfg), inputs("semantic_fpn"))
    assert losses["loss_distill_mimic"] > 0 and losses["loss_distill_pkd"] > 0
    cfg = _distill(tiny_cfg("semantic_fpn"), mask_former_teacher, ["MIMIC"], MIMIC=levels)
    assert _train(build_distiller(cfg), inputs("semantic_fpn"))["loss_distill_mimic"] > 0


def test_natural_targets_of_the_structures():
    assert natural_logit_target(build_model(_c4_cfg())) == "roi"
    assert natural_logit_target(build_model(tiny_cfg("semantic_fpn"))) == "pixel"
    with pytest.raises(ConfigError, match=rf"roi: it has no RoI heads.*dense: .*pixel: .*{WHY}"):
        natural_logit_target(build_model(_mask_former_cfg()))

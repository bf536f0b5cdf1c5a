"""Online teacher labels (MODEL.DISTILL.TEACHER_LABELS) and consistent mixup (MODEL.DISTILL.MIXUP)
on tiny models of every supported student kind."""

import pytest
import torch
from _tiny import ARCHS, NUM_CLASSES, build_distiller, distill_cfg, inputs, write_teacher
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from d2dist.errors import ConfigError
from d2dist.modeling import Mixup, TeacherLabels
from d2dist.modeling.mixup import mix

DETECTORS = ("faster_rcnn", "mask_rcnn", "cascade_rcnn", "retinanet", "fcos", "panoptic_fpn")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    d = tmp_path_factory.mktemp("teachers")
    out = {arch: write_teacher(str(d), arch) for arch in ARCHS}
    # dense detectors: keep every detection (a random head scores ~0.01, under the test threshold)
    for arch, key in (("retinanet", "RETINANET"), ("fcos", "FCOS")):
        (d / arch).mkdir()
        overrides = {f"MODEL__{key}__SCORE_THRESH_TEST": 0.0}
        out[arch + "_all"] = write_teacher(str(d / arch), arch, **overrides)
    (d / "same_width").mkdir()  # CrossKD runs the teacher's head on the student's features
    out["retinanet_same_width"] = write_teacher(
        str(d / "same_width"), "retinanet", MODEL__RETINANET__SCORE_THRESH_TEST=0.0,
        MODEL__FPN__OUT_CHANNELS=16
    )  # fmt: skip
    return out


def _distiller(teachers, arch, teacher=None, **labels):
    cfg = distill_cfg(arch, *teachers[teacher or arch], losses=("MIMIC",))
    n = cfg.MODEL.DISTILL.TEACHER_LABELS
    n.SCORE_THRESHOLD, n.PIXEL_THRESHOLD = 0.0, 0.0  # random teachers score low: keep all
    for key, value in labels.items():
        n[key.upper()] = value
    torch.manual_seed(0)
    return build_distiller(cfg).train()


def _step(model, batch):
    """One training forward; returns the losses, the batch the student saw and the number of
    teacher backbone runs."""
    seen, calls = [], []
    h1 = model.student.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    h2 = model.teacher.backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        with EventStorage(0):
            losses = model(batch)
    finally:
        h1.remove(), h2.remove()
    return losses, seen[0], len(calls)


@pytest.mark.parametrize("arch", ARCHS)
def test_unlabeled_images_train_on_the_teachers_labels_with_one_teacher_backbone_run(
    teachers, arch
):
    model = _distiller(teachers, arch, teacher=arch + "_all" if arch in ("retinanet", "fcos")
                       else None)  # fmt: skip
    batch = inputs(arch, n=2, annotated=False)
    losses, seen, backbone_runs = _step(model, batch)
    assert backbone_runs == 1  # labels and the MIMIC term share the teacher's features
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()  # the student learns from them
    for x in seen:
        if arch in DETECTORS:
            inst = x["instances"]
            assert inst.image_size == tuple(x["image"].shape[-2:])
            assert len(inst) > 0 and inst.gt_classes.max() < NUM_CLASSES
            if arch in ("mask_rcnn", "panoptic_fpn"):
                assert inst.gt_masks.tensor.shape[-2:] == x["image"].shape[-2:]
        if arch not in DETECTORS or arch == "panoptic_fpn":
            assert x["sem_seg"].shape == x["image"].shape[-2:] and x["sem_seg"].dtype == torch.long
    assert all("instances" not in x and "sem_seg" not in x for x in batch)  # inputs untouched


@pytest.mark.parametrize("arch", ["faster_rcnn", "mask_rcnn"])
def test_labels_are_the_teachers_own_predictions_on_the_augmented_image(teachers, arch):
    model = _distiller(teachers, arch, score_threshold=0.2)
    batch = inputs(arch, n=2, annotated=False)
    batch[1]["image"] = batch[1]["image"][:, :48, :56]  # another size: its own coordinates
    _, seen, _ = _step(model, batch)
    teacher = model.teacher
    with torch.no_grad():
        plain = teacher([{"image": x["image"]} for x in batch])  # no height/width: its own size
    for x, p in zip(seen, plain):
        p = p["instances"]
        p = p[p.scores >= 0.2]
        assert x["instances"].image_size == tuple(x["image"].shape[-2:])
        assert torch.allclose(x["instances"].gt_boxes.tensor, p.pred_boxes.tensor, atol=1e-4)
        assert torch.equal(x["instances"].gt_classes, p.pred_classes)
        if arch == "mask_rcnn":
            assert torch.equal(x["instances"].gt_masks.tensor, p.pred_masks)


def test_mixed_batches_keep_the_annotations_of_labeled_images(teachers):
    model = _distiller(teachers, "faster_rcnn")
    batch = inputs("faster_rcnn", n=2)
    del batch[1]["instances"], batch[1]["sem_seg"]
    _, seen, _ = _step(model, batch)
    assert seen[0]["instances"] is batch[0]["instances"]  # labeled: its own
    assert len(seen[1]["instances"]) > 0  # unlabeled: the teacher's


def test_all_images_mode_replaces_the_annotations(teachers):
    model = _distiller(teachers, "faster_rcnn", images="all", score_threshold=0.2)
    batch = inputs("faster_rcnn", n=2)
    _, seen, _ = _step(model, batch)
    for x, original in zip(seen, batch):
        assert x["instances"] is not original["instances"]
        assert not torch.equal(
            x["instances"].gt_boxes.tensor, original["instances"].gt_boxes.tensor
        )


def test_thresholds_select_labels_and_an_empty_image_trains_as_background(teachers):
    batch = inputs("faster_rcnn", n=2, annotated=False)
    model = _distiller(teachers, "faster_rcnn")
    with torch.no_grad():
        scores = torch.cat([p["instances"].scores for p in model.teacher(batch)])
    middle = float(scores.median())
    counts = {}
    for thr in (0.0, middle, 1.0):
        model = _distiller(teachers, "faster_rcnn", score_threshold=thr)
        losses, seen, _ = _step(model, batch)
        counts[thr] = sum(len(x["instances"]) for x in seen)
        assert all(torch.isfinite(v) for v in losses.values())
    assert counts[0.0] > counts[middle] > counts[1.0] == 0


def test_semantic_pixels_below_the_confidence_are_ignored(teachers):
    batch = inputs("semantic_fpn", n=1, annotated=False)
    with torch.no_grad():
        logits = _distiller(teachers, "semantic_fpn").teacher([{"image": batch[0]["image"]}])
    middle = float(logits[0]["sem_seg"].softmax(0).max(0).values.median())
    ignored = []
    for thr in (0.0, middle, 1.0):
        model = _distiller(teachers, "semantic_fpn", pixel_threshold=thr)
        _, seen, _ = _step(model, batch)
        ignored.append(int((seen[0]["sem_seg"] == 255).sum()))
    assert ignored[0] == 0 and 0 < ignored[1] < ignored[2] <= 64 * 64


@pytest.mark.parametrize(
    "student, teacher, message",
    [
        ("mask_rcnn", "faster_rcnn", r"missing \['masks'\]"),
        ("faster_rcnn", "semantic_fpn", r"missing \['instances'\]"),
        ("semantic_fpn", "faster_rcnn", r"missing \['sem_seg'\]"),
    ],
)
def test_a_teacher_that_cannot_label_the_students_task_is_refused(
    teachers, student, teacher, message
):
    with pytest.raises(ConfigError, match=message):  # IMAGES all: checked when built
        _distiller(teachers, student, teacher=teacher, images="all")
    model = _distiller(teachers, student, teacher=teacher)  # unlabeled: at the first such image
    with pytest.raises(ConfigError, match=message):
        _step(model, inputs(student, n=2, annotated=False))


def test_keypoint_students_and_other_class_counts_are_refused(teachers, tmp_path):
    t_cfg, t_w = write_teacher(str(tmp_path), "faster_rcnn", MODEL__ROI_HEADS__NUM_CLASSES=5)
    cfg = distill_cfg("faster_rcnn", t_cfg, t_w, losses=("MIMIC",))
    cfg.MODEL.DISTILL.TEACHER_LABELS.IMAGES = "all"
    with pytest.raises(ConfigError, match="teacher predicts 5 classes and the student 3"):
        build_distiller(cfg)
    labels = TeacherLabels()
    model = _distiller(teachers, "faster_rcnn")
    model.student.roi_heads.keypoint_on = True
    with pytest.raises(ConfigError, match="keypoint head"):
        labels.check(model.student, model.teacher)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"images": "some"}, "IMAGES='some'"), ({"score_threshold": 1.5}, "SCORE_THRESHOLD=1.5"),
     ({"pixel_threshold": -0.1}, "PIXEL_THRESHOLD=-0.1"), ({"mask_threshold": "x"}, "MASK_")],
)  # fmt: skip
def test_bad_label_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TeacherLabels(**kwargs)


# ---- consistent mixup ----


def _labeled(size, boxes, classes, masks=None, value=100.0):
    h, w = size
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor(classes)
    if masks is not None:
        inst.gt_masks = masks
    return {"image": torch.full((3, h, w), value), "instances": inst, "file_name": f"{value}.jpg"}


def test_mix_of_two_labeled_images_has_the_union_of_their_boxes_and_the_mixed_pixels():
    a = _labeled((64, 48), [[1, 2, 10, 12]], [0], BitMasks(torch.ones(1, 64, 48, dtype=torch.bool)))
    b = _labeled((40, 64), [[5, 5, 30, 20], [0, 0, 8, 8]], [1, 2],
                 BitMasks(torch.ones(2, 40, 64, dtype=torch.bool)), value=200.0)  # fmt: skip
    m = mix(a, b, 0.25)
    assert m["image"].shape == (3, 64, 64)
    assert m["image"][0, 0, 0] == 0.25 * 100 + 0.75 * 200  # both images there
    assert m["image"][0, 50, 10] == 0.25 * 100  # only a (b is 40 high)
    assert m["image"][0, 10, 50] == 0.75 * 200  # only b (a is 48 wide)
    inst = m["instances"]
    assert inst.image_size == (64, 64) and len(inst) == 3
    assert inst.gt_classes.tolist() == [0, 1, 2]
    assert inst.gt_masks.tensor.shape == (3, 64, 64)
    assert inst.gt_masks.tensor[1:, 40:].sum() == 0  # b's masks padded, not stretched
    assert m["mixed_with"] == "200.0.jpg" and m["lam"] == 0.25
    poly = _labeled((64, 64), [[1, 1, 9, 9]], [1], PolygonMasks([[[1, 1, 9, 1, 9, 9]]]))
    assert len(mix(poly, a, 0.5)["instances"].gt_masks) == 2  # polygons + bit masks: bit masks


def test_mix_with_an_unlabeled_or_semantic_image_is_left_to_the_teacher():
    a = _labeled((64, 64), [[1, 2, 10, 12]], [0])
    unlabeled = {"image": torch.zeros(3, 64, 64)}
    assert "instances" not in mix(a, unlabeled, 0.5)
    assert "instances" not in mix(unlabeled, a, 0.5)
    semantic = {"image": torch.zeros(3, 64, 64), "sem_seg": torch.zeros(64, 64, dtype=torch.long)}
    assert "sem_seg" not in mix(semantic, semantic, 0.5)


def test_mixup_is_seeded_pairs_other_images_and_respects_its_probability():
    batch = [_labeled((64, 64), [[1, 1, 9, 9]], [0], value=float(v)) for v in range(4)]
    assert Mixup(prob=0.0)(batch) == batch
    torch.manual_seed(3)
    one = Mixup(prob=1.0, alpha=0.5)(batch)
    torch.manual_seed(3)
    two = Mixup(prob=1.0, alpha=0.5)(batch)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(one, two))
    assert all(x["mixed_with"] != x["file_name"] for x in one)
    assert all(len(x["instances"]) == 2 for x in one)
    with pytest.raises(ConfigError, match="PROB=2"):
        Mixup(prob=2)
    with pytest.raises(ConfigError, match="ALPHA=0"):
        Mixup(alpha=0)


def test_teacher_and_student_see_the_same_mixed_view(teachers):
    model = _distiller(teachers, "faster_rcnn")
    model.mixup = Mixup(prob=1.0)
    batch = inputs("faster_rcnn", n=2)
    del batch[1]["instances"]
    seen_by_teacher = []
    hook = model.teacher.backbone.register_forward_pre_hook(
        lambda m, a: seen_by_teacher.append(a[0].clone())
    )
    try:
        torch.manual_seed(0)
        _, seen, _ = _step(model, batch)
    finally:
        hook.remove()
    teacher_images = model.teacher_wrapper.images(seen, "BGR").tensor
    assert torch.allclose(seen_by_teacher[0], teacher_images)
    assert all("mixed_with" in x for x in seen)
    assert all(len(x["instances"]) > 0 for x in seen)  # both mixes include the unlabeled image:
    assert not torch.equal(seen[0]["image"], batch[0]["image"])  # labelled by the teacher


TERM_CASES = [
    ("faster_rcnn", ["KD", "DIST", "MIMIC", "PKD", "CWD", "DIST_FEATURE"]),
    ("faster_rcnn", ["ReviewKD", "MGD", "FGD"]),
    ("retinanet", ["CrossKD", "KD", "FGD"]),
    ("semantic_fpn", ["DIST", "KD"]),
]


@pytest.mark.parametrize("arch, terms", TERM_CASES, ids=lambda x: str(x))
def test_every_term_works_unchanged_on_images_the_teacher_labelled(teachers, arch, terms):
    teacher = "retinanet_same_width" if arch == "retinanet" else arch
    cfg = distill_cfg(arch, *teachers[teacher], losses=terms)
    cfg.MODEL.DISTILL.TEACHER_LABELS.SCORE_THRESHOLD = 0.0
    cfg.MODEL.DISTILL.REVIEWKD.MID_CHANNELS, cfg.MODEL.DISTILL.REVIEWKD.NORM = 8, ""
    if arch == "retinanet":
        cfg.MODEL.DISTILL.CROSSKD.DEPTH = 1  # the tiny heads have one conv
        for ns in ("FGD", "MGD"):
            cfg.MODEL.DISTILL[ns].IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    torch.manual_seed(0)
    model = build_distiller(cfg).train()
    losses, seen, runs = _step(model, inputs(arch, n=2, annotated=False))
    assert runs == 1 and all("instances" in x or "sem_seg" in x for x in seen)
    for term in model.terms:
        assert torch.isfinite(losses[term.loss_key]) and losses[term.loss_key] > 0, term.loss_key
    sum(losses.values()).backward()


def test_the_share_of_labelled_images_and_their_boxes_are_logged(teachers):
    model = _distiller(teachers, "faster_rcnn")
    batch = inputs("faster_rcnn", n=2)
    del batch[1]["instances"]
    with EventStorage(0) as storage:
        _, seen, _ = _step_in(model, batch)
        latest = {k: v for k, (v, _) in storage.latest().items()}
    assert latest["teacher_labels/images_fraction"] == 0.5
    assert latest["teacher_labels/boxes_per_image"] == len(seen[1]["instances"]) > 0


def _step_in(model, batch):
    seen = []
    hook = model.student.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    try:
        return model(batch), seen[0], None
    finally:
        hook.remove()


def test_an_image_gets_only_the_targets_it_lacks(teachers):
    """A detector's image with semantic labels but no instances is unlabeled for it; a panoptic
    image with instances but no semantic labels keeps its instances."""
    model = _distiller(teachers, "faster_rcnn")
    batch = inputs("faster_rcnn", n=1)
    del batch[0]["instances"]  # its sem_seg stays
    _, seen, _ = _step(model, batch)
    assert len(seen[0]["instances"]) > 0
    model = _distiller(teachers, "panoptic_fpn")
    batch = inputs("panoptic_fpn", n=1)
    del batch[0]["sem_seg"]
    _, seen, _ = _step(model, batch)
    assert seen[0]["instances"] is batch[0]["instances"] and "sem_seg" in seen[0]


def test_in_a_mixed_batch_the_heads_run_on_the_unlabeled_images_only(teachers):
    """The teacher's heads label the images that need it (the backbone ran on the whole batch):
    the unlabeled image's labels are still the teacher's own predictions on it."""
    model = _distiller(teachers, "mask_rcnn", score_threshold=0.2)
    batch = inputs("mask_rcnn", n=3)
    del batch[1]["instances"], batch[1]["sem_seg"]
    batch[1]["image"] = batch[1]["image"][:, :48, :56]
    heads_on = []
    hook = model.teacher.roi_heads.register_forward_pre_hook(
        lambda m, a: heads_on.append(len(a[0].image_sizes))
    )
    try:
        _, seen, _ = _step(model, batch)
    finally:
        hook.remove()
    assert heads_on == [1]
    with torch.no_grad():
        plain = model.teacher([{"image": batch[1]["image"]}])[0]["instances"]
    plain = plain[plain.scores >= 0.2]
    labels = seen[1]["instances"]
    assert labels.image_size == (48, 56) and len(labels) == len(plain) > 0
    assert torch.allclose(labels.gt_boxes.tensor, plain.pred_boxes.tensor, atol=1e-4)
    assert torch.equal(labels.gt_masks.tensor, plain.pred_masks)
    assert (
        seen[0]["instances"] is batch[0]["instances"]
        and seen[2]["instances"] is batch[2]["instances"]
    )

"""Distiller build-time validation, teacher input conversion, partial teacher runs, schedules."""

import pytest
import torch
from _tiny import build_distiller, distill_cfg, inputs, tiny_cfg, write_teacher
from detectron2.utils.events import EventStorage

from d2dist.errors import ConfigError
from d2dist.modeling import Recorder


@pytest.fixture(scope="module")
def rcnn_teacher(tmp_path_factory):
    return write_teacher(str(tmp_path_factory.mktemp("teacher")), "faster_rcnn")


def _cfg(teacher, arch="faster_rcnn", **distill):
    cfg = distill_cfg(arch, *teacher)
    for key, value in distill.items():
        node = cfg.MODEL.DISTILL
        *path, last = key.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    return cfg


# (what is wrong, how to break the config, expected message); each case builds the model and
# loads its teacher (as the trainers do before the first step).
def _cases(tmp_path, teacher):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a checkpoint")
    other_cfg, other_weights = write_teacher(str(tmp_path), "retinanet")
    fewer_classes = write_teacher(str(tmp_path), "mask_rcnn", MODEL__ROI_HEADS__NUM_CLASSES=5)
    txt = (
        open(teacher[0])
        .read()
        .replace("META_ARCHITECTURE: GeneralizedRCNN", "META_ARCHITECTURE: Nope")
    )
    (tmp_path / "nope.yaml").write_text(txt)
    txt = open(teacher[0]).read().replace("FORMAT: BGR", "FORMAT: L")
    (tmp_path / "gray.yaml").write_text(txt)
    return [
        ("unknown student", dict(STUDENT_META_ARCHITECTURE="Nope"),
         r"STUDENT_META_ARCHITECTURE='Nope' is not a meta-architecture.*registered: \[.*GeneralizedRCNN"),
        ("student is a Distiller", dict(STUDENT_META_ARCHITECTURE="Distiller"),
         r"STUDENT_META_ARCHITECTURE='Distiller'"),
        ("unknown teacher", dict(TEACHER__CONFIG_FILE=str(tmp_path / "nope.yaml")),
         r"teacher MODEL.META_ARCHITECTURE='Nope' is not a meta-architecture"),
        ("teacher config missing", dict(TEACHER__CONFIG_FILE=str(tmp_path / "missing.yaml")),
         r"TEACHER.CONFIG_FILE='.*missing.yaml' does not exist"),
        ("teacher config empty", dict(TEACHER__CONFIG_FILE=""), r"TEACHER.CONFIG_FILE is empty"),
        ("teacher config unknown key", dict(TEACHER__OPTS=["MODEL.NOPE", "1"]),
         r"teacher config .*OPTS=\['MODEL.NOPE', '1'\].*MODEL.NOPE"),
        ("teacher weights empty", dict(TEACHER__WEIGHTS=""),
         r"TEACHER.WEIGHTS is empty: the teacher must be trained"),
        ("teacher weights missing", dict(TEACHER__WEIGHTS=str(tmp_path / "missing.pth")),
         r"TEACHER.WEIGHTS='.*missing.pth' does not exist"),
        ("teacher weights corrupt", dict(TEACHER__WEIGHTS=str(corrupt)),
         r"could not read MODEL.DISTILL.TEACHER.WEIGHTS='.*corrupt.pth'"),
        ("teacher weights of another model", dict(TEACHER__WEIGHTS=other_weights),
         r"WEIGHTS does not fit the teacher.*missing in the checkpoint: \[.*roi_heads.*"
         r"not in the teacher model: \[.*head\."),
        ("teacher format unsupported", dict(TEACHER__CONFIG_FILE=str(tmp_path / "gray.yaml")),
         r"teacher INPUT.FORMAT='L': d2dist converts only between 'RGB' and 'BGR'"),
        ("autocast unknown", dict(TEACHER__AUTOCAST="float8"), r"AUTOCAST='float8'; expected"),
        ("channels_last not a bool", dict(TEACHER__CHANNELS_LAST="yes"),
         r"CHANNELS_LAST='yes'; expected True or False"),
        ("no terms", dict(LOSSES=[]), r"MODEL.DISTILL.LOSSES is empty"),
        ("term twice", dict(LOSSES=["KD", "KD"]), r"names a term twice"),
        ("unknown term", dict(LOSSES=["MIMIC", "DISTX"]),
         r"'DISTX', which is not a registered distillation term; registered: \[.*'KD'.*'MIMIC'"),
        ("feature absent", dict(MIMIC__IN_FEATURES=["p2", "p9"]),
         r"IN_FEATURES names 'p9', which the student's backbone does not produce; it has \['p2'"),
        ("no features", dict(MIMIC__IN_FEATURES=[]), r"MIMIC.IN_FEATURES is empty"),
        ("channels without adapter", dict(MIMIC__ADAPTER="IdentityAdapter"),
         r"feature 'p2' has 16 channels in the student and 32 in the teacher.*Conv1x1Adapter"),
        ("unknown adapter", dict(MIMIC__ADAPTER="MLP"), r"unknown adapter 'MLP'.*Conv1x1Adapter"),
        ("logit target absent", dict(LOSSES=["KD"], KD__TARGET="dense"),
         r"the student \(GeneralizedRCNN\) has no 'dense' logits; its natural target is 'roi'"),
        ("logit target unknown", dict(LOSSES=["KD"], KD__TARGET="box"), r"KD.TARGET='box'"),
        ("classes differ", dict(LOSSES=["KD"], TEACHER__CONFIG_FILE=fewer_classes[0],
                                TEACHER__WEIGHTS=fewer_classes[1]),
         r"'roi' logits: the student predicts 4 classes, the teacher 6"),
        ("bad temperature", dict(LOSSES=["KD"], KD__TAU=0.0), r"KD.TAU=0.0; the temperature"),
        ("negative warm-up", dict(WEIGHT_SCHEDULE__WARMUP_ITERS=-1), r"WARMUP_ITERS=-1 < 0"),
    ]  # fmt: skip


def test_every_misconfiguration_fails_at_build_time_with_its_message(tmp_path, rcnn_teacher):
    cases = _cases(tmp_path, rcnn_teacher)
    assert len(cases) >= 20
    for what, change, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_distiller(_cfg(rcnn_teacher, **change))
            pytest.fail(f"{what}: built without error")


def test_stride_mismatch_is_reported(tmp_path):
    teacher = write_teacher(str(tmp_path), "deeplab_v3")  # res5 dilated: stride 16
    cfg = distill_cfg("deeplab_v3", *teacher, losses=("MIMIC",))
    cfg.MODEL.RESNETS.RES5_DILATION = 1  # the student's res5 at stride 32
    with pytest.raises(
        ConfigError, match=r"'res5' has stride 32 in the student and 16 in the teacher"
    ):
        build_distiller(cfg)


def test_dense_heads_with_other_anchors_are_reported(tmp_path):
    teacher = write_teacher(str(tmp_path), "fcos")  # 1 anchor point per location
    cfg = distill_cfg("retinanet", *teacher, losses=("KD",))  # 6 anchors per location
    with pytest.raises(
        ConfigError, match=r"dense logits: the student's head has 18 .* teacher's 3"
    ):
        build_distiller(cfg)


def _train_step(model, batch, iteration=0):
    model.train()
    with EventStorage(iteration):
        return model(batch)


def test_teacher_sees_the_students_images_in_its_own_format(tmp_path):
    # Student BGR with one normalisation, teacher RGB with another.
    teacher = write_teacher(
        str(tmp_path), "faster_rcnn", INPUT__FORMAT="RGB",
        MODEL__PIXEL_MEAN=[120.0, 110.0, 100.0], MODEL__PIXEL_STD=[50.0, 60.0, 70.0],
    )  # fmt: skip
    model = build_distiller(distill_cfg("faster_rcnn", *teacher, losses=("MIMIC",)))
    batch = inputs("faster_rcnn")
    with Recorder(model.teacher, inputs=["backbone"]) as rec:
        _train_step(model, batch)
    seen = rec.input("backbone")[0]
    mean = torch.tensor([120.0, 110.0, 100.0]).view(3, 1, 1)
    std = torch.tensor([50.0, 60.0, 70.0]).view(3, 1, 1)
    for i, x in enumerate(batch):
        expected = (x["image"].flip(0) - mean) / std  # BGR -> RGB, then the teacher's stats
        h, w = expected.shape[-2:]
        torch.testing.assert_close(seen[i, :, :h, :w], expected)


def test_only_the_teacher_parts_the_terms_need_run(tmp_path, rcnn_teacher):
    calls = {}

    def count(name):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1

        return hook

    model = build_distiller(_cfg(rcnn_teacher, LOSSES=["MIMIC"]))
    t = model.teacher
    for name in ("backbone", "proposal_generator", "roi_heads.box_pooler"):
        dict(t.named_modules())[name].register_forward_pre_hook(count(name))
    _train_step(model, inputs("faster_rcnn"))
    assert calls == {"backbone": 1}

    calls.clear()
    model = build_distiller(_cfg(rcnn_teacher, LOSSES=["KD"]))
    t = model.teacher
    boxes_seen = []
    for name in ("backbone", "proposal_generator"):
        dict(t.named_modules())[name].register_forward_pre_hook(count(name))
    t.roi_heads.box_pooler.register_forward_pre_hook(lambda m, a: boxes_seen.append(a[1]))
    with Recorder(model.student, inputs=["roi_heads.box_pooler"]) as rec:
        _train_step(model, inputs("faster_rcnn"))
    assert calls == {"backbone": 1}  # no teacher RPN: the student's RoIs are used
    student_boxes = rec.input("roi_heads.box_pooler")[1]
    assert len(boxes_seen) == 1
    for s, b in zip(student_boxes, boxes_seen[0]):
        assert torch.equal(s.tensor, b.tensor)


def test_roi_logits_are_aligned_row_for_row(tmp_path, rcnn_teacher):
    model = build_distiller(_cfg(rcnn_teacher, LOSSES=["KD"]))
    model.train()
    with EventStorage(0):
        with model.extractor.student_recorder() as rec:
            model.student(inputs("faster_rcnn"))
        targets = model.extractor.extract(inputs("faster_rcnn"), rec)
    s, t = targets.roi
    n_rois = sum(len(b) for b in rec.input("roi_heads.box_pooler")[1])
    assert s.shape == t.shape == (n_rois, 4) and n_rois > 0
    assert t.dtype == torch.float32 and not t.requires_grad and s.requires_grad


def test_teacher_autocast_bfloat16(tmp_path, rcnn_teacher):
    model = build_distiller(_cfg(rcnn_teacher, TEACHER__AUTOCAST="bfloat16"))
    with Recorder(model.teacher, outputs=["backbone"]) as rec:
        losses = _train_step(model, inputs("faster_rcnn"))
    assert rec.output("backbone")["p2"].dtype == torch.bfloat16
    assert losses["loss_distill_mimic"].dtype == torch.float32
    assert all(torch.isfinite(v) for v in losses.values())


def test_teacher_channels_last_gives_the_same_losses(tmp_path, rcnn_teacher):
    batch = inputs("faster_rcnn")
    losses = {}
    for channels_last in (False, True):
        torch.manual_seed(0)  # the same student and adapters
        model = build_distiller(_cfg(rcnn_teacher, TEACHER__CHANNELS_LAST=channels_last))
        conv = model.teacher.backbone.bottom_up.stem.conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        torch.manual_seed(0)
        losses[channels_last] = _train_step(model, batch)
    for key in ("loss_distill_mimic", "loss_distill_kd"):
        torch.testing.assert_close(losses[True][key], losses[False][key], rtol=1e-4, atol=1e-6)


def test_a_non_finite_term_names_the_term_the_level_and_the_iteration(tmp_path, rcnn_teacher):
    model = build_distiller(_cfg(rcnn_teacher))

    def poison_p3(module, args, out):  # the teacher's p3 turns to NaN
        out["p3"] = torch.full_like(out["p3"], float("nan"))

    model.teacher.backbone.register_forward_hook(poison_p3)
    with pytest.raises(FloatingPointError) as e:
        _train_step(model, inputs("faster_rcnn"), iteration=7)
    message = str(e.value)
    assert "at iteration 7" in message and "distill/mimic/p3 = nan" in message
    assert "loss_distill_mimic = nan" in message and "distill/mimic/p2" not in message
    assert "WARMUP_ITERS" in message


def test_a_deeplab_teacher_needs_the_students_crops_for_pixel_logits(tmp_path):
    from d2dist.config import ConfigError

    teacher = write_teacher(str(tmp_path), "deeplab_v3", INPUT__CROP__ENABLED=True,
                            INPUT__CROP__TYPE="absolute", INPUT__CROP__SIZE=(64, 64))  # fmt: skip
    cfg = distill_cfg("deeplab_v3", *teacher, losses=("DIST",))
    cfg.MODEL.DISTILL.DIST.TARGET = "pixel"
    with pytest.raises(ConfigError, match=r"training crop INPUT.CROP.SIZE=\(64, 64\) .* trains on "
                       r"uncropped images"):  # fmt: skip
        build_distiller(cfg)
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = True, "absolute", (32, 32)
    with pytest.raises(ConfigError, match=r"trains on crops of \(32, 32\)"):
        build_distiller(cfg)
    cfg.INPUT.CROP.SIZE = (64, 64)  # the same crops
    _train_step(build_distiller(cfg), inputs("deeplab_v3"))
    cfg.INPUT.CROP.ENABLED = False  # or a teacher with global pooling, same weights
    cfg.MODEL.DISTILL.TEACHER.OPTS = ["INPUT.CROP.ENABLED", "False"]
    losses = _train_step(build_distiller(cfg), inputs("deeplab_v3"))
    assert torch.isfinite(losses["loss_distill_dist"])


def test_weight_schedule_warms_up_and_stops(tmp_path, rcnn_teacher):
    model = build_distiller(
        _cfg(rcnn_teacher, WEIGHT_SCHEDULE__WARMUP_ITERS=4, WEIGHT_SCHEDULE__STOP_ITER=6)
    )
    assert [model.schedule_factor(i) for i in range(8)] == [0.25, 0.5, 0.75, 1, 1, 1, 0, 0]
    batch = inputs("faster_rcnn")
    torch.manual_seed(0)
    at0 = _train_step(model, batch, iteration=0)
    torch.manual_seed(0)
    at3 = _train_step(model, batch, iteration=3)
    torch.testing.assert_close(at0["loss_distill_mimic"] * 4, at3["loss_distill_mimic"])
    teacher_calls = []
    model.teacher.backbone.register_forward_pre_hook(lambda *a: teacher_calls.append(1))
    stopped = _train_step(model, batch, iteration=6)
    assert stopped["loss_distill_mimic"] == 0 and stopped["loss_distill_kd"] == 0
    assert not teacher_calls  # a stopped schedule does not run the teacher
    assert "loss_cls" in stopped


def test_student_loss_weight(tmp_path, rcnn_teacher):
    batch = inputs("faster_rcnn")
    torch.manual_seed(0)
    plain = _train_step(build_distiller(_cfg(rcnn_teacher)), batch)
    torch.manual_seed(0)
    halved = _train_step(build_distiller(_cfg(rcnn_teacher, STUDENT_LOSS_WEIGHT=0.5)), batch)
    torch.testing.assert_close(halved["loss_cls"], plain["loss_cls"] * 0.5)
    torch.testing.assert_close(halved["loss_distill_kd"], plain["loss_distill_kd"])


def test_model_zoo_teacher_config_resolves():
    from d2dist.modeling import load_teacher_config

    cfg = tiny_cfg("faster_rcnn")
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = "model_zoo:COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"
    cfg.MODEL.DISTILL.TEACHER.OPTS = ["MODEL.ROI_HEADS.NUM_CLASSES", "3"]
    tcfg = load_teacher_config(cfg)
    assert tcfg.MODEL.RESNETS.DEPTH == 101 and tcfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert tcfg.MODEL.DEVICE == "cpu"
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = "model_zoo:COCO-Detection/nope.yaml"
    with pytest.raises(ConfigError, match="model_zoo:COCO-Detection/nope.yaml"):
        load_teacher_config(cfg)


@pytest.mark.parametrize(
    "change,expected",
    [
        ({}, False),
        ({"WEIGHT_SCHEDULE__WARMUP_ITERS": 5}, False),
        ({"WEIGHT_SCHEDULE__STOP_ITER": 5}, True),  # the terms do not run from then on
        ({"LOSSES": ["DIST"], "ACCLIMATION__ENABLED": True}, False),
        ({"LOSSES": ["DIST"], "ACCLIMATION__ENABLED": True, "ACCLIMATION__START_ITER": 3}, True),
        ({"LOSSES": ["DIST"], "ACCLIMATION__ENABLED": True, "ACCLIMATION__STOP_ITER": 3}, True),
    ],
)
def test_ddp_looks_for_unused_parameters_only_when_some_go_unused(rcnn_teacher, change, expected):
    model = build_distiller(_cfg(rcnn_teacher, **change))
    assert model.needs_find_unused_parameters is expected
    if "ACCLIMATION__START_ITER" in change:  # before START_ITER acclimation takes no part
        model.zero_grad()
        sum(_train_step(model, inputs("faster_rcnn"), iteration=0).values()).backward()
        assert model.terms[0].acclimation.log_t.grad is None

"""A Distiller's state is its student's plus the terms': whichever checkpointer loads it (Detectron2's,
fvcore's, plain load_state_dict), a plain model loads a Distiller checkpoint's student and a
Distiller loads a plain student checkpoint into its student; nothing is silently left random.
Checkpoints of the earlier layout (the student under "student.") load too."""

import os

import pytest
import torch
from _tiny import distill_cfg, inputs, tiny_cfg, write_teacher
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor, DefaultTrainer
from detectron2.modeling import build_model
from fvcore.common.checkpoint import Checkpointer
from torch import nn

from d2dist.checkpoint import StudentCheckpointer
from d2dist.engine import DistillationMixin, for_evaluation
from d2dist.engine.export import export_student
from d2dist.errors import ConfigError
from d2dist.modeling.meta_arch.state import split_distiller_state


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_teacher(str(tmp_path_factory.mktemp("teacher")), "faster_rcnn")


@pytest.fixture
def cfg(teacher):
    return distill_cfg("faster_rcnn", *teacher)


def _trained(cfg, seed=0):
    """A Distiller whose student and adapters differ from a fresh build's (as after training)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_the_state_is_the_students_under_its_own_names_plus_the_terms(cfg):
    model = build_model(cfg)
    state = model.state_dict()
    student = model.student.state_dict()
    assert [k for k in state if not k.startswith("terms.")] == list(student)  # same order too
    assert any(k.startswith("terms.0.adapters.") for k in state)
    assert not any(k.startswith(("student.", "teacher")) for k in state)
    for k, v in student.items():
        assert state[k] is v or torch.equal(state[k], v)
    # Module versions (FrozenBatchNorm2d, ...) are kept under the student's own names.
    assert state._metadata["backbone.bottom_up"] == student._metadata["backbone.bottom_up"]


@pytest.mark.parametrize("checkpointer", ["detectron2", "fvcore", "load_state_dict"])
def test_a_plain_model_loads_the_student_of_a_distiller_checkpoint(cfg, tmp_path, checkpointer):
    distiller = _trained(cfg)
    path = str(tmp_path / "run.pth")
    torch.save({"model": distiller.state_dict()}, path)
    plain = build_model(tiny_cfg("faster_rcnn"))
    if checkpointer == "detectron2":
        incompatible = DetectionCheckpointer(plain).load(path)
    elif checkpointer == "fvcore":
        Checkpointer(plain).load(path)
    else:
        state = torch.load(path, weights_only=False)["model"]
        incompatible = plain.load_state_dict(state, strict=False)
        assert not incompatible.missing_keys
        assert all(k.startswith("terms.") for k in incompatible.unexpected_keys)
    _same(plain.state_dict(), distiller.student.state_dict())


@pytest.mark.parametrize("checkpointer", ["detectron2", "fvcore", "load_state_dict"])
def test_a_distiller_loads_a_plain_student_checkpoint_into_its_student(cfg, tmp_path, checkpointer):
    torch.manual_seed(5)
    plain = build_model(tiny_cfg("faster_rcnn"))
    path = str(tmp_path / "plain.pth")
    torch.save({"model": plain.state_dict()}, path)
    distiller = build_model(cfg)
    terms = {k: v.clone() for k, v in distiller.terms.state_dict().items()}
    if checkpointer == "detectron2":
        DetectionCheckpointer(distiller).load(path)
    elif checkpointer == "fvcore":
        Checkpointer(distiller).load(path)
    else:
        incompatible = distiller.load_state_dict(plain.state_dict(), strict=False)
        # named as in state_dict(): the terms' entries are the ones missing, nothing unexpected
        assert incompatible.missing_keys and all(
            k.startswith("terms.") for k in incompatible.missing_keys
        )
        assert not incompatible.unexpected_keys
    _same(distiller.student.state_dict(), plain.state_dict())
    _same(distiller.terms.state_dict(), terms)  # left at their init


def test_a_distiller_checkpoint_round_trips_strictly(cfg):
    a, b = _trained(cfg, seed=0), build_model(cfg)
    b.load_state_dict(a.state_dict(), strict=True)
    _same(b.state_dict(), a.state_dict())
    bad = dict(a.state_dict())
    bad["nothing.here"] = torch.zeros(1)
    del bad["backbone.fpn_lateral2.weight"]
    with pytest.raises(RuntimeError) as e:  # mismatches named as in state_dict()
        b.load_state_dict(bad, strict=True)
    assert '"backbone.fpn_lateral2.weight"' in str(e.value) and '"nothing.here"' in str(e.value)


def test_the_earlier_layout_still_loads(cfg, tmp_path):
    """Checkpoints of d2dist before 0.2 hold the student under "student."."""
    a = _trained(cfg)
    old = {(k if k.startswith("terms.") else f"student.{k}"): v for k, v in a.state_dict().items()}
    b = build_model(cfg)
    b.load_state_dict(old, strict=True)
    _same(b.state_dict(), a.state_dict())
    path = str(tmp_path / "old.pth")
    torch.save({"model": old}, path)
    plain = build_model(tiny_cfg("faster_rcnn"))
    StudentCheckpointer(plain).load(path)  # d2dist's checkpointers, for plain models
    _same(plain.state_dict(), a.student.state_dict())
    student, own = split_distiller_state(old)
    assert own == ["terms"] and list(student) == list(a.student.state_dict())


def test_a_nested_distiller_keeps_the_layout(cfg):
    """Inside another module (a wrapper, DDP's "module."), the layout holds under its prefix."""
    outer_a, outer_b = nn.Module(), nn.Module()
    outer_a.model, outer_b.model = _trained(cfg), build_model(cfg)
    state = outer_a.state_dict()
    assert (
        "model.backbone.fpn_lateral2.weight" in state
        and "model.terms.0.adapters.p2.0.weight" in state
    )
    outer_b.load_state_dict(state, strict=True)
    _same(outer_b.model.student.state_dict(), outer_a.model.student.state_dict())


def test_a_student_whose_names_clash_with_the_layout_is_refused(teacher):
    from d2dist.modeling import Distiller, Teacher, TermSpec

    student = build_model(tiny_cfg("faster_rcnn"))
    student.terms = nn.Linear(1, 1)
    t = Teacher(build_model(tiny_cfg("faster_rcnn", role="teacher")), loaded=True)
    with pytest.raises(ConfigError, match="attribute 'terms'"):
        Distiller(student=student, teacher=t, terms=[TermSpec("MIMIC", in_features=["p2"])])


def test_predicting_with_the_student_of_a_distillation_run(cfg, tmp_path):
    """DefaultPredictor of for_evaluation(cfg) builds the student alone, loads the run's
    checkpoint and predicts as the Distiller does; the teacher's files are not needed."""
    distiller = _trained(cfg)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": distiller.state_dict()}, path)
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = path
    cfg.INPUT.MIN_SIZE_TEST = cfg.INPUT.MAX_SIZE_TEST = 64  # the images' size: no resizing
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # every box: something to compare
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = str(tmp_path / "nowhere.yaml")
    cfg.MODEL.DISTILL.TEACHER.WEIGHTS = str(tmp_path / "nowhere.pth")
    with pytest.raises(ConfigError, match=r"does not exist.*DefaultPredictor\(for_evaluation"):
        DefaultPredictor(cfg)  # the Distiller itself needs its teacher's config: says how not to
    predictor = DefaultPredictor(for_evaluation(cfg))
    assert type(predictor.model).__name__ == "GeneralizedRCNN"
    _same(predictor.model.state_dict(), distiller.student.state_dict())
    x = inputs("faster_rcnn", n=1, annotated=False)[0]
    image = x["image"].permute(1, 2, 0).numpy().astype("uint8")
    distiller.eval()
    with torch.no_grad():
        got = predictor(image)["instances"]
        expected = distiller([{"image": torch.as_tensor(image).permute(2, 0, 1).float(),
                               "height": 64, "width": 64}])[0]["instances"]  # fmt: skip
    assert len(got) > 0, "no predictions: nothing was compared"
    torch.testing.assert_close(got.scores, expected.scores)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)


def test_the_mixin_builds_the_student_alone_for_evaluation(cfg):
    class Trainer(DistillationMixin, DefaultTrainer):
        pass

    cfg = cfg.clone()
    cfg.MODEL.DISTILL.TEACHER.CONFIG_FILE = "/nowhere.yaml"  # not read: no teacher is built
    model = Trainer.build_model(cfg)
    assert type(model).__name__ == "GeneralizedRCNN"


def test_the_export_of_a_distiller_checkpoint(cfg, tmp_path):
    distiller = _trained(cfg)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": distiller.state_dict()}, path)
    weights, _ = export_student(cfg, path, str(tmp_path / "student.pth"))
    _same(torch.load(weights, weights_only=False)["model"], distiller.student.state_dict())
    assert os.path.isfile(str(tmp_path / "student.yaml"))

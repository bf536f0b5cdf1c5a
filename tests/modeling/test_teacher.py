"""The teacher: building reads no weights, loading is strict and happens once, and a teacher is
built from a yacs config, a LazyConfig file or handed in by hand (d2dist.modeling.teacher)."""

import pytest
import torch
from _tiny import build_distiller, distill_cfg, feature_names, inputs, tiny_cfg, write_teacher
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from d2dist.errors import ConfigError
from d2dist.modeling import Distiller, Teacher, TeacherNotLoadedError, TermSpec


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_teacher(str(tmp_path_factory.mktemp("teacher")), "faster_rcnn")


def _step(model, batch=None):
    model.train()
    with EventStorage(0):
        return model(batch or inputs("faster_rcnn"))


def test_build_model_reads_no_teacher_weights(tmp_path, teacher, monkeypatch):
    cfg = distill_cfg("faster_rcnn", teacher[0], str(tmp_path / "not_there.pth"))

    def no_file(*args, **kwargs):
        raise AssertionError("build_model read a checkpoint")

    monkeypatch.setattr(torch, "load", no_file)
    model = build_model(cfg)  # Detectron2's contract: builds the structure, reads no weights
    monkeypatch.undo()
    assert not model.teacher_wrapper.loaded
    with pytest.raises(TeacherNotLoadedError, match=r"never loaded.*DistillationMixin"):
        _step(model)
    with pytest.raises(ConfigError, match=r"TEACHER.WEIGHTS='.*not_there.pth' does not exist"):
        model.load_teacher()


def test_load_teacher_loads_the_checkpoint_once(teacher):
    model = build_model(distill_cfg("faster_rcnn", *teacher))
    saved = torch.load(teacher[1], weights_only=False)["model"]
    model.load_teacher()
    state = model.teacher.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    conv = model.teacher.backbone.bottom_up.stem.conv1.weight
    with torch.no_grad():
        conv.add_(1.0)
    model.load_teacher()  # loaded already: not read again
    assert torch.equal(conv, saved["backbone.bottom_up.stem.conv1.weight"] + 1.0)
    assert not any(k.startswith("teacher") for k in model.state_dict())


def test_a_hand_built_teacher_and_terms(tmp_path, teacher):
    student = build_model(tiny_cfg("faster_rcnn"))
    t_model = build_model(tiny_cfg("faster_rcnn", role="teacher"))
    with pytest.raises(ConfigError, match=r"WEIGHTS is empty.*Teacher\(model, loaded=True\)"):
        Teacher(t_model)
    with pytest.raises(TypeError, match="takes a d2dist.modeling.Teacher"):
        Distiller(student=student, teacher=t_model, terms=[TermSpec("MIMIC")])
    wrapped = Teacher(t_model, weights=teacher[1])
    assert wrapped.input_format == "BGR"  # read from the model
    assert torch.equal(wrapped.pixel_std, t_model.pixel_std)
    terms = [TermSpec("MIMIC", in_features=["p2", "p3"]), TermSpec("KD", tau=2.0)]
    model = Distiller(student=student, teacher=wrapped, terms=terms)
    assert model.input_format == "BGR"  # the student's own
    assert [t.name for t in model.terms] == ["MIMIC", "KD"]  # one name: the registered one
    assert model.terms[1].tau == 2.0 and list(model.terms[0].adapters) == ["p2", "p3"]
    model.load_teacher()
    losses = _step(model)
    assert {"loss_distill_mimic", "loss_distill_kd"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ConfigError, match=r"MODEL.DISTILL.MIMIC has no 'NOPE'"):
        TermSpec("MIMIC", nope=1).build(student, t_model)
    with pytest.raises(ConfigError, match=r"TermSpec\(name='Nope'\).*registered"):
        TermSpec("Nope").build(student, t_model)


def test_a_hand_built_teacher_loads_strictly(tmp_path):
    other_cfg, other_weights = write_teacher(str(tmp_path), "retinanet")
    t_model = build_model(tiny_cfg("faster_rcnn", role="teacher"))
    with pytest.raises(ConfigError, match=r"does not fit the teacher.*missing in the checkpoint"):
        Teacher(t_model, weights=other_weights).load()


def test_a_teacher_without_an_input_format_must_be_given_one():
    model = build_model(tiny_cfg("semantic_fpn", role="teacher"))  # no input_format attribute
    with pytest.raises(ConfigError, match=r"has no input_format attribute.*input_format="):
        Teacher(model, loaded=True)
    assert Teacher(model, loaded=True, input_format="RGB").input_format == "RGB"


def test_the_teacher_wrapper_owns_format_statistics_autocast_and_memory_format(tmp_path):
    cfg_path, weights = write_teacher(
        str(tmp_path), "faster_rcnn", INPUT__FORMAT="RGB", MODEL__PIXEL_MEAN=[1.0, 2.0, 3.0]
    )
    cfg = distill_cfg("faster_rcnn", cfg_path, weights)
    cfg.MODEL.DISTILL.TEACHER.AUTOCAST = "bfloat16"
    cfg.MODEL.DISTILL.TEACHER.CHANNELS_LAST = True
    model = build_distiller(cfg)
    t = model.teacher_wrapper
    assert (t.input_format, t.autocast, t.channels_last) == ("RGB", "bfloat16", True)
    assert t.pixel_mean.flatten().tolist() == [1.0, 2.0, 3.0]
    conv = model.teacher.backbone.bottom_up.stem.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)  # kept after loading
    assert not hasattr(model.teacher, "cfg")  # nothing hung on the module
    assert not hasattr(model.extractor, "autocast") and not hasattr(
        model.extractor, "swap_channels"
    )


def test_features_of_every_level_pair_up(teacher):
    model = build_distiller(distill_cfg("faster_rcnn", *teacher, losses=("MIMIC",)))
    assert list(model.terms[0].adapters) == feature_names("faster_rcnn")

"""DIST+ teacher acclimation (d2dist's documented reconstruction) inside the DIST terms."""

import pytest
import torch
from _tiny import (
    build_distiller,
    distill_cfg,
    inputs,
    with_and_without_head_acclimation,
    write_teacher,
)
from detectron2.utils.events import EventStorage

from d2dist.errors import ConfigError
from d2dist.modeling.terms import dist_feature_loss


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_teacher(str(tmp_path_factory.mktemp("t")), "faster_rcnn")


def _model(teacher, terms=("DIST_FEATURE",), **acclimation):
    cfg = distill_cfg("faster_rcnn", *teacher, losses=terms)
    cfg.MODEL.DISTILL.DIST_FEATURE.IN_FEATURES = ["p3", "p4"]
    for key, value in {"ENABLED": True, **acclimation}.items():
        cfg.MODEL.DISTILL.ACCLIMATION[key] = value
    torch.manual_seed(0)
    return build_distiller(cfg)


def _losses(model, iteration=0, seed=0):
    torch.manual_seed(seed)
    model.train()
    with EventStorage(iteration):
        return model(inputs("faster_rcnn"))


def _train(model, steps, lr=0.1):
    params = [p for n, p in model.named_parameters() if "acclimation" in n]
    opt = torch.optim.SGD(params, lr=lr)
    for i in range(steps):
        loss = sum(_losses(model, iteration=i).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return params


def test_step_zero_equals_plain_dist(teacher):
    plain = _losses(_model(teacher, ENABLED=False))
    acclimated = _losses(_model(teacher))
    torch.testing.assert_close(
        acclimated["loss_distill_dist_feature"], plain["loss_distill_dist_feature"]
    )
    assert acclimated["loss_distill_dist_feature_acclimation_anchor"] == 0
    assert "loss_distill_dist_feature_acclimation_anchor" not in plain


def test_acclimation_trains_and_the_anchor_holds_it_near_identity(teacher):
    def drift(model):
        return sum(p.abs().sum() for n, p in model.named_parameters() if "acclimation" in n)

    free, anchored = _model(teacher, LAMBDA=0.0), _model(teacher, LAMBDA=4.0)
    _train(free, 3, lr=0.1)
    _train(anchored, 3, lr=0.1)  # each anchor step shrinks theta by (1 - 0.1 * 4 * 2) = 0.2
    assert drift(free) > 0  # it trains
    assert drift(anchored) < 0.5 * drift(free)


def test_one_evaluation_gives_both_detached_updates(teacher):
    """d(loss)/d(student) = with the teacher side detached; d(loss)/d(theta) = with the student
    side detached: the reconstruction's two updates from a single loss evaluation."""
    model = _model(teacher)
    term = model.terms[0]
    with torch.no_grad():
        for m in term.acclimation.values():
            m.scale.uniform_(-0.3, 0.3)
            m.shift.uniform_(-0.3, 0.3)
    torch.manual_seed(0)
    with EventStorage(0):
        with model.extractor.student_recorder() as rec:
            model.student(inputs("faster_rcnn"))
        targets = model.extractor.extract(inputs("faster_rcnn"), rec)
        adapted = {n: term.adapters[n](targets.features[n][0]) for n in ("p3", "p4")}
        value, _, _ = term(targets)
    names = ("p3", "p4")
    theta = [p for n in names for p in (term.acclimation[n].scale, term.acclimation[n].shift)]
    g_theta = torch.autograd.grad(value, theta)
    # reference for theta: the loss with the student side detached
    ref_theta = sum(
        dist_feature_loss(
            adapted[n].detach(), term.acclimation[n](targets.features[n][1]), detach_teacher=False
        )
        for n in names
    )
    for g, r in zip(g_theta, torch.autograd.grad(ref_theta, theta)):
        torch.testing.assert_close(g, r)
    # the student's gradient of the same single evaluation equals the teacher-detached one
    single = sum(
        dist_feature_loss(
            adapted[n], term.acclimation[n](targets.features[n][1]), detach_teacher=False
        )
        for n in names
    )
    detached = sum(
        dist_feature_loss(adapted[n], term.acclimation[n](targets.features[n][1]).detach())
        for n in names
    )
    student = [adapted[n] for n in names]
    for g, r in zip(torch.autograd.grad(single, student), torch.autograd.grad(detached, student)):
        torch.testing.assert_close(g, r)
    torch.testing.assert_close(single, value)  # the term computed exactly this loss


def test_off_before_start_and_frozen_after_stop(teacher):
    model = _model(teacher, START_ITER=2, STOP_ITER=4)
    term = model.terms[0]
    with torch.no_grad():  # a per-channel scale (a shift would not change a Pearson loss)
        for m in term.acclimation.values():
            m.scale.copy_(torch.linspace(-0.5, 0.5, m.scale.numel()))
    plain = _model(teacher, ENABLED=False)
    for it in (0, 1):  # off: the teacher is unmodified, nothing trains
        off = _losses(model, iteration=it)
        torch.testing.assert_close(
            off["loss_distill_dist_feature"],
            _losses(plain, iteration=it)["loss_distill_dist_feature"],
        )
        assert "loss_distill_dist_feature_acclimation_anchor" not in off
    trained = _losses(model, iteration=2)
    assert trained["loss_distill_dist_feature_acclimation_anchor"] > 0
    assert trained["loss_distill_dist_feature"] != off["loss_distill_dist_feature"]
    frozen = _losses(model, iteration=4)  # applied, but no gradient reaches it
    assert "loss_distill_dist_feature_acclimation_anchor" not in frozen
    model.zero_grad()
    sum(frozen.values()).backward()
    assert all(p.grad is None for p in term.acclimation.parameters())
    assert (
        frozen["loss_distill_dist_feature"]
        != _losses(plain, iteration=4)["loss_distill_dist_feature"]
    )


def test_acclimation_is_saved_and_restored_with_the_run(teacher):
    model = _model(teacher, terms=("DIST_FEATURE", "DIST"))
    _train(model, 2)
    state = model.state_dict()
    keys = [k for k in state if "acclimation" in k]
    assert "terms.0.acclimation.p3.scale" in keys and "terms.1.acclimation.log_t" in keys
    assert not any(k.startswith("teacher") for k in state)
    fresh = _model(teacher, terms=("DIST_FEATURE", "DIST"))
    fresh.load_state_dict(state)
    for k in keys:
        assert torch.equal(fresh.state_dict()[k], state[k])
    assert state["terms.1.acclimation.log_t"] != 0  # the logit temperature trained too


def test_shift_alone_does_not_change_the_raw_feature_loss(teacher):
    """With NORMALIZE none, Pearson correlations ignore a per-channel shift (documented)."""
    model = _model(teacher)
    before = _losses(model)["loss_distill_dist_feature"]
    with torch.no_grad():
        for m in model.terms[0].acclimation.values():
            m.shift.fill_(0.5)
    torch.testing.assert_close(_losses(model)["loss_distill_dist_feature"], before)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"START_ITER": 5, "STOP_ITER": 2}, r"ACCLIMATION: acclimation START_ITER=5, STOP_ITER=2"),
        ({"LAMBDA": -1.0}, r"ACCLIMATION.LAMBDA=-1.0 must be >= 0"),
    ],
)
def test_acclimation_configuration_errors(teacher, change, message):
    with pytest.raises(ConfigError, match=message):
        _model(teacher, **change)


# ---- the second reconstruction: head acclimation (MODE head) --------------------------------
def _head_model(tmp_path, arch, **dist):
    teacher = write_teacher(str(tmp_path), arch)
    cfg = distill_cfg(arch, *teacher, losses=("DIST",))
    for key, value in dist.items():
        cfg.MODEL.DISTILL.DIST[key] = value
    return with_and_without_head_acclimation(cfg)


def _step(model, arch, iteration=0):
    torch.manual_seed(0)
    model.train()
    with EventStorage(iteration):
        return model(inputs(arch))


HEAD_CASES = [("faster_rcnn", {}), ("cascade_rcnn", {}), ("retinanet", {}),
              ("semantic_fpn", {"MASK_IGNORE": True})]  # fmt: skip


@pytest.mark.parametrize("arch,dist", HEAD_CASES, ids=[c[0] for c in HEAD_CASES])
def test_head_acclimation_starts_as_the_teacher_and_trains_a_copy_of_its_classifier(
    tmp_path, arch, dist
):
    head, plain = _head_model(tmp_path, arch, **dist)
    acclimation = head.terms[0].acclimation
    before = [layer.weight.clone() for layer in acclimation.layers]
    first = _step(head, arch)
    torch.testing.assert_close(first["loss_distill_dist"], _step(plain, arch)["loss_distill_dist"])
    assert first["loss_distill_dist_acclimation_anchor"] == 0  # KL(teacher || itself)

    params = list(acclimation.parameters())
    opt = torch.optim.SGD(params, lr=1.0)
    for i in range(3):
        losses = _step(head, arch, iteration=i)
        opt.zero_grad()
        sum(losses.values()).backward()
        assert all(p.grad is not None for p in params)
        opt.step()
    assert any(p.abs().sum() > 0 for p in params)  # the copy moved away from the teacher
    later = _step(head, arch, iteration=3)
    assert later["loss_distill_dist_acclimation_anchor"] > 0
    # the teacher's own layer is untouched and outside the state dict (its offsets are in it)
    assert all(torch.equal(b, layer.weight) for b, layer in zip(before, acclimation.layers))
    keys = [k for k in head.state_dict() if "acclimation" in k]
    assert "terms.0.acclimation.weight_offsets.0" in keys
    assert not any(k.startswith("teacher") for k in head.state_dict())


def test_head_acclimation_updates_the_copy_with_the_student_side_detached(tmp_path):
    """The copy's gradient is the loss's with the student side detached, the student's the loss's
    with the teacher side detached (one computation serves both)."""
    from d2dist.modeling.terms import dist_loss

    head, _ = _head_model(tmp_path, "faster_rcnn")
    term, acclimation = head.terms[0], head.terms[0].acclimation
    with torch.no_grad():
        for p in acclimation.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(0)
    head.train()
    with EventStorage(0):
        with head.extractor.student_recorder() as rec:
            head.student(inputs("faster_rcnn"))
        targets = head.extractor.extract(inputs("faster_rcnn"), rec)
        pair = targets.roi
        out = term(targets)
    out.loss.backward()
    got = [p.grad.clone() for p in acclimation.parameters()]
    acclimation.zero_grad()
    t = torch.cat([acclimation(x, stage) for stage, x in pair.teacher_inputs])
    dist_loss(pair.student.detach(), t, detach_teacher=False).backward()
    for a, p in zip(got, acclimation.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_head_acclimation_needs_a_logit_term(teacher):
    with pytest.raises(ConfigError, match="MODE='nope'"):
        _model(teacher, terms=("DIST",), MODE="nope")


def test_acclimation_that_no_term_uses_is_an_error(teacher):
    with pytest.raises(ConfigError, match=r"ENABLED is True, but no term of LOSSES=\['MIMIC'\]"):
        _model(teacher, terms=("MIMIC",))
    with pytest.raises(ConfigError, match=r"MODE 'head' acclimates DIST\)"):
        _model(teacher, terms=("DIST_FEATURE",), MODE="head")

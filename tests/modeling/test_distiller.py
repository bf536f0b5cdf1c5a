"""The Distiller end to end on tiny models of every supported meta-architecture."""

import copy

import pytest
import torch
from _tiny import ARCHS, META, build_distiller, distill_cfg, inputs, write_teacher
from detectron2.utils.events import EventStorage

from d2dist.modeling import Distiller


def _train_steps(model, batch, steps=2):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    with EventStorage(0) as storage:
        for _ in range(steps):
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            storage.step()
    return losses, storage


def _same_outputs(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if key == "instances":
                fields_x, fields_y = x[key].get_fields(), y[key].get_fields()
                assert fields_x.keys() == fields_y.keys()
                for f in fields_x:
                    vx, vy = fields_x[f], fields_y[f]
                    vx = vx.tensor if hasattr(vx, "tensor") else vx
                    vy = vy.tensor if hasattr(vy, "tensor") else vy
                    assert torch.equal(vx, vy), f
            elif key == "panoptic_seg":
                assert torch.equal(x[key][0], y[key][0]) and x[key][1] == y[key][1]
            else:
                assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("arch", ARCHS)
def test_distiller_trains_and_evaluates_like_the_student(arch, tmp_path):
    t_cfg, t_weights = write_teacher(str(tmp_path), arch)
    cfg = distill_cfg(arch, t_cfg, t_weights)
    torch.manual_seed(0)
    model = build_distiller(cfg)
    assert isinstance(model, Distiller)
    assert type(model.student).__name__ == META[arch]
    teacher = model.teacher
    # The teacher is outside the state dict, the parameters and train(): never saved or trained.
    assert not any(k.startswith("teacher") for k in model.state_dict())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in model.parameters()}
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(model.student.state_dict())
    adapters_before = copy.deepcopy(model.terms.state_dict())

    batch = inputs(arch)
    losses, storage = _train_steps(model, batch)

    assert {"loss_distill_mimic", "loss_distill_kd"} <= set(losses)
    student_keys = set(losses) - {"loss_distill_mimic", "loss_distill_kd"}
    assert student_keys and all(k.startswith("loss_") for k in student_keys)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert losses["loss_distill_mimic"] > 0 and losses["loss_distill_kd"] > 0
    # Per-level values are logged, not added to the loss dict.
    logged = storage.histories()
    for level in cfg.MODEL.DISTILL.MIMIC.IN_FEATURES:
        assert f"distill/mimic/{level}" in logged
        assert f"loss_distill_mimic_{level}" not in losses

    # Every trainable parameter (student and adapters) had a gradient in the last step: DDP
    # without find_unused_parameters (the default for such configs) relies on it.
    assert not model.needs_find_unused_parameters
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]

    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), f"teacher {k} changed"
    changed = [
        k for k, v in model.student.state_dict().items() if not torch.equal(v, student_before[k])
    ]
    assert any("backbone" in k for k in changed) and len(changed) > 10
    adapters_after = model.terms.state_dict()
    for k, v in adapters_before.items():
        if v.is_floating_point() and k.endswith("weight"):
            assert not torch.equal(v, adapters_after[k]), f"adapter {k} did not train"

    model.train()
    assert model.student.training and not teacher.training

    model.eval()
    eval_batch = inputs(arch, annotated=False, seed=1)
    with torch.no_grad():
        _same_outputs(model(eval_batch), model.student(eval_batch))

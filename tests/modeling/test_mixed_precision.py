"""Mixed precision: what ``SOLVER.AMP`` runs under, checked with the CPU's bfloat16 autocast.

Detectron2's AMPTrainer runs the whole ``Distiller.forward`` inside CUDA autocast. The same
contract is checked here inside CPU autocast: the student and the adapters run in the low
precision, the teacher in its own (``TEACHER.AUTOCAST``, float32 when empty), every loss in
float32.
"""

import pytest
import torch
import torch.nn.functional as F
from _tiny import build_distiller, distill_cfg, inputs, write_teacher
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from d2dist.modeling import Recorder
from d2dist.modeling.terms.common import float32_loss

CASES = [
    # (arch, terms, overrides of MODEL.DISTILL)
    ("faster_rcnn", ["ReviewKD", "DIST", "MIMIC"], {"REVIEWKD.MID_CHANNELS": 8}),
    ("faster_rcnn", ["DIST_FEATURE", "DIST", "PKD"], {"ACCLIMATION.ENABLED": True}),
    ("retinanet", ["DIST", "KD", "CWD"], {"CWD.IN_FEATURES": ["p3", "p4", "p5", "p6", "p7"]}),
    ("semantic_fpn", ["DIST", "CWD"], {"CWD.TARGET": "pixel"}),
]  # fmt: skip


def _model(tmp_path, arch, terms, distill, teacher_autocast=""):
    cfg = distill_cfg(arch, *write_teacher(str(tmp_path), arch), losses=terms)
    for key, value in distill.items():
        ns, k = key.split(".")
        cfg.MODEL.DISTILL[ns][k] = value
    cfg.MODEL.DISTILL.TEACHER.AUTOCAST = teacher_autocast
    torch.manual_seed(0)
    return build_distiller(cfg)


def _autocast_step(model, batch):
    model.train()
    with EventStorage(0), torch.autocast("cpu", dtype=torch.bfloat16):
        with Recorder(model.teacher, outputs=["backbone"]) as teacher_rec:
            losses = model(batch)
    return losses, teacher_rec.output("backbone")


def _at_128_px(batch):
    """The batch doubled in size. At 64 px RetinaNet's P7 conv reads a 1x1 P6, and on this
    machine's CPU a bfloat16 3x3 stride-2 conv on a 1x1 input gets non-finite weight gradients
    now and then (24 of 1000 tries of a plain ``nn.Conv2d``, without d2dist: a CPU-kernel
    problem, not the contract tested here); at 128 px no input is 1x1."""
    doubled = []
    for x in batch:
        y = {**x, "height": 2 * x["height"], "width": 2 * x["width"]}
        y["image"] = F.interpolate(x["image"][None], scale_factor=2.0, mode="nearest")[0]
        y["sem_seg"] = x["sem_seg"].repeat_interleave(2, 0).repeat_interleave(2, 1)
        y["instances"] = Instances((y["height"], y["width"]))
        y["instances"].gt_boxes = Boxes(x["instances"].gt_boxes.tensor * 2)
        y["instances"].gt_classes = x["instances"].gt_classes
        doubled.append(y)
    return doubled


@pytest.mark.parametrize("arch,terms,distill", CASES, ids=lambda x: str(x))
def test_a_step_under_autocast(tmp_path, arch, terms, distill):
    model = _model(tmp_path, arch, terms, distill)
    adapter_dtypes = []
    convs = [m for m in model.terms.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        conv.register_forward_hook(lambda m, a, out: adapter_dtypes.append(out.dtype))
    losses, teacher_feats = _autocast_step(model, _at_128_px(inputs(arch)))
    # The teacher keeps float32 (AUTOCAST ""), inside the student's mixed-precision region.
    assert {f.dtype for f in teacher_feats.values()} == {torch.float32}
    # Adapters ran in bfloat16 (as in AMP), every distillation loss is float32 and finite.
    assert set(adapter_dtypes) == ({torch.bfloat16} if convs else set())
    for term in model.terms:
        value = losses[term.loss_key]
        assert value.dtype == torch.float32 and value.dim() == 0 and torch.isfinite(value)
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in trainable)


def test_the_teachers_own_autocast_applies_inside_amp(tmp_path):
    model = _model(tmp_path, "faster_rcnn", ["MIMIC"], {}, teacher_autocast="bfloat16")
    losses, teacher_feats = _autocast_step(model, inputs("faster_rcnn"))
    assert {f.dtype for f in teacher_feats.values()} == {torch.bfloat16}
    assert losses["loss_distill_mimic"].dtype == torch.float32


def test_losses_leave_autocast():
    """The loss functions switch autocast off, so even a matrix product stays float32."""
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    matmul = float32_loss(lambda x, y: x @ y)
    expected = a @ b
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16  # what the losses would get without it
        assert torch.equal(matmul(a, b), expected)
        assert torch.is_autocast_enabled("cpu")  # and it is on again after the loss

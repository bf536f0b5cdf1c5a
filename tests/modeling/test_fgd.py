"""FGD (Yang et al., CVPR 2022): its masks, attention and loss (fixed values, properties, parity
with a straightforward reference), the context block, and the term through the Distiller."""

import math

import pytest
import torch
from _tiny import build_distiller, distill_cfg, inputs, write_teacher
from detectron2.utils.events import EventStorage
from torch import nn

from d2dist.errors import ConfigError
from d2dist.modeling.terms import fgd_loss, fgd_masks
from d2dist.modeling.terms.fgd import FGDContext, _attention


def test_masks_cover_floor_to_ceil_inclusive_with_the_unclipped_area():
    # one box on an 8 px grid: x 4..12 -> 0.5..1.5 -> columns 0..2; y 0..8 -> rows 0..1
    fg, bg = fgd_masks([torch.tensor([[4.0, 0.0, 12.0, 8.0]])], [(32, 32)], (4, 4), 8)
    expected = torch.zeros(4, 4)
    expected[0:2, 0:3] = 1.0 / 6
    torch.testing.assert_close(fg[0], expected)
    torch.testing.assert_close(bg[0], (expected == 0).float() / 10)
    assert bg[0].sum().item() == pytest.approx(1.0)


def test_masks_clip_at_the_border_and_take_the_maximum_where_boxes_overlap():
    boxes = torch.tensor([[20.0, 20.0, 40.0, 40.0],  # 2.5..5 -> rows / columns 2..5: 4 x 4 = 16
                          [24.0, 24.0, 31.0, 31.0]])  # 3..3.875 -> 3..4: 2 x 2 = 4  # fmt: skip
    fg, _ = fgd_masks([boxes], [(32, 32)], (4, 4), 8)  # a 4 x 4 map: the first is clipped
    expected = torch.zeros(4, 4)
    expected[2:4, 2:4] = 1.0 / 16
    expected[3, 3] = 1.0 / 4  # the smaller box's larger value wins
    torch.testing.assert_close(fg[0], expected)


def test_image_mode_stretches_the_boxes_of_padded_images_as_the_authors_code():
    box = [torch.tensor([[0.0, 0.0, 16.0, 16.0]])]
    by_stride, _ = fgd_masks(box, [(16, 32)], (4, 4), 8)  # the image is padded to 32 x 32
    by_image, _ = fgd_masks(box, [(16, 32)], (4, 4), 8, mode="image")
    assert by_stride[0, :3, :3].gt(0).all() and by_stride[0, 3].sum() == 0
    # y: 16 / 16 * 4 = 4: the box reaches the map's last row (the padding) too
    assert by_image[0, :, :3].gt(0).all() and by_image[0, :, 3].sum() == 0
    with pytest.raises(ValueError, match="mode='x'"):
        fgd_masks(box, [(16, 32)], (4, 4), 8, mode="x")


def test_an_image_without_boxes_is_all_background():
    fg, bg = fgd_masks([torch.zeros(0, 4)], [(32, 32)], (2, 2), 16)
    assert fg.sum() == 0 and torch.allclose(bg, torch.full((1, 2, 2), 0.25))


def test_attention_is_scaled_softmax_of_absolute_values():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5)
    spatial, channel = _attention(x, 0.5)
    torch.testing.assert_close(spatial.sum(dim=(1, 2)), torch.full((2,), 20.0))
    torch.testing.assert_close(channel.sum(dim=1), torch.full((2,), 3.0))
    a = x.abs().mean(dim=1)[0].flatten() / 0.5
    torch.testing.assert_close(spatial[0].flatten(), 20 * torch.softmax(a, dim=0))


def _reference(s, t, fg, bg, ctx_s, ctx_t, tau, alpha, beta, gamma, lam):
    """FGD written out with loops over images, channels and positions."""
    n, c, h, w = s.shape
    parts = dict.fromkeys(("fg", "bg", "attention", "relation"), 0.0)
    rs, rt = ctx_s(s), ctx_t(t)
    for i in range(n):
        a_t, a_s = t[i].abs(), s[i].abs()
        sa_t = h * w * torch.softmax((a_t.mean(0) / tau).flatten(), 0).reshape(h, w)
        sa_s = h * w * torch.softmax((a_s.mean(0) / tau).flatten(), 0).reshape(h, w)
        ca_t = c * torch.softmax(a_t.mean((1, 2)) / tau, 0)
        ca_s = c * torch.softmax(a_s.mean((1, 2)) / tau, 0)
        for k in range(c):
            parts["attention"] += abs(float(ca_s[k] - ca_t[k])) / n
            for y in range(h):
                for x in range(w):
                    e = float(s[i, k, y, x] - t[i, k, y, x]) ** 2 * float(sa_t[y, x] * ca_t[k])
                    parts["fg"] += float(fg[i, y, x]) * e / n
                    parts["bg"] += float(bg[i, y, x]) * e / n
                    parts["relation"] += float(rs[i, k, y, x] - rt[i, k, y, x]) ** 2 / n
        parts["attention"] += float((sa_s - sa_t).abs().sum()) / n
    total = alpha * parts["fg"] + beta * parts["bg"] + gamma * parts["attention"]
    return total + lam * parts["relation"], parts


def _trained_context(channels, seed):
    torch.manual_seed(seed)
    ctx = FGDContext(channels)
    nn.init.normal_(ctx.channel_add[-1].weight, std=0.5)  # as after training: delta != 0
    return ctx


def test_parity_with_a_straightforward_reference():
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    fg, bg = fgd_masks([torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.zeros(0, 4)],
                       [(24, 24), (24, 24)], (3, 3), 8)  # fmt: skip
    ctx_s, ctx_t = _trained_context(4, 1), _trained_context(4, 2)
    args = (0.7, 1.0, 0.5, 0.25, 0.125)
    total, parts = fgd_loss(s, t, fg, bg, ctx_s, ctx_t, *args)
    ref_total, ref = _reference(s, t, fg, bg, ctx_s, ctx_t, *args)
    for k in ref:
        assert parts[k].item() == pytest.approx(ref[k], rel=1e-4), k
    assert total.item() == pytest.approx(ref_total, rel=1e-4)


def test_properties():
    torch.manual_seed(0)
    t = torch.randn(2, 4, 3, 3)
    fg, bg = fgd_masks([torch.tensor([[0.0, 0.0, 8.0, 8.0]])] * 2, [(24, 24)] * 2, (3, 3), 8)
    ctx_s, ctx_t = FGDContext(4), FGDContext(4)
    total, parts = fgd_loss(t.clone(), t, fg, bg, ctx_s, ctx_t)  # the student equals the teacher
    assert total == 0 and all(v == 0 for v in parts.values())
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    t.requires_grad_(True)
    ctx_s, ctx_t = _trained_context(4, 1), _trained_context(4, 2)
    total, parts = fgd_loss(s, t, fg, bg, ctx_s, ctx_t)
    assert total.dtype == torch.float32 and total.dim() == 0
    parts["attention"].backward(retain_graph=True)
    assert s.grad.abs().sum() > 0  # the student's attention is not detached
    total.backward()
    assert t.grad is None
    for ctx in (ctx_s, ctx_t):  # both context blocks are trained by the relation loss
        assert all(p.grad is not None for p in ctx.parameters())


def test_the_context_block_starts_as_the_identity():
    torch.manual_seed(0)
    ctx = FGDContext(8)
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(ctx(x), x)
    assert (ctx.channel_add[-1].weight == 0).all() and (ctx.attention.bias == 0).all()
    std = ctx.attention.weight.std().item()  # Kaiming normal, fan_in = 8, relu gain
    assert 0.2 < std / math.sqrt(2 / 8) < 2.0
    with pytest.raises(ConfigError, match="at least 2 channels"):
        FGDContext(1)


@pytest.mark.parametrize("arch,levels", [("faster_rcnn", ["p2", "p3", "p4", "p5"]),
                                         ("fcos", ["p3", "p4", "p5", "p6", "p7"])])  # fmt: skip
def test_the_term_through_the_distiller(tmp_path, arch, levels):
    teacher = write_teacher(str(tmp_path), arch)
    cfg = distill_cfg(arch, *teacher, losses=["FGD"])
    cfg.MODEL.DISTILL.FGD.IN_FEATURES = levels
    model = build_distiller(cfg)
    model.train()
    torch.manual_seed(0)
    with EventStorage(0) as storage:
        losses = model(inputs(arch))
    assert torch.isfinite(losses["loss_distill_fgd"]) and losses["loss_distill_fgd"] > 0
    logged = storage.latest()
    assert {f"distill/fgd/{levels[0]}_{k}" for k in ("fg", "bg", "attention", "relation")} <= set(
        logged
    )
    term = model.terms[0]
    assert list(term.contexts_s) == list(term.contexts_t) == levels


def test_configuration_errors(tmp_path):
    teacher = write_teacher(str(tmp_path), "semantic_fpn")
    cfg = distill_cfg("semantic_fpn", *teacher, losses=["FGD"])
    with pytest.raises(ConfigError, match="FGD, which distils detectors.*SemanticSegmentor"):
        build_distiller(cfg)
    teacher = write_teacher(str(tmp_path), "faster_rcnn")
    cfg = distill_cfg("faster_rcnn", *teacher, losses=["FGD"])
    cfg.MODEL.DISTILL.FGD.MASK_MODE = "pixels"
    with pytest.raises(ConfigError, match="MASK_MODE='pixels'"):
        build_distiller(cfg)
    cfg.MODEL.DISTILL.FGD.MASK_MODE = "stride"
    cfg.MODEL.DISTILL.FGD.GAMMA = -1.0
    with pytest.raises(ConfigError, match="FGD.GAMMA=-1.0"):
        build_distiller(cfg)

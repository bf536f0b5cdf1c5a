"""MGD (Yang et al., ECCV 2022): the loss function's fixed values, properties and parity with a
straightforward reference, its masks, and the term end to end through the Distiller."""

import pytest
import torch
from _tiny import build_distiller, distill_cfg, inputs, write_teacher
from detectron2.utils.events import EventStorage
from torch import nn

from d2dist.errors import ConfigError
from d2dist.modeling import DISTILL_MODULE_REGISTRY, build_distill_module
from d2dist.modeling.terms import mgd_loss
from d2dist.modeling.terms.mgd import MGDGenerator, mgd_mask


def test_fixed_value_with_an_identity_generator():
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 2, 2)
    t = torch.zeros_like(s)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    # sum((s * mask - t)^2) / N = (1 + 16) / 1
    torch.testing.assert_close(mgd_loss(s, t, nn.Identity(), mask), torch.tensor(17.0))
    torch.testing.assert_close(
        mgd_loss(s, t, nn.Identity(), mask, alpha=2e-5), torch.tensor(3.4e-4)
    )


def _reference(s, t, generator, mask, alpha):
    """MGD written out: mask each position, generate, squared error summed, over the batch."""
    n = s.shape[0]
    total = 0.0
    generated = generator(s * mask)
    for i in range(n):
        for c in range(s.shape[1]):
            for y in range(s.shape[2]):
                for x in range(s.shape[3]):
                    total += float(generated[i, c, y, x] - t[i, c, y, x]) ** 2
    return alpha * total / n


def test_parity_with_a_straightforward_reference():
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    generator = MGDGenerator(4)
    mask = (torch.rand(2, 1, 3, 5) > 0.4).float()
    got = mgd_loss(s, t, generator, mask, alpha=0.5)
    assert got.item() == pytest.approx(_reference(s, t, generator, mask, 0.5), rel=1e-5)


def test_properties():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    generator = MGDGenerator(3)
    mask = torch.ones(2, 1, 4, 4)
    loss = mgd_loss(s, t, generator, mask)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and loss > 0
    loss.backward()
    assert s.grad is not None and t.grad is None  # the teacher side is detached
    assert all(p.grad is not None for p in generator.parameters())  # the generator trains
    # a sum over channels and positions, a mean over the batch only: repeating the batch keeps it
    twice = mgd_loss(torch.cat([s, s]), torch.cat([t, t]), generator, torch.cat([mask, mask]))
    torch.testing.assert_close(twice, loss)
    # zero when the generator reproduces the teacher
    assert mgd_loss(s, s.detach(), nn.Identity(), mask) == 0
    # float32 for low-precision inputs
    low = mgd_loss(s.bfloat16(), t.bfloat16(), generator, mask)
    assert low.dtype == torch.float32
    with pytest.raises(ValueError, match="the mask must be"):
        mgd_loss(s, t, generator, torch.ones(2, 3, 4, 4))


def test_the_generator_and_its_registry_entry():
    g = build_distill_module("MGDGenerator", channels=8)
    assert DISTILL_MODULE_REGISTRY.get("MGDGenerator") is MGDGenerator
    convs = [m for m in g if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3)] and isinstance(g[1], nn.ReLU)
    assert all(c.bias is not None and c.padding == (1, 1) for c in convs)
    assert g(torch.zeros(1, 8, 5, 7)).shape == (1, 8, 5, 7)


def test_masks_drop_positions_with_probability_lambda_for_all_channels():
    g = torch.Generator().manual_seed(0)
    mask = mgd_mask((4, 1, 64, 64), 0.45, g, "cpu")
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert abs((mask == 0).float().mean().item() - 0.45) < 0.02
    again = mgd_mask((4, 1, 64, 64), 0.45, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(mask, again)
    assert (mgd_mask((1, 1, 8, 8), 0.0, g, "cpu") == 1).all()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_teacher(str(tmp_path_factory.mktemp("mgd")), "faster_rcnn")


def _step(model, batch, iteration):
    model.train()
    with EventStorage(iteration):
        return model(batch)


def test_the_term_draws_its_masks_from_the_seed_and_the_iteration(teacher):
    cfg = distill_cfg("faster_rcnn", *teacher, losses=["MGD"])
    cfg.MODEL.DISTILL.MGD.WEIGHT = 1.0
    model = build_distiller(cfg)
    term = model.terms[0]
    assert list(term.adapters) == list(term.generators) == ["p2", "p3", "p4", "p5"]
    assert isinstance(term.adapters["p2"][0], nn.Conv2d)  # widths 16 -> 32: a 1x1 conv
    assert term.adapters["p2"][0].bias is not None  # with bias, as the authors'
    batch = inputs("faster_rcnn")
    torch.manual_seed(0)
    a = _step(model, batch, 3)["loss_distill_mgd"]
    torch.manual_seed(0)
    b = _step(model, batch, 3)["loss_distill_mgd"]
    torch.manual_seed(0)
    c = _step(model, batch, 4)["loss_distill_mgd"]
    assert a == b and a != c  # same iteration, same masks (so a resumed run draws the same)


def test_configuration_errors(teacher):
    cfg = distill_cfg("faster_rcnn", *teacher, losses=["MGD"])
    cfg.MODEL.DISTILL.MGD.LAMBDA = 1.0
    with pytest.raises(
        ConfigError, match=r"MGD.LAMBDA=1.0: the masked fraction must be in \[0, 1\)"
    ):
        build_distiller(cfg)
    cfg.MODEL.DISTILL.MGD.LAMBDA = 0.5
    cfg.MODEL.DISTILL.MGD.IN_FEATURES = ["p2", "p2"]
    with pytest.raises(ConfigError, match=r"names \['p2'\] more than once"):
        build_distiller(cfg)

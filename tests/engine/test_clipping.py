"""SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model": the norm of all gradients together is clipped (as
mmdetection's grad_clip, which the MGD, FGD and CrossKD recipes use)."""

import pytest
import torch
from torch import nn

from d2dist.config import get_cfg
from d2dist.engine import Trainer
from d2dist.engine.optim import clip_full_model
from d2dist.errors import ConfigError


def _grads(model, scale):
    for i, p in enumerate(model.parameters()):
        p.grad = torch.full_like(p, scale * (i + 1))


def test_the_norm_of_all_gradients_together_is_clipped():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    before = [p.detach().clone() for p in model.parameters()]
    opt = clip_full_model(torch.optim.SGD(model.parameters(), lr=1.0), max_norm=1.0)
    assert isinstance(opt, torch.optim.SGD)
    _grads(model, 10.0)
    norm = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    expected = [b - p.grad / norm for b, p in zip(before, model.parameters())]
    opt.step()
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e)
    # under the limit: untouched gradients
    _grads(model, 1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    for b, p in zip(before, model.parameters()):
        torch.testing.assert_close(p.detach(), b - p.grad)


def test_the_trainer_builds_it_from_the_config():
    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 35.0
    opt = Trainer.build_optimizer(cfg, nn.Linear(2, 2))
    assert type(opt).__name__.endswith("WithFullModelGradientClipping")
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.0
    with pytest.raises(ConfigError, match="CLIP_VALUE=0.0"):
        Trainer.build_optimizer(cfg, nn.Linear(2, 2))

"""Adapters built from ShapeSpecs: identity vs. 1x1 conv, and their configuration errors."""

import pytest
import torch
from detectron2.layers import ShapeSpec
from torch import nn

from d2dist.errors import ConfigError
from d2dist.modeling.adapters import (
    DISTILL_MODULE_REGISTRY,
    Conv1x1Adapter,
    IdentityAdapter,
    build_adapter,
)


def _spec(channels: int, stride: int = 8) -> ShapeSpec:
    return ShapeSpec(channels=channels, stride=stride)


def test_registry_holds_both_adapters():
    assert DISTILL_MODULE_REGISTRY.get("IdentityAdapter") is IdentityAdapter
    assert DISTILL_MODULE_REGISTRY.get("Conv1x1Adapter") is Conv1x1Adapter


def test_auto_is_identity_when_channels_match():
    adapter = build_adapter("auto", _spec(8), _spec(8), key="p3")
    assert type(adapter) is IdentityAdapter
    x = torch.randn(2, 8, 3, 3)
    assert adapter(x) is x
    assert len(list(adapter.parameters())) == 0


def test_auto_is_conv_when_channels_differ():
    adapter = build_adapter("auto", _spec(4), _spec(6), key="p3")
    assert type(adapter) is Conv1x1Adapter
    assert adapter(torch.randn(2, 4, 3, 5)).shape == (2, 6, 3, 5)


def test_auto_is_conv_when_channels_match_but_norm_is_set():
    adapter = build_adapter("auto", _spec(8), _spec(8), norm="BN", key="p3")
    assert type(adapter) is Conv1x1Adapter
    assert isinstance(adapter[1], nn.BatchNorm2d)


def test_conv_adapter_without_norm_has_zero_bias():
    torch.manual_seed(0)
    adapter = build_adapter("Conv1x1Adapter", _spec(3), _spec(5), key="p4")
    assert len(adapter) == 1
    conv = adapter[0]
    assert conv.weight.shape == (5, 3, 1, 1)
    assert conv.bias is not None and conv.bias.shape == (5,)
    assert torch.equal(conv.bias, torch.zeros(5))
    assert conv.weight.abs().sum() > 0  # initialised, not zero
    x = torch.randn(2, 3, 4, 4)
    y = adapter(x)
    assert y.shape == (2, 5, 4, 4)
    # A 1x1 conv is a per-position matrix product over channels (bias is zero).
    w = conv.weight[:, :, 0, 0]
    ref = torch.einsum("oc,nchw->nohw", w, x)
    torch.testing.assert_close(y, ref)


def test_conv_adapter_with_bn_has_no_bias():
    adapter = build_adapter("Conv1x1Adapter", _spec(3), _spec(5), norm="BN", key="p4")
    assert len(adapter) == 2
    assert adapter[0].bias is None
    assert isinstance(adapter[1], nn.BatchNorm2d) and adapter[1].num_features == 5
    adapter.train()
    y = adapter(torch.randn(2, 3, 4, 4))
    assert y.shape == (2, 5, 4, 4)
    # Training-mode BN with its initial affine gives zero mean per channel.
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(5), atol=1e-5, rtol=0)


def test_conv_adapter_with_gn_has_no_bias():
    adapter = build_adapter("Conv1x1Adapter", _spec(16), _spec(64), norm="GN", key="p5")
    assert adapter[0].bias is None
    assert isinstance(adapter[1], nn.GroupNorm)
    assert adapter[1].num_groups == 32 and adapter[1].num_channels == 64
    assert adapter(torch.randn(2, 16, 2, 3)).shape == (2, 64, 2, 3)


def test_conv_adapter_backward_reaches_weights():
    adapter = build_adapter("Conv1x1Adapter", _spec(2), _spec(3), key="p3")
    adapter(torch.randn(1, 2, 2, 2)).sum().backward()
    assert adapter[0].weight.grad is not None and adapter[0].bias.grad is not None


def test_identity_with_different_channels_raises():
    with pytest.raises(
        ConfigError,
        match=r"feature 'p3' has 128 channels in the student and 256 in the teacher.*"
        r"Conv1x1Adapter",
    ):
        build_adapter("IdentityAdapter", _spec(128), _spec(256), key="p3")


def test_identity_with_norm_raises():
    with pytest.raises(ConfigError, match=r"ADAPTER_NORM='BN' has no effect.*feature 'p6'"):
        build_adapter("IdentityAdapter", _spec(8), _spec(8), norm="BN", key="p6")


@pytest.mark.parametrize("name", ["auto", "IdentityAdapter", "Conv1x1Adapter"])
def test_stride_mismatch_raises(name):
    with pytest.raises(
        ConfigError, match=r"feature 'p4' has stride 16 in the student and 32 in the teacher"
    ):
        build_adapter(name, _spec(8, stride=16), _spec(8, stride=32), key="p4")


def test_unknown_adapter_lists_registered():
    with pytest.raises(
        ConfigError,
        match=r"unknown adapter 'Linear' for feature 'p2'; registered adapters: "
        r"\[.*'Conv1x1Adapter'.*'IdentityAdapter'.*\]",
    ):
        build_adapter("Linear", _spec(8), _spec(8), key="p2")


def test_config_error_is_a_value_error():
    # Callers (and train_net) may catch ValueError; ConfigError must stay one.
    with pytest.raises(ValueError):
        build_adapter("nope", _spec(1), _spec(1))


def test_torch_init_adapter_is_pytorchs_default_conv_initialisation():
    """The mmrazor-style align module (nn.Conv2d(256, 256, 1), default init) of the DIST authors'
    mimic: the same random draws as nn.Conv2d's own initialisation, with a bias."""
    torch.manual_seed(0)
    adapter = build_adapter("TorchInitConv1x1Adapter", _spec(16), _spec(24), key="p2")
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(16, 24, 1)
    conv = adapter[0]
    torch.testing.assert_close(conv.weight, reference.weight)
    torch.testing.assert_close(conv.bias, reference.bias)
    assert conv.bias.abs().max() <= 1 / 16**0.5 and conv.bias.abs().max() > 0
    torch.manual_seed(0)
    ours = build_adapter("Conv1x1Adapter", _spec(16), _spec(24), key="p2")[0]
    assert not torch.allclose(ours.weight, conv.weight) and ours.bias.abs().max() == 0

"""tools/convert_torchvision_to_d2.py: torchvision ResNets load into Detectron2 and agree with it."""

import os

import pytest
import torch
import torchvision
from _tools import load_tool
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from d2dist.config import get_cfg
from d2dist.convert import TORCHVISION_CONFIG, convert_torchvision_resnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
    return load_tool("convert_torchvision_to_d2")


def _torchvision_resnet(depth: int) -> torch.nn.Module:
    torch.manual_seed(depth)
    net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    for m in net.modules():  # trained-looking BatchNorm statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def _stages(net, x):
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    out = {}
    for k, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
        x = layer(x)
        out[f"res{k + 2}"] = x
    return out


@pytest.mark.parametrize("depth", [18, 50])
def test_converted_resnet_loads_strictly_and_matches_torchvision(depth, tmp_path, capsys):
    net = _torchvision_resnet(depth)
    src, dst = str(tmp_path / "tv.pth"), str(tmp_path / "d2.pkl")
    torch.save(net.state_dict(), src)
    assert _tool().main([src, dst]) == 0
    printed = capsys.readouterr().out
    assert f"ResNet-{depth}" in printed and f"MODEL.RESNETS.DEPTH {depth}" in printed

    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-RCNN-FPN.yaml"))
    cfg.merge_from_list(TORCHVISION_CONFIG + ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", depth])
    if depth in (18, 34):
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    model = build_model(cfg).eval()
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(dst))
    bottom_up = [k for k in model.state_dict() if k.startswith("backbone.bottom_up.")]
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    assert not [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")]
    assert len(bottom_up) == len(convert_torchvision_resnet(net.state_dict())[0])

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = _stages(net, x)
        got = model.backbone.bottom_up(x)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-4)


def test_other_checkpoints_are_refused_with_the_keys_named(tmp_path, capsys):
    src = str(tmp_path / "other.pth")
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), src)
    assert _tool().main([src, str(tmp_path / "out.pkl")]) == 2
    assert "not a torchvision ResNet state dict: unknown keys ['classifier.0.bias'" in (
        capsys.readouterr().err
    )
    truncated = _torchvision_resnet(18).state_dict()
    truncated = {k: v for k, v in truncated.items() if not k.startswith("layer4.1.")}
    with pytest.raises(ValueError, match=r"basic blocks and \[2, 2, 2, 1\] blocks per stage"):
        convert_torchvision_resnet(truncated)
    net = _torchvision_resnet(18)
    torch.save(net.state_dict(), src)
    assert _tool().main([src, str(tmp_path / "out.pth")]) == 2
    assert "use a .pkl name" in capsys.readouterr().err


def test_ddp_and_wrapped_checkpoints_are_unwrapped():
    state = _torchvision_resnet(18).state_dict()
    plain, depth = convert_torchvision_resnet(state)
    wrapped, _ = convert_torchvision_resnet(
        {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    )
    assert depth == 18 and plain.keys() == wrapped.keys()
    assert "res5.1.conv2.norm.running_var" in plain and "res3.0.shortcut.norm.weight" in plain
    assert "stem.conv1.norm.bias" in plain and not any("fc" in k for k in plain)

"""tools/convert_torchvision_to_d2.py: torchvision ResNets load into Detectron2 and agree with it."""

import os

import pytest
import torch
import torchvision
from _tools import load_tool
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from d2dist.config import get_cfg
from d2dist.convert import TORCHVISION_CONFIG, convert_torchvision_resnet, save_d2_checkpoint

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


def _deeplab_basic_cfg(**resnets):
    cfg = get_cfg()
    cfg.merge_from_file(
        os.path.join(REPO, "configs", "Cityscapes", "deeplab_v3_R18_OS16_poly_90k.yaml")
    )
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.SEM_SEG_HEAD.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    for key, value in resnets.items():
        cfg.MODEL.RESNETS[key] = value
    return cfg


def _assert_loads_and_matches(cfg, weights: str, x, expected: dict):
    """The converted ``weights`` load into the backbone of ``cfg``'s model with nothing unexpected,
    misshapen or missing, and it gives the source network's stage outputs ``expected`` on ``x``."""
    model = build_model(cfg).eval()
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(weights))
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    assert not [k for k in incompatible.missing_keys if k.startswith("backbone.")]
    with torch.no_grad():
        got = model.backbone(x)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-4)


def test_dilated_resnet18_for_deeplab_loads_torchvision_weights_and_matches_it(tmp_path):
    net = _torchvision_resnet(18)
    dst = str(tmp_path / "d2.pkl")
    save_d2_checkpoint(convert_torchvision_resnet(net.state_dict())[0], dst)
    # without dilation it is exactly torchvision's ResNet-18
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        expected = _stages(net, x)
    _assert_loads_and_matches(_deeplab_basic_cfg(RES5_DILATION=1, RES5_MULTI_GRID=[1, 1]), dst,
                              x, expected)  # fmt: skip

    # output stride 16 (the recipe) and 8: the dilated stages keep their input's resolution
    for dilations, stride in (((1, 2), 16), ((2, 4), 8)):
        cfg = _deeplab_basic_cfg(RES4_DILATION=dilations[0], RES5_DILATION=dilations[1])
        backbone = build_model(cfg).backbone
        assert backbone.output_shape()["res5"].stride == stride
        with torch.no_grad():
            assert backbone(x)["res5"].shape[-2:] == (64 // stride, 128 // stride)
        assert backbone.res5[1].conv1.dilation == (dilations[1] * 2,) * 2  # multi-grid [1, 2]


@pytest.mark.parametrize(
    "resnets, match",
    [
        (dict(DEPTH=50), r"builds ResNet-18/34; MODEL.RESNETS.DEPTH is 50"),
        (dict(RES5_MULTI_GRID=[1, 2, 4]), r"ResNet-18 has 2 res5 blocks, so it needs 2 factors"),
        (dict(RES4_DILATION=2, RES5_DILATION=2), r"RES4_DILATION 2 .* needs RES5_DILATION 4"),
        (dict(STEM_TYPE="deep"), r"STEM_TYPE='deep'; expected one of \['basic', 'deeplab'\]"),
    ],
)
def test_dilated_basic_backbone_errors(resnets, match):
    from d2dist.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        build_model(_deeplab_basic_cfg(**resnets))


class _DeepStemResNet18(torch.nn.Module):
    """A deep-stem ResNet-18 in the resnetv1b layout of the DIST / CIRKD segmentation code
    (hunto/DIST_KD segmentation/models/base_models/resnetv1b.py: conv1..3 / bn1..3 3x3 stem to
    128 channels, then torchvision's blocks, layer1 with a 128 -> 64 shortcut), written here from
    that description with torchvision's blocks."""

    def __init__(self):
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        tv = _torchvision_resnet(18)
        bn = torch.nn.BatchNorm2d
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 64, 3, 2, 1, bias=False), bn(64)
        self.conv2, self.bn2 = torch.nn.Conv2d(64, 64, 3, 1, 1, bias=False), bn(64)
        self.conv3, self.bn3 = torch.nn.Conv2d(64, 128, 3, 1, 1, bias=False), bn(128)
        shortcut = torch.nn.Sequential(torch.nn.Conv2d(128, 64, 1, bias=False), bn(64))
        self.layer1 = torch.nn.Sequential(BasicBlock(128, 64, downsample=shortcut), tv.layer1[1])
        self.layer2, self.layer3, self.layer4 = tv.layer2, tv.layer3, tv.layer4
        for m in self.modules():
            if isinstance(m, bn):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        self.eval()

    def stages(self, x):
        relu = torch.nn.functional.relu
        x = relu(self.bn1(self.conv1(x)))
        x = relu(self.bn2(self.conv2(x)))
        x = relu(self.bn3(self.conv3(x)))
        x = torch.nn.functional.max_pool2d(x, 3, 2, 1)
        out = {}
        for k, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            out[f"res{k + 2}"] = x
        return out


def test_deep_stem_resnet18_converts_to_the_deeplab_stem_and_matches_it(tmp_path, capsys):
    net = _DeepStemResNet18()
    src, dst = str(tmp_path / "resnet18-imagenet.pth"), str(tmp_path / "d2.pkl")
    torch.save(net.state_dict(), src)
    assert _tool().main([src, dst]) == 0
    out = capsys.readouterr().out
    assert "ResNet-18 with a deep stem" in out and "MODEL.RESNETS.STEM_TYPE deeplab" in out
    assert "MODEL.RESNETS.STEM_OUT_CHANNELS 128" in out and "INPUT.FORMAT BGR" in out
    cfg = _deeplab_basic_cfg(RES5_DILATION=1, RES5_MULTI_GRID=[1, 1], STEM_TYPE="deeplab",
                             STEM_OUT_CHANNELS=128)  # fmt: skip
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        expected = net.stages(x)
    _assert_loads_and_matches(cfg, dst, x, expected)

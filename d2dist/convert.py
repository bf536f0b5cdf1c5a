"""Weight conversion: torchvision ResNets to Detectron2 backbone checkpoints.

Detectron2's model zoo has no ResNet-18/34, and torchvision's ImageNet ResNets are the usual
source of all four depths. :func:`convert_torchvision_resnet` renames a torchvision
``resnet{18,34,50,101}`` state dict to Detectron2's ``ResNet`` names (``stem.conv1``,
``res2.0.conv1.norm``, ``res3.0.shortcut``...); saved by :func:`save_d2_checkpoint` with
Detectron2's ``matching_heuristics`` flag, Detectron2's checkpointer loads it into any model whose
backbone contains that ResNet (``backbone.bottom_up.`` for FPN, ``backbone.`` for C4 and DeepLab).

A torchvision ResNet expects RGB input normalised by the ImageNet mean and std, and puts the
stride of a bottleneck in its 3x3 convolution; configs using the converted weights need::

    INPUT.FORMAT "RGB"
    MODEL.PIXEL_MEAN [123.675, 116.280, 103.530]
    MODEL.PIXEL_STD [58.395, 57.120, 57.375]
    MODEL.RESNETS.STRIDE_IN_1X1 False     # ResNet-50/101
    MODEL.RESNETS.RES2_OUT_CHANNELS 64    # ResNet-18/34
"""

import pickle
import re
from typing import Dict, Tuple

import torch

__all__ = [
    "DEEP_STEM_CONFIG",
    "TORCHVISION_CONFIG",
    "convert_torchvision_resnet",
    "resnet_stem",
    "save_d2_checkpoint",
]

# blocks per stage (layer1..layer4) -> depth, for basic blocks and bottlenecks
_DEPTHS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}
TORCHVISION_CONFIG = [
    "INPUT.FORMAT", "RGB",
    "MODEL.PIXEL_MEAN", "[123.675, 116.280, 103.530]",
    "MODEL.PIXEL_STD", "[58.395, 57.120, 57.375]",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False",
]  # fmt: skip
"""The config overrides every model using converted torchvision weights needs."""

DEEP_STEM_CONFIG = [
    "MODEL.RESNETS.STEM_TYPE", "deeplab",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "128",
]  # fmt: skip
"""The config overrides a model using converted deep-stem weights needs (besides its input
statistics: the DIST / CIRKD authors feed theirs BGR images minus [104.00698793, 116.66876762,
122.67891434], std 1)."""

_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def _rename_in_block(rest: str) -> str:
    m = re.fullmatch(r"conv(\d)\.weight", rest)
    if m:
        return rest
    m = re.fullmatch(r"bn(\d)\.(\w+)", rest)
    if m:
        return f"conv{m.group(1)}.norm.{m.group(2)}"
    m = re.fullmatch(r"downsample\.0\.weight", rest)
    if m:
        return "shortcut.weight"
    m = re.fullmatch(r"downsample\.1\.(\w+)", rest)
    if m:
        return f"shortcut.norm.{m.group(1)}"
    raise KeyError(rest)


def resnet_stem(state_dict: Dict[str, torch.Tensor]) -> str:
    """``"deeplab"`` for a deep-stem ResNet (three 3x3 convs ``conv1..3`` / ``bn1..3``: the
    ``resnetv1b`` / CSAIL layout of the segmentation distillation code bases, e.g. DIST's
    ``resnet18-imagenet.pth``), ``"basic"`` for torchvision's 7x7 stem."""
    keys = _unwrap(state_dict)
    return "deeplab" if "conv2.weight" in keys and "conv3.weight" in keys else "basic"


def _unwrap(state_dict) -> Dict[str, torch.Tensor]:
    """The network's own state dict: out of a training checkpoint, names without DDP's
    ``module.``."""
    if isinstance(state_dict.get("state_dict"), dict):  # a training checkpoint around it
        state_dict = state_dict["state_dict"]
    if isinstance(state_dict.get("model"), dict):
        state_dict = state_dict["model"]
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def convert_torchvision_resnet(state_dict: Dict[str, torch.Tensor]) -> Tuple[dict, int]:
    """Rename a torchvision ResNet state dict to Detectron2's ResNet names.

    A deep-stem ResNet (:func:`resnet_stem`; its stem's ``conv1..3`` / ``bn1..3``) is renamed to
    Detectron2's DeepLab stem (``stem.conv1..3``, built with ``DEEP_STEM_CONFIG``); its blocks have
    torchvision's names.

    Drops the classifier (``fc.*``) and BatchNorm's ``num_batches_tracked``. Returns the new
    state dict and the depth (18, 34, 50, 101 or 152) read from the block structure. Raises
    ``ValueError`` naming the keys it does not know (e.g. a checkpoint of another model).
    """
    state_dict = _unwrap(state_dict)
    deep = resnet_stem(state_dict) == "deeplab"
    stem_convs = (1, 2, 3) if deep else (1,)
    out, unknown = {}, []
    blocks = {}
    kinds = set()
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        m = re.fullmatch(r"conv(\d)\.weight", key)
        if m and int(m.group(1)) in stem_convs:
            out[f"stem.{key}"] = value
            continue
        m = re.fullmatch(r"bn(\d)\.(\w+)", key)
        if m and int(m.group(1)) in stem_convs and m.group(2) in _BN_PARAMS:
            out[f"stem.conv{m.group(1)}.norm.{m.group(2)}"] = value
            continue
        m = _BLOCK.match(key)
        if m:
            stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            try:
                out[f"res{stage + 1}.{block}.{_rename_in_block(rest)}"] = value
            except KeyError:
                unknown.append(key)
                continue
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
            if rest.startswith("conv3"):
                kinds.add("bottleneck")
            continue
        unknown.append(key)
    if unknown:
        raise ValueError(
            f"not a torchvision ResNet state dict: unknown keys {sorted(unknown)[:10]}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            + ". Expected the keys of torchvision.models.resnet{18,34,50,101,152}().state_dict() "
            "(or of a deep-stem ResNet: conv1..3 / bn1..3, then torchvision's layer names)."
        )
    kind = "bottleneck" if kinds else "basic"
    layout = tuple(blocks.get(s, 0) for s in (1, 2, 3, 4))
    depth = _DEPTHS.get((kind, layout))
    if depth is None:
        raise ValueError(
            f"a ResNet with {kind} blocks and {list(layout)} blocks per stage is none of the "
            "depths Detectron2 builds (18, 34: basic [2,2,2,2] / [3,4,6,3]; 50, 101, 152: "
            "bottleneck [3,4,6,3] / [3,4,23,3] / [3,8,36,3])."
        )
    return out, depth


def save_d2_checkpoint(state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Save renamed weights as a Detectron2 ``.pkl`` that its checkpointer matches by suffix."""
    if not path.endswith(".pkl"):
        raise ValueError(
            f"output {path!r}: use a .pkl name; Detectron2's checkpointer applies its name "
            "matching (needed to find backbone.bottom_up.* and friends) to .pkl files."
        )
    model = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "d2dist", "matching_heuristics": True}, f)

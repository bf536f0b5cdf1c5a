"""Convert a torchvision ResNet-18/34/50/101/152 checkpoint into a Detectron2 backbone's.

    d2dist-convert-torchvision resnet18-f37072fd.pth R-18.pkl

(``python tools/convert_torchvision_to_d2.py ...`` in a checkout.) The input is a local ``.pth``
holding a torchvision ResNet state dict (e.g. the ImageNet weights torchvision downloads to
``~/.cache/torch/hub/checkpoints/``), or a deep-stem ResNet's (three 3x3 stem convs, e.g. the
``resnet18-imagenet.pth`` of the DIST / CIRKD segmentation code). The output ``.pkl`` is for
``MODEL.WEIGHTS``; Detectron2's checkpointer matches its names to the backbone of any model. The
config must then describe a torchvision ResNet (printed at the end; see ``d2dist/convert.py``).
"""

import argparse
import os
import pickle
import sys

import torch

from ..convert import (
    DEEP_STEM_CONFIG,
    TORCHVISION_CONFIG,
    convert_torchvision_resnet,
    resnet_stem,
    save_d2_checkpoint,
)
from ._warnings import quiet_third_party_warnings

__all__ = ["console_main", "main"]


def main(argv=None, prog: str = "convert_torchvision_to_d2.py") -> int:
    """Convert as the command line ``argv`` asks; returns the exit status (errors: 2, printed
    after ``prog``)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("input", help="torchvision ResNet checkpoint (.pth)")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pkl)")
    args = parser.parse_args(argv)
    try:
        state = torch.load(args.input, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"it holds a {type(state).__name__}, not a state dict")
        weights, depth = convert_torchvision_resnet(state)
        save_d2_checkpoint(weights, args.output)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        print(f"{prog}: error: {args.input}: {e}", file=sys.stderr)
        return 2
    res2 = " MODEL.RESNETS.RES2_OUT_CHANNELS 64" if depth in (18, 34) else ""
    if resnet_stem(state) == "deeplab":
        print(f"wrote {args.output}: ResNet-{depth} with a deep stem, {len(weights)} tensors.")
        print(
            f"Use it with: MODEL.WEIGHTS {args.output} MODEL.RESNETS.DEPTH {depth} "
            f"{' '.join(DEEP_STEM_CONFIG)}{res2} and the input statistics its training used (the "
            "DIST / CIRKD authors': INPUT.FORMAT BGR MODEL.PIXEL_MEAN "
            '"[104.00698793, 116.66876762, 122.67891434]" MODEL.PIXEL_STD "[1.0, 1.0, 1.0]")'
        )
        return 0
    print(f"wrote {args.output}: ResNet-{depth}, {len(weights)} tensors.")
    opts = " ".join(TORCHVISION_CONFIG) + res2
    print(f"Use it with: MODEL.WEIGHTS {args.output} MODEL.RESNETS.DEPTH {depth} {opts}")
    return 0


def console_main(argv=None) -> int:
    """``d2dist-convert-torchvision``: parses ``argv`` (default ``sys.argv[1:]``), returns the
    exit status."""
    quiet_third_party_warnings()
    return main(argv, prog=os.path.basename(sys.argv[0]))


if __name__ == "__main__":
    sys.exit(console_main())

#!/usr/bin/env python
"""Convert a torchvision ResNet checkpoint into a Detectron2 backbone checkpoint.

    python tools/convert_torchvision_to_d2.py resnet18-f37072fd.pth R-18.pkl

A thin wrapper of d2dist.cli.convert_torchvision_to_d2;
an installed d2dist runs it as ``d2dist-convert-torchvision``.
"""

import sys

from d2dist.cli.convert_torchvision_to_d2 import console_main, main

__all__ = ["console_main", "main"]  # the tests call main

if __name__ == "__main__":
    sys.exit(console_main())

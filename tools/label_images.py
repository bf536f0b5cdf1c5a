#!/usr/bin/env python
"""Label a folder of unlabeled images with a trained teacher: a COCO-format annotation file.

    python tools/label_images.py --config-file TEACHER.yaml --weights TEACHER.pth \\
        --image-folder DIR --output pseudo.json [--score-threshold 0.5] [--masks]

A thin wrapper of d2dist.cli.label_images;
an installed d2dist runs it as ``d2dist-label``.
"""

import sys

from d2dist.cli.label_images import console_main, main

__all__ = ["console_main", "main"]  # the tests call main

if __name__ == "__main__":
    sys.exit(console_main())

#!/usr/bin/env python
"""Predictions of several models side by side on a few images, titled with their box AP (PNG).

    python tools/visualize.py --run-dir RUN_DIR [--run-dir RUN_DIR ...] [--label LABEL ...]
                              [--dataset d2dist_shapes_val] [--num-images 3]
                              [--output-dir output/predictions]

A thin wrapper of d2dist.cli.visualize (installed: ``d2dist-visualize``).
"""

import sys

from d2dist.cli.visualize import main

if __name__ == "__main__":
    sys.exit(main())

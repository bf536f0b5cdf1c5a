#!/usr/bin/env python
"""Print how large each distillation term of a recipe is next to the student"s own losses.

    python tools/loss_scale.py --config-file CONFIG.yaml [--iters 4] [--random-weights]
                               [--tiny-datasets] [--device cpu|cuda] [--json] [KEY VALUE ...]

A thin wrapper of d2dist.cli.loss_scale;
an installed d2dist runs it as ``d2dist-loss-scale``.
"""

import sys

from d2dist.cli.loss_scale import console_main, main

__all__ = ["console_main", "main"]  # the tests call main

if __name__ == "__main__":
    sys.exit(console_main())

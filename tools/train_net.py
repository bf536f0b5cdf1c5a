#!/usr/bin/env python
"""Train or evaluate a Detectron2 model, plain or distilled, with d2dist.

    python tools/train_net.py --config-file CONFIG.yaml [--num-gpus N] [--resume] [--eval-only]
                              [--eval-teacher] [KEY VALUE ...]

A thin wrapper of d2dist.cli.train_net;
an installed d2dist runs it as ``d2dist-train``.
"""

import sys

from d2dist.cli.train_net import console_main, main

__all__ = ["console_main", "main"]  # the tests call main

if __name__ == "__main__":
    sys.exit(console_main())

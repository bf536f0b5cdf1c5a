#!/usr/bin/env python
"""Train or evaluate a model from a LazyConfig (.py) config, plain or distilled, with d2dist.

    python tools/lazyconfig_train_net.py --config-file CONFIG.py [--num-gpus N] [--resume]
                                         [--eval-only] [key=value ...]

The same flags and config layout as Detectron2's tools/lazyconfig_train_net.py; what d2dist adds
(teacher loading, student-only initialisation, DDP on CPU processes, ...) is in
d2dist/engine/lazy.py.
"""

import sys

from d2dist.engine import launch_cli
from d2dist.engine.lazy import lazy_argument_parser, lazy_main

if __name__ == "__main__":
    sys.exit(launch_cli(lazy_main, lazy_argument_parser().parse_args()))

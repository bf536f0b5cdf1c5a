#!/usr/bin/env python
"""Train or evaluate a model from a LazyConfig (.py) config, plain or distilled, with d2dist.

    python tools/lazyconfig_train_net.py --config-file CONFIG.py [--num-gpus N] [--resume]
                                         [--eval-only] [key=value ...]

A thin wrapper of d2dist.cli.lazyconfig_train_net;
an installed d2dist runs it as ``d2dist-train-lazy``.
"""

import sys

from d2dist.cli.lazyconfig_train_net import console_main, lazy_main, main

__all__ = ["console_main", "lazy_main", "main"]  # the tests call lazy_main and main

if __name__ == "__main__":
    sys.exit(console_main())

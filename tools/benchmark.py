#!/usr/bin/env python
"""Measure what distillation costs per training step, part by part, for a Distiller config.

    python tools/benchmark.py --config-file CONFIG.yaml [--iters 20] [--warmup 5]
                              [--device cpu|cuda] [--json] [KEY VALUE ...]

A thin wrapper of d2dist.cli.benchmark;
an installed d2dist runs it as ``d2dist-benchmark``.
"""

import sys

from d2dist.cli.benchmark import console_main, main

__all__ = ["console_main", "main"]  # the tests call main

if __name__ == "__main__":
    sys.exit(console_main())

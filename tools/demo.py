#!/usr/bin/env python
"""d2dist's main job on the built-in dataset, the study's short version: ``make demo``.

    python tools/demo.py [--output-dir output/study] [--fresh] [--jobs 2] [--device cpu|cuda]
                         [KEY VALUE ...]

One seed of the Faster R-CNN task: the teacher, the student baseline, PKD and MGD (the methods the
study finds strongest) and DIST on RoI logits; the table, charts, pictures of predictions and next
steps go to output/demo/demo.md. A thin wrapper of d2dist.cli.demo (installed: ``d2dist-demo``).
"""

import sys

from d2dist.cli.demo import main

if __name__ == "__main__":
    sys.exit(main())

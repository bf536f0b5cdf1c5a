#!/usr/bin/env python
"""The accuracy study on the built-in dataset: per task, the teacher, the student baseline and
every method over seeds, reported in docs/results.md: ``make study``.

    python tools/study.py [--tasks faster_rcnn retinanet] [--methods baseline kd ...]
                          [--seeds 1 2 3] [--quick] [--jobs 2] [--output-dir output/study]
                          [--report docs] [--fresh] [--report-only] [KEY VALUE ...]

A thin wrapper of d2dist.cli.study (installed: ``d2dist-study``).
"""

import sys

from d2dist.cli.study import main

if __name__ == "__main__":
    sys.exit(main())

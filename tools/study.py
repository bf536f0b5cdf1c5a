#!/usr/bin/env python
"""The accuracy study on the built-in dataset (d2dist.study): per task, the teacher, the student
baseline and every method over seeds, reported in docs/results.md.

    python tools/study.py [--tasks faster_rcnn retinanet] [--methods baseline kd ...]
                          [--seeds 1 2 3] [--quick] [--jobs 2] [--output-dir output/study]
                          [--report docs] [--fresh] [--report-only] [KEY VALUE ...]
"""

import sys

from d2dist.study import main, study_main

if __name__ == "__main__":
    sys.exit(main(study_main))

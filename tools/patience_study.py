#!/usr/bin/env python
"""The study of patience and consistency on the built-in dataset (docs/results.md): ``make
patience``. Arms: labeled only, offline teacher labels, online teacher labels, online + mixup;
schedules 1x, 2x, 4x; seeds 1 2 3.

    python tools/patience_study.py [--arms labeled offline online mixup] [--schedules 1x 2x 4x]
                                   [--seeds 1 2 3] [--jobs 2] [--output-dir output/study]
                                   [--report docs] [--fresh] [--report-only] [KEY VALUE ...]

A thin wrapper of d2dist.study.patience.
"""

import sys

from d2dist.study.patience import main

if __name__ == "__main__":
    sys.exit(main())

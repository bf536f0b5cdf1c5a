#!/usr/bin/env python
"""Export the student of a Distiller run as a plain Detectron2 model.

    python tools/export_student.py --run-dir OUTPUT_DIR [--output OUTPUT_DIR/student.pth]

A thin wrapper of d2dist.cli.export_student;
an installed d2dist runs it as ``d2dist-export``.
"""

import sys

from d2dist.cli.export_student import console_main, main

__all__ = ["console_main", "main"]  # the tests call main

if __name__ == "__main__":
    sys.exit(console_main())

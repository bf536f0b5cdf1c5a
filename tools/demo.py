#!/usr/bin/env python
"""d2dist's main job on the built-in dataset (d2dist.study.demo_main): the study's short version.

    python tools/demo.py [--output-dir output/study] [--fresh] [--jobs 2] [--device cpu|cuda]
                         [KEY VALUE ...]

One seed of the Faster R-CNN task: the teacher, the student baseline, ReviewKD, DIST on RoI logits
and the DIST+ reconstruction, each an ordinary tools/train_net.py run with a progress bar,
evaluated with Detectron2's COCOEvaluator; the table is printed and written with its charts to
output/demo/demo.md. Runs share --output-dir with the study, so a later `make study` reuses them
(and `make demo` reuses finished runs). Every option of tools/study.py works here too.
"""

import sys

from d2dist.study import demo_main, main

if __name__ == "__main__":
    sys.exit(main(demo_main))

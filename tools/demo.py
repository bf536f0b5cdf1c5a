#!/usr/bin/env python
"""d2dist's main job on the built-in dataset: a teacher, the student and the main methods.

    python tools/demo.py [--output-dir output/study] [--fresh] [--jobs 2] [--device cpu|cuda]
                         [KEY VALUE ...]

The short version of ``tools/study.py``: one seed; the teacher, the student baseline, ReviewKD,
DIST on RoI logits and the DIST+ reconstruction. Each run is an ordinary ``tools/train_net.py``
run with a progress bar, evaluated with Detectron2's COCOEvaluator; the final table is printed
and written with its charts to ``output/demo/demo.md``. Runs share ``--output-dir`` with the
study, so a later ``make study`` reuses them (and ``make demo`` reuses finished runs). Every
option of ``tools/study.py`` works here too; only the defaults differ.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import study  # noqa: E402  (the study's runner, in this directory)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    return study.main(
        argv,
        defaults={
            "methods": study.DEMO_METHODS,
            "seeds": [1],
            "report": os.path.join(study.REPO, "output", "demo"),
            "prefix": "demo",
            "invocation": "python tools/demo.py " + " ".join(argv),
        },
    )


if __name__ == "__main__":
    main()

"""``d2dist-study`` (``make study``, ``python tools/study.py`` in a checkout): the seeded accuracy
study on the built-in dataset (:func:`d2dist.study.study_main`; ``--help`` for its options).

    d2dist-study [--tasks faster_rcnn retinanet] [--methods baseline kd ...] [--seeds 1 2 3]
                 [--quick] [--jobs 2] [--output-dir output/study] [--report docs] [--fresh]
                 [--report-only] [KEY VALUE ...]
"""

import sys
from typing import Optional, Sequence

from ..study import main as run
from ..study import study_main
from ._warnings import quiet_third_party_warnings

__all__ = ["console_main", "main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script: parses ``argv`` (default ``sys.argv[1:]``), returns the exit status."""
    quiet_third_party_warnings()
    return run(study_main, argv)


console_main = main  # the name the other tools' console scripts have

if __name__ == "__main__":
    sys.exit(main())

"""``d2dist-demo`` (``make demo``, ``python tools/demo.py`` in a checkout): the study's short
version on the built-in dataset, with pictures of predictions and next steps
(:func:`d2dist.study.demo_main`; ``--help`` for its options).

    d2dist-demo [--output-dir output/study] [--fresh] [--jobs 2] [--device cpu|cuda] [KEY VALUE ...]
"""

import sys
from typing import Optional, Sequence

from ..study import demo_main
from ..study import main as run
from ._warnings import quiet_third_party_warnings

__all__ = ["console_main", "main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script: parses ``argv`` (default ``sys.argv[1:]``), returns the exit status."""
    quiet_third_party_warnings()
    return run(demo_main, argv)


console_main = main  # the name the other tools' console scripts have

if __name__ == "__main__":
    sys.exit(main())

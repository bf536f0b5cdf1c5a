"""``d2dist-visualize`` (``python tools/visualize.py`` in a checkout): several models'
predictions side by side on a few images of a dataset, each panel titled with its model and its
box AP, one PNG per image (:func:`d2dist.study.visualize_main`; ``--help`` for its options).

    d2dist-visualize --run-dir RUN_DIR [--run-dir RUN_DIR ...] [--model CONFIG WEIGHTS ...]
                     [--label LABEL ...] [--dataset NAME] [--num-images 3]
                     [--output-dir output/predictions] [--device cpu|cuda]
"""

import sys
from typing import Optional, Sequence

from ..study import main as run
from ..study import visualize_main
from ._warnings import quiet_third_party_warnings

__all__ = ["console_main", "main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script: parses ``argv`` (default ``sys.argv[1:]``), returns the exit status."""
    quiet_third_party_warnings()
    return run(visualize_main, argv)


console_main = main  # the name the other tools' console scripts have

if __name__ == "__main__":
    sys.exit(main())

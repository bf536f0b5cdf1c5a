"""Train or evaluate from a LazyConfig (.py), plain or distilled: ``d2dist-train-lazy``.

    d2dist-train-lazy --config-file CONFIG.py [--num-gpus N] [--resume] [--eval-only]
                      [key=value ...]

(``python tools/lazyconfig_train_net.py ...`` in a checkout.) The same flags and config layout as
Detectron2's tools/lazyconfig_train_net.py; what d2dist adds (teacher loading, student-only
initialisation, DDP on CPU processes, ...) is in d2dist/engine/lazy.py.
"""

import functools
import sys

from ..engine.lazy import lazy_argument_parser, lazy_main
from ..engine.run import launch_cli
from ._warnings import quiet_third_party_warnings, quietly

__all__ = ["console_main", "lazy_main", "main"]

main = lazy_main  # train or evaluate the run of parsed arguments, in this process


def console_main(argv=None) -> int:
    """``d2dist-train-lazy``: parses ``argv`` (default ``sys.argv[1:]``), returns the exit
    status."""
    quiet_third_party_warnings()
    return launch_cli(
        functools.partial(quietly, lazy_main), lazy_argument_parser().parse_args(argv)
    )


if __name__ == "__main__":
    sys.exit(console_main())

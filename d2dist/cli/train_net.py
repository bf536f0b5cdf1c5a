"""Train or evaluate a Detectron2 model, plain or distilled, with d2dist: ``d2dist-train``.

    d2dist-train --config-file CONFIG.yaml [--num-gpus N] [--resume] [--eval-only]
                 [--eval-teacher] [KEY VALUE ...]

(``python tools/train_net.py ...`` in a checkout.) Plain Detectron2 configs (teachers, student
baselines) and d2dist's distillation configs run through the same trainer, schedules and
evaluators; ``--config-file d2dist://configs/...`` names a shipped config.
"""

import functools
import sys

from ..engine import argument_parser, launch_cli, setup, train_or_eval
from ._warnings import quiet_third_party_warnings, quietly

__all__ = ["console_main", "main"]


def main(args):
    """Train or evaluate the run of ``args`` (parsed by ``argument_parser()``), in this process."""
    return train_or_eval(setup(args), args)


def console_main(argv=None) -> int:
    """``d2dist-train``: parses ``argv`` (default ``sys.argv[1:]``), returns the exit status."""
    quiet_third_party_warnings()
    return launch_cli(functools.partial(quietly, main), argument_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(console_main())

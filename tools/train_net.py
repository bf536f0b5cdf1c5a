#!/usr/bin/env python
"""Train or evaluate a Detectron2 model, plain or distilled, with d2dist.

    python tools/train_net.py --config-file CONFIG.yaml [--num-gpus N] [--resume] [--eval-only]
                              [--eval-teacher] [KEY VALUE ...]

Plain Detectron2 configs (teachers, student baselines) and d2dist's distillation configs run
through the same trainer, schedules and evaluators.
"""

import sys

from d2dist.engine import argument_parser, launch_cli, setup, train_or_eval


def main(args):
    return train_or_eval(setup(args), args)


if __name__ == "__main__":
    sys.exit(launch_cli(main, argument_parser().parse_args()))

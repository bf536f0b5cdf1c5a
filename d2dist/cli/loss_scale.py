"""Print how large each distillation term of a recipe is next to the student's own losses.

    d2dist-loss-scale --config-file CONFIG.yaml [--iters 4] [--random-weights]
                      [--tiny-datasets] [--device cpu|cuda] [--json] [KEY VALUE ...]
    d2dist-loss-scale --config-file CONFIG.py ... [key=value ...]     (a LazyConfig)

(``python tools/loss_scale.py ...`` in a checkout.) Runs the recipe's first iterations as the
trainer does and prints, per term, its weight, its unweighted and weighted value and the ratio of
the weighted value to the sum of the student's losses (means over the iterations), then the
unweighted per-level values. ``--tiny-datasets`` writes tiny COCO and Cityscapes datasets in their
real formats (d2dist/data/real_formats.py) to a temporary folder and reads the recipe's own
dataset names from there: the full-size recipe runs with no dataset at hand. What is measured:
``d2dist/engine/loss_scale.py``.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile

from tabulate import tabulate
from tqdm import tqdm

from ..data.real_formats import write_tiny_datasets
from ..engine.benchmark import measurement_parser
from ..engine.defaults import load_config
from ..engine.lazy import load_lazy_config
from ..engine.loss_scale import measure_loss_scale
from ..engine.subnormals import flush_subnormals
from ..errors import ConfigError
from ._warnings import quiet_third_party_warnings

__all__ = ["console_main", "main"]

# The folder of --tiny-datasets that console_main prepared for the process it starts.
TINY_ROOT = "D2DIST_TINY_DATASETS_ROOT"


def _table(summary: dict) -> str:
    rows = [
        [k, f"{t['weight']:.3g}", f"{t['unweighted']:.4g}", f"{t['weighted']:.4g}",
         f"{t['ratio_to_student']:.3f}"]
        for k, t in summary["terms"].items()
    ]  # fmt: skip
    text = tabulate(
        rows, headers=["term", "weight", "unweighted", "weighted", "weighted / student"],
        tablefmt="github",
    )  # fmt: skip
    student = ", ".join(f"{k} {v:.4g}" for k, v in summary["student"].items())
    parts = tabulate(
        [[k, f"{v:.4g}"] for k, v in summary["parts"].items()],
        headers=["unweighted part", "value"],
        tablefmt="github",
    )
    return (
        f"{text}\n\nstudent losses: total {summary['student_total']:.4g} ({student})\n"
        f"loss-weight schedule factor (mean): {summary['weight_factor']:.3g}\n\n{parts}"
    )


def _wants_tiny_datasets(argv) -> bool:
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--tiny-datasets", action="store_true")
    return early.parse_known_args(argv)[0].tiny_datasets


def main(argv=None, prog: str = "loss_scale.py") -> int:
    """Measure as the command line ``argv`` asks, in this process; returns the exit status
    (errors: 2, printed after ``prog``).

    ``--tiny-datasets`` needs Detectron2 to have registered its built-in datasets under the
    folder the tiny ones are written to, i.e. imported after ``$DETECTRON2_DATASETS`` named it:
    :func:`console_main` starts such a process; here it is an error otherwise.
    """
    if not _wants_tiny_datasets(argv):
        return _main(argv, None, prog)
    if os.environ.get(TINY_ROOT):
        return _main(argv, os.environ[TINY_ROOT], prog)
    with tempfile.TemporaryDirectory(prefix="d2dist-loss-scale-") as root:
        return _main(argv, root, prog)


def _main(argv, tiny_root, prog) -> int:
    parser = measurement_parser(
        __doc__,
        iters=4,
        iters_help="iterations to run",
        random_help="random teacher and student weights (norm statistics calibrated on the "
        "first batch) instead of TEACHER.WEIGHTS and MODEL.WEIGHTS: for recipes whose "
        "checkpoints are absent; the sizes then reflect the architectures and the input, not "
        "trained features",
    )
    parser.prog = prog
    parser.add_argument(
        "--tiny-datasets",
        action="store_true",
        help="write tiny COCO and Cityscapes datasets in their real formats to a temporary "
        "folder and read the recipe's datasets from there ($DETECTRON2_DATASETS)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides (a LazyConfig: key=value)"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if tiny_root is not None:
        try:
            write_tiny_datasets(tiny_root)
        except ConfigError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
    return _run(args, prog)


def _run(args, prog) -> int:
    lazy = args.config_file.endswith(".py")
    device = [f"train.device={args.device}"] if lazy else ["MODEL.DEVICE", args.device]
    opts = list(args.opts) + (device if args.device else [])
    try:
        if lazy:
            cfg = load_lazy_config(args.config_file, opts)
            flush_subnormals(cfg.train.device)
        else:
            cfg = load_config(args.config_file, opts)
            cfg.freeze()
            flush_subnormals(cfg.MODEL.DEVICE)
        with tqdm(total=args.iters, desc="loss scale", disable=args.json) as bar:
            result = measure_loss_scale(
                cfg,
                iters=args.iters,
                random_weights=args.random_weights,
                progress=lambda _: bar.update(),
            )
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"\n{args.config_file} {' '.join(args.opts)}")
    weights = "random, norm statistics calibrated" if args.random_weights else "the recipe's"
    print(f"{args.iters} iterations; weights: {weights}\n")
    print(_table(summary))
    bad = result.degenerate()
    if bad:
        print(f"\nzero or non-finite unweighted values: {', '.join(bad)}")
    return 0


def console_main(argv=None) -> int:
    """``d2dist-loss-scale``: parses ``argv`` (default ``sys.argv[1:]``), returns the exit
    status. With ``--tiny-datasets``, the measurement runs in a new Python process that imports
    Detectron2 with ``$DETECTRON2_DATASETS`` set to a temporary folder (Detectron2 registers its
    built-in datasets under that folder when it is first imported: in this process, already)."""
    quiet_third_party_warnings()
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = os.path.basename(sys.argv[0])
    if not _wants_tiny_datasets(argv) or os.environ.get(TINY_ROOT):
        return main(argv, prog=prog)
    with tempfile.TemporaryDirectory(prefix="d2dist-loss-scale-") as root:
        env = {**os.environ, "DETECTRON2_DATASETS": root, TINY_ROOT: root}
        command = [sys.executable, "-m", "d2dist.cli.loss_scale", *argv]
        return subprocess.run(command, env=env).returncode


if __name__ == "__main__":
    sys.exit(console_main())

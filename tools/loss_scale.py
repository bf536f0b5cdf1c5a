#!/usr/bin/env python
"""Print how large each distillation term of a recipe is next to the student's own losses.

    python tools/loss_scale.py --config-file CONFIG.yaml [--iters 4] [--random-weights]
                               [--tiny-datasets] [--device cpu|cuda] [--json] [KEY VALUE ...]
    python tools/loss_scale.py --config-file CONFIG.py ... [key=value ...]     (a LazyConfig)

Runs the recipe's first iterations as the trainer does and prints, per term, its weight, its
unweighted and weighted value and the ratio of the weighted value to the sum of the student's
losses (means over the iterations), then the unweighted per-level values. ``--tiny-datasets``
writes tiny COCO and Cityscapes datasets in their real formats (d2dist/data/real_formats.py) to a
temporary folder and reads the recipe's own dataset names from there: the full-size recipe runs
with no dataset at hand. What is measured: ``d2dist/engine/loss_scale.py``.
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import warnings


def _table(summary: dict) -> str:
    from tabulate import tabulate

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


def main(argv=None) -> int:
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--tiny-datasets", action="store_true")
    tiny = early.parse_known_args(argv)[0].tiny_datasets
    with tempfile.TemporaryDirectory(prefix="d2dist-loss-scale-") as root:
        if tiny:  # before d2dist and Detectron2 register their built-in datasets (on import)
            os.environ["DETECTRON2_DATASETS"] = root
        return _main(argv, root if tiny else None)


def _main(argv, tiny_root) -> int:
    from d2dist.engine.benchmark import measurement_parser

    parser = measurement_parser(
        __doc__,
        iters=4,
        iters_help="iterations to run",
        random_help="random teacher and student weights (norm statistics calibrated on the "
        "first batch) instead of TEACHER.WEIGHTS and MODEL.WEIGHTS: for recipes whose "
        "checkpoints are absent; the sizes then reflect the architectures and the input, not "
        "trained features",
    )
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

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if tiny_root is not None:
        from d2dist.data.real_formats import write_tiny_datasets
        from d2dist.errors import ConfigError

        try:
            write_tiny_datasets(tiny_root)
        except ConfigError as e:
            print(f"loss_scale.py: error: {e}", file=sys.stderr)
            return 2
    return _run(args)


def _run(args) -> int:
    from tqdm import tqdm

    from d2dist.engine.defaults import load_config
    from d2dist.engine.lazy import load_lazy_config
    from d2dist.engine.loss_scale import measure_loss_scale
    from d2dist.engine.subnormals import flush_subnormals
    from d2dist.errors import ConfigError

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
        print(f"loss_scale.py: error: {e}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())

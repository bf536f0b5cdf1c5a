"""Measure what distillation costs per training step, part by part, for a Distiller config.

    d2dist-benchmark --config-file CONFIG.yaml [--iters 20] [--warmup 5]
                     [--device cpu|cuda] [--json] [KEY VALUE ...]

(``python tools/benchmark.py ...`` in a checkout.) Prints, for the student's plain step, the
teacher forward, the method's own modules and losses, and the full distillation step: the median
and spread of the step time and the peak memory, the time of each loss term, ``overhead_ratio``
(what d2dist adds above the sum of the parts) and ``distill_over_student``, and on the CPU whether
subnormal floats were flushed to zero (the default; ``D2DIST_FLUSH_DENORMAL=0`` keeps them).
``--json`` prints one JSON object instead. What each part covers: ``d2dist/engine/benchmark.py``.
"""

import argparse
import json
import logging
import os
import statistics
import sys

import torch
from tabulate import tabulate
from tqdm import tqdm

from ..engine.benchmark import PHASES, benchmark, machine_description, measurement_parser
from ..engine.defaults import load_config
from ..engine.subnormals import flush_subnormals
from ..errors import ConfigError
from ._warnings import quiet_third_party_warnings

__all__ = ["console_main", "main"]


def _spread(values):
    if len(values) < 2:
        return "-"
    q = statistics.quantiles(values, n=4)
    return f"{q[0]:.4f} - {q[2]:.4f}"


def _table(result, summary: dict) -> str:
    rows = [
        [p, f"{summary[f'{p}_s']:.4f}", _spread(result.times[p]),
         f"{summary['slowest_s'][p]:.4f}", f"{result.peak_mib[p]:.0f}"]
        for p in PHASES
    ]  # fmt: skip
    rows += [
        [f"  term {k}", f"{v:.4f}", _spread(result.term_times[k]), "", ""]
        for k, v in summary["term_step_s"].items()
    ]
    memory = "peak MiB" if result.memory_per_phase else "process peak MiB"
    headers = ["part", "median s", "p25 - p75 s", "slowest s", memory]
    text = tabulate(rows, headers=headers, tablefmt="github")
    floor = " + ".join(f"{p}" for p in PHASES[:3])
    return (
        f"{text}\n\noverhead_ratio       = distill_step / ({floor}) = "
        f"{summary['overhead_ratio']:.3f}\ndistill_over_student = distill_step / student_step = "
        f"{summary['distill_over_student']:.3f}"
    )


def main(argv=None, prog: str = "benchmark.py") -> int:
    """Measure as the command line ``argv`` asks; returns the exit status (errors: 2, printed
    after ``prog``)."""
    parser = measurement_parser(
        __doc__,
        iters=20,
        iters_help="measured iterations",
        random_help="time with random weights (norm statistics calibrated on the first batch) "
        "instead of loading TEACHER.WEIGHTS and MODEL.WEIGHTS: for configs whose checkpoints "
        "are absent",
    )
    parser.prog = prog
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured first iterations")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    opts = list(args.opts) + (["MODEL.DEVICE", args.device] if args.device else [])
    try:
        cfg = load_config(args.config_file, opts)
        cfg.freeze()
        flush_subnormals(cfg.MODEL.DEVICE)  # before the first computation; see benchmark.py
        with tqdm(total=args.warmup + args.iters, desc="benchmark", disable=args.json) as bar:
            result = benchmark(
                cfg,
                iters=args.iters,
                warmup=args.warmup,
                progress=lambda _: bar.update(),
                random_weights=args.random_weights,
            )
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"\n{args.config_file} {' '.join(args.opts)}")
    print(f"{machine_description(torch.device(cfg.MODEL.DEVICE))}")
    if result.flush_subnormals is not None:
        mode = "flushed to zero" if result.flush_subnormals else "kept (not flushed)"
        print(f"subnormal floats: {mode} (D2DIST_FLUSH_DENORMAL)")
    if result.random_weights:
        print("weights: random, norm statistics calibrated on the first batch (timing only)")
    print(f"{args.warmup} warm-up + {args.iters} measured iterations, data loading excluded\n")
    print(_table(result, summary))
    return 0


def console_main(argv=None) -> int:
    """``d2dist-benchmark``: parses ``argv`` (default ``sys.argv[1:]``), returns the exit
    status."""
    quiet_third_party_warnings()
    return main(argv, prog=os.path.basename(sys.argv[0]))


if __name__ == "__main__":
    sys.exit(console_main())

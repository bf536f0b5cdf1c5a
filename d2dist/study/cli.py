"""The command lines of ``tools/study.py`` (the whole study) and ``tools/demo.py`` (its short
version): argument parsing, dataset generation, planning, running and the report."""

import argparse
import os
import re
import sys
import time
import warnings
from typing import List, Optional, Sequence

from ..data import ensure_generated
from ..errors import ConfigError
from ..file_io import CHECKOUT
from .planning import Job, StudyError, default_output_dir, plan
from .report import aggregate, table, write_report
from .runner import read_finished, run_jobs
from .tasks import DEMO_METHODS, DEMO_TASKS, TASKS

__all__ = ["demo_main", "main", "study_main"]

STUDY_DOC = """The accuracy study on the built-in dataset: per task (Faster R-CNN, RetinaNet), one
teacher, the student baseline and every method.

Trains each task's teacher once, then the student baseline and each distillation method with the
same schedule for every seed (``SEED`` of the run), each an ordinary ``tools/train_net.py`` run
evaluated with Detectron2's COCOEvaluator. Writes ``<report>/results.md`` (per task: mean and
standard deviation of AP per method, the gain over the baseline, the teacher's AP, the schedule;
the exact commands), a bar chart and the training loss curves (PNG) per task.

Runs whose directory already holds a run of the same code, config, seed and teacher are reused (a
finished one is only re-evaluated; an interrupted one resumes); ``--fresh`` retrains them, moving
earlier run directories aside. ``--jobs`` runs that many trainings side by side, splitting the
CPU cores between them; a task's teacher, which its distilled runs wait for, trains first, alone
on all cores. ``--quick`` is a smoke check: one seed and short schedules.
"""


def _parser(defaults: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=defaults.get("prog", "study.py"),
        description=defaults.get("doc", STUDY_DOC),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", nargs="+", default=list(defaults.get("tasks", TASKS)),
                        help=f"detectors to study, of {list(TASKS)}")  # fmt: skip
    all_methods = list(dict.fromkeys(m for t in TASKS.values() for m in t.by_name))
    parser.add_argument("--methods", nargs="+", default=defaults.get("methods"),
                        help=f"methods, of each task that has them (default: every method of "
                        f"the tasks chosen), of {all_methods}")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=defaults.get("seeds", [1, 2, 3]))
    parser.add_argument("--quick", action="store_true", help="one seed, short schedules")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="trainings side by side (default: 2, or 1 on a 1-core machine)",
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="where the runs go (default output/study, with --quick "
        "output/study-quick, so a smoke check never displaces the study's runs)",
    )
    parser.add_argument(
        "--report",
        default=defaults.get("report", os.path.join(CHECKOUT, "docs")),
        help="directory of the report (markdown and PNGs)",
    )
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the finished runs in --output-dir; train nothing",
    )
    parser.add_argument("--device", default=None, help="MODEL.DEVICE for every run")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    return parser  # fmt: skip


def _dataset_names(opts: Sequence[str]) -> List[str]:
    """The built-in datasets the runs use (generated up front, with a visible progress bar)."""
    pairs = dict(zip(opts[::2], opts[1::2]))
    train = pairs.get("DATASETS.TRAIN", "d2dist_shapes_train")
    test = pairs.get("DATASETS.TEST", "d2dist_shapes_val")
    return re.findall(r"d2dist_shapes\w*", f"{train} {test}")


def study_main(argv: Optional[Sequence[str]] = None, *, defaults: Optional[dict] = None):
    """Run (or, with ``--report-only``, report) a study; returns its jobs with their results.

    Raises :class:`~d2dist.errors.ConfigError` for arguments it cannot run with and
    :class:`~d2dist.study.planning.StudyError` when a run fails.
    """
    defaults = defaults or {}
    parser = _parser(defaults)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: must be at least 1")
    seeds = args.seeds[:1] if args.quick else args.seeds
    args.output_dir = args.output_dir or default_output_dir(args.quick)
    opts = list(args.opts) + (["MODEL.DEVICE", args.device] if args.device else [])
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; got an odd number: {opts}")
    prefix = defaults.get("prefix", "results_quick" if args.quick else "results")

    # Generate the dataset here, where its progress bar is visible (runs log to files), without
    # library deprecation warnings that say nothing about the study.
    jobs = plan(args.tasks, args.methods, seeds, args.output_dir, args.quick, opts)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
        for name in _dataset_names(opts):
            ensure_generated(name)
    start = time.time()
    if args.report_only:
        read_finished(jobs, args.output_dir)
        wall = None  # not a timed run
    else:
        run_jobs(jobs, args.output_dir, parallel=args.jobs, fresh=args.fresh)
        wall = (time.time() - start) / 60
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    invocation = defaults.get("invocation") or "python tools/study.py " + " ".join(given)
    path = write_report(jobs, args.output_dir, args.report, prefix=prefix,
                        invocation=invocation.strip(), wall_min=wall, parallel=args.jobs)  # fmt: skip
    print()
    for name in dict.fromkeys(j.task for j in jobs):
        teacher = next((j for j in jobs if j.task == name and j.method is None), None)
        print(f"{TASKS[name].label}" + (f": teacher box AP {teacher.results['bbox/AP']:.1f}"
                                        if teacher is not None else ""))  # fmt: skip
        print(table(aggregate(jobs, name, "bbox"), "bbox"))
    print(f"\nReport and charts: {path}\nRuns, logs and checkpoints: {args.output_dir}")
    return jobs


def demo_main(argv: Optional[Sequence[str]] = None) -> List[Job]:
    """``make demo``: the study's short version (one seed, the Faster R-CNN task's teacher, student
    baseline, ReviewKD, DIST on RoI logits and DIST+), reported in ``output/demo/demo.md``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return study_main(
        argv,
        defaults={
            "prog": "demo.py",
            "tasks": DEMO_TASKS,
            "methods": DEMO_METHODS,
            "seeds": [1],
            "report": os.path.join(CHECKOUT, "output", "demo"),
            "prefix": "demo",
            "invocation": "python tools/demo.py " + " ".join(argv),
        },
    )


def main(entry=study_main, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``entry`` as a command: a :class:`ConfigError` prints its message and exits with 2, a
    failed run (:class:`StudyError`) with 1; 0 otherwise."""
    prog = os.path.basename(sys.argv[0]) if argv is None else "study.py"
    try:
        entry(argv)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except StudyError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    return 0

"""The command lines of ``d2dist-study`` / ``tools/study.py`` (the whole study), ``d2dist-demo`` /
``tools/demo.py`` (its short version) and ``d2dist-visualize`` / ``tools/visualize.py`` (pictures
of predictions): argument parsing, dataset generation, planning, running, the report."""

import argparse
import os
import re
import sys
import time
from typing import Callable, List, Optional, Sequence

import yaml

from ..data import ensure_generated
from ..errors import ConfigError
from ..file_io import checkout, project_dir
from .pictures import (
    SCORE_THRESHOLD,
    PictureModel,
    draw_mixup_example,
    draw_predictions,
    run_model,
)
from .planning import Job, StudyError, default_output_dir, plan, run_dir
from .report import aggregate, table, write_report
from .runner import describe_threads, read_finished, run_jobs
from .runs import config_value
from .tasks import DEMO_METHODS, DEMO_TASKS, TASKS

__all__ = ["demo_main", "main", "study_main", "visualize_main"]

STUDY_DOC = """The accuracy study on the built-in dataset: per task (Faster R-CNN, RetinaNet), one
teacher, the student baseline and every method.

Trains each task's teacher once, then the student baseline and each distillation method with the
same schedule for every seed (``SEED`` of the run), each an ordinary ``tools/train_net.py`` run
evaluated with Detectron2's COCOEvaluator. Writes ``<report>/results.md`` (per task: mean and
standard deviation of AP per method, the gain over the baseline, the teacher's AP, the schedule;
the exact commands), a bar chart and the training loss curves (PNG) per task.

Runs whose directory already holds a run of the same code, config, seed and teacher are reused: a
finished one's stored results are read (``study_results.json``, kept with the fingerprint of the
run's config.yaml and final checkpoint: a changed one is evaluated again), an interrupted one
resumes; ``--fresh`` retrains them, moving earlier run directories aside. ``--jobs`` runs that
many trainings side by side, splitting the CPU cores between them (``OMP_NUM_THREADS`` = cores /
jobs in each run, unless you set OMP_NUM_THREADS); a task's teacher, which its distilled runs wait
for, trains first, alone on all cores. ``--quick`` is a smoke check: one seed, short schedules.
"""

DEMO_DOC = """d2dist's main job on the built-in dataset, in one command: the study's short version.

One seed of the Faster R-CNN task: the teacher (R50-FPN), the student baseline (R18-FPN) and
three distilled students: PKD and MGD, the methods the study finds strongest (docs/results.md),
and DIST on RoI logits. Each is an ordinary tools/train_net.py run with a progress bar, evaluated
with Detectron2's COCOEvaluator. The table is printed and written with its charts, pictures of
the models' predictions and the next steps to output/demo/demo.md. The runs go to --output-dir
(default output/study, shared with the study: a later `make study` reuses them); running the demo
again reads the stored results of finished runs instead of training or evaluating them again.
"""

VISUALIZE_DOC = """Draw the predictions of several models side by side (Detectron2's Visualizer)
on the first images of a dataset, each panel titled with its model and its box AP: one PNG per
image.

    d2dist-visualize --run-dir output/study/faster_rcnn/teacher \\
        --run-dir output/study/faster_rcnn/baseline/seed1 \\
        --run-dir output/study/faster_rcnn/pkd/seed1 --label teacher --label baseline --label PKD \\
        --dataset d2dist_shapes_val --num-images 3 --output-dir output/predictions

A run directory gives its config.yaml and last checkpoint (a distilled run's student is drawn, as
--eval-only evaluates it) and its box AP (from the study's stored results or its metrics.json);
--model CONFIG WEIGHTS gives any model of a yacs config with its weights (--ap to title it).
"""


def _study_report_dir() -> str:
    """docs/ of a checkout (the study's report is docs/results.md); else output/report."""
    root = checkout()
    return os.path.join(root, "docs") if root else os.path.join(project_dir(), "output", "report")


def _parser(defaults: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=defaults.get("prog"),
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
        default=defaults.get("report", _study_report_dir()),
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


def _command_name(argv: Optional[Sequence[str]], script: str) -> str:
    """How the command was called: its console script (``d2dist-demo``), else the checkout's
    script (``python tools/demo.py``)."""
    called = os.path.basename(sys.argv[0]) if argv is None else ""
    return called if called.startswith("d2dist-") else f"python tools/{script}"


def _shown(path: str, base: str) -> str:
    """``path`` relative to ``base`` when inside it, else absolute."""
    path = os.path.abspath(path)
    inside = path == base or path.startswith(base.rstrip(os.sep) + os.sep)
    return os.path.relpath(path, base) if inside else path


def study_main(argv: Optional[Sequence[str]] = None, *, defaults: Optional[dict] = None):
    """Run (or, with ``--report-only``, report) a study; returns its jobs with their results.

    ``defaults`` (the demo's): the parser's defaults (``tasks``, ``methods``, ``seeds``,
    ``report``), the report's ``prefix`` and ``invocation``, and ``pictures`` / ``next_steps``
    (True: draw the runs' predictions next to the report, close it with next steps).

    Raises :class:`~d2dist.errors.ConfigError` for arguments it cannot run with and
    :class:`~d2dist.study.planning.StudyError` when a run fails.
    """
    defaults = defaults or {}
    parser = _parser(defaults)
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(given)
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: must be at least 1")
    seeds = args.seeds[:1] if args.quick else args.seeds
    args.output_dir = args.output_dir or default_output_dir(args.quick)
    opts = list(args.opts) + (["MODEL.DEVICE", args.device] if args.device else [])
    if len(opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; got an odd number: {opts}")
    prefix = defaults.get("prefix", "results_quick" if args.quick else "results")

    jobs = plan(args.tasks, args.methods, seeds, args.output_dir, args.quick, opts)
    # Generate the dataset here, where its progress bar is visible (runs log to files).
    for name in _dataset_names(opts):
        ensure_generated(name)
    threads = describe_threads(args.jobs)
    start = time.time()
    if args.report_only:
        read_finished(jobs, args.output_dir)
        wall = None  # not a timed run
    else:
        print(f"{len(jobs)} runs, {args.jobs} side by side: {threads}.")
        run_jobs(jobs, args.output_dir, parallel=args.jobs, fresh=args.fresh)
        wall = (time.time() - start) / 60
    shown = [a for a in given if a != "--report-only"]
    invocation = defaults.get("invocation") or _command_name(argv, "study.py")
    invocation = " ".join([invocation, *shown])
    pictures = []
    if defaults.get("pictures"):
        pictures = draw_predictions(
            _picture_models(jobs, args.output_dir),
            _test_dataset(jobs, args.output_dir),
            args.report,
            num_images=3,
            device=args.device,
            prefix=f"{prefix}_predictions",
        )
    steps = None
    if defaults.get("next_steps"):
        steps = _next_steps(jobs, args.output_dir, args.report, pictures)
    closing = steps(project_dir(), markdown=True) if steps else ()
    path = write_report(jobs, args.output_dir, args.report, prefix=prefix,
                        invocation=invocation.strip(), wall_min=wall, parallel=args.jobs,
                        threads=threads, pictures=pictures, next_steps=closing)  # fmt: skip
    print()
    for name in dict.fromkeys(j.task for j in jobs):
        teacher = next((j for j in jobs if j.task == name and j.method is None), None)
        print(f"{TASKS[name].label}" + (f": teacher box AP {teacher.results['bbox/AP']:.1f}"
                                        if teacher is not None else ""))  # fmt: skip
        print(table(aggregate(jobs, name, "bbox"), "bbox"))
    print(f"\nReport and charts: {path}\nRuns, logs and checkpoints: {args.output_dir}")
    if steps:
        print("\nNext steps:\n" + "\n".join(steps(os.getcwd(), markdown=False)))
    return jobs


def _shown_jobs(jobs: Sequence[Job]) -> List[Job]:
    """The runs a picture shows: the teachers, then the students of the first seed."""
    seeds = [j.seed for j in jobs if j.seed is not None]
    return [j for j in jobs if j.method is None or j.seed == min(seeds)]


def _picture_models(jobs: Sequence[Job], out_root: str) -> List[PictureModel]:
    return [
        run_model(run_dir(j, out_root), "teacher" if j.method is None else j.method.label,
                  j.results.get("bbox/AP"))
        for j in _shown_jobs(jobs)
    ]  # fmt: skip


def _test_dataset(jobs: Sequence[Job], out_root: str) -> str:
    """The dataset the runs were evaluated on (the first of DATASETS.TEST of the first run)."""
    names = config_value(run_dir(jobs[0], out_root), "DATASETS", "TEST") or ["d2dist_shapes_val"]
    return names[0]


def _next_steps(
    jobs: Sequence[Job], out_root: str, report: str, pictures: Sequence[str]
) -> Callable:
    """The demo's closing next steps, as a function of the folder paths are shown from and of
    the form (markdown for the report in ``report``, with links from there; plain text to
    print)."""
    distilled = [j for j in _shown_jobs(jobs) if j.method is not None and j.method.distill]
    best = max(distilled, key=lambda j: j.results.get("bbox/AP", float("-inf")), default=None)

    def steps(base: str, markdown: bool) -> List[str]:
        code = (lambda s: f"`{s}`") if markdown else (lambda s: s)
        root, lines = checkout(), []
        if best is not None:
            run = _shown(run_dir(best, out_root), base)
            script = code(f"python tools/export_student.py --run-dir {run}")
            lines.append(
                f"Export the best distilled student ({best.method.label}, box AP "
                f"{best.results.get('bbox/AP', float('nan')):.1f}) as a plain Detectron2 model "
                f"(its weights and config, no teacher): {code(f'd2dist-export --run-dir {run}')}"
                + (f" (from the checkout: {script})" if root else "")
                + "; it writes student.pth and student.yaml into that directory."
            )
        guide = "docs/getting_started.md"
        if root is None:
            where = f"{guide} in d2dist's source"
        elif markdown:
            where = f"[{guide}]({os.path.relpath(os.path.join(root, guide), report)})"
        else:
            where = _shown(os.path.join(root, guide), base)
        lines.append(
            f"Distil your own Detectron2 model (your config, your teacher, your data): {where}."
        )
        if pictures:
            shown = (
                "the pictures above" if markdown else ", ".join(_shown(p, base) for p in pictures)
            )
            lines.append(
                f"Look at the predictions: {shown}; draw them for any runs with "
                + code("d2dist-visualize --run-dir RUN_DIR [--run-dir RUN_DIR ...] --dataset "
                       "d2dist_shapes_val --output-dir DIR")  # fmt: skip
                + "."
            )
        lines.append(
            "The full study, every method over three seeds (it reuses these runs): "
            + (
                f"{code('make study')}, reported in docs/results.md."
                if root
                else code("d2dist-study") + "."
            )
        )
        bullet = "- " if markdown else "  - "
        return [bullet + line for line in lines]

    return steps


def demo_main(argv: Optional[Sequence[str]] = None) -> List[Job]:
    """``make demo``: the study's short version (one seed of the Faster R-CNN task: the teacher,
    the student baseline, the two methods the study finds strongest, PKD and MGD, and DIST on
    RoI logits; see :data:`~d2dist.study.tasks.DEMO_METHODS`), reported with pictures of the
    predictions and next steps in ``output/demo/demo.md``."""
    return study_main(
        argv,
        defaults={
            "prog": None,
            "doc": DEMO_DOC,
            "tasks": DEMO_TASKS,
            "methods": DEMO_METHODS,
            "seeds": [1],
            "report": os.path.join(project_dir(), "output", "demo"),
            "prefix": "demo",
            "invocation": _command_name(argv, "demo.py"),
            "pictures": True,
            "next_steps": True,
        },
    )


def _config_test_set(config_file: str) -> Optional[str]:
    """The first of DATASETS.TEST in a config file itself (a run's config.yaml has them all)."""
    try:
        with open(config_file) as f:
            tests = (yaml.safe_load(f) or {}).get("DATASETS", {}).get("TEST")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return tests[0] if isinstance(tests, list) and tests else tests or None


def visualize_main(argv: Optional[Sequence[str]] = None) -> List[str]:
    """``d2dist-visualize``: draw the predictions of runs (or configs with weights) side by side
    on a few images of a dataset; returns the PNG paths."""
    parser = argparse.ArgumentParser(
        description=VISUALIZE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run-dir", dest="models", action="append", default=[],
                        metavar="RUN_DIR", help="a training run's OUTPUT_DIR (config.yaml, "
                        "last checkpoint); repeat for several, in the order of the "
                        "panels")  # fmt: skip
    parser.add_argument("--model", dest="models", action="append", nargs=2,
                        metavar=("CONFIG", "WEIGHTS"),
                        help="a config file and its weights, instead of a run "
                        "directory")  # fmt: skip
    parser.add_argument("--label", action="append", default=[],
                        help="the models' titles, in their order (default: the run directory, "
                        "or the config file's name)")  # fmt: skip
    parser.add_argument("--ap", action="append", type=float, default=[],
                        help="the models' box AP, in their order (default: a run's stored "
                        "results or metrics.json; none for --model)")  # fmt: skip
    parser.add_argument("--dataset", default=None,
                        help="a registered dataset (default: the first model's first "
                        "DATASETS.TEST)")  # fmt: skip
    parser.add_argument("--num-images", type=int, default=3)
    parser.add_argument("--output-dir", default=os.path.join("output", "predictions"))
    parser.add_argument("--score-threshold", type=float, default=SCORE_THRESHOLD)
    parser.add_argument("--device", default=None, help="MODEL.DEVICE (default: the config's)")
    parser.add_argument("--no-ground-truth", action="store_true",
                        help="leave out the ground-truth panel")  # fmt: skip
    parser.add_argument("--prefix", default="predictions", help="PNG names: PREFIX_<k>.png")
    parser.add_argument("--mixup-example", metavar="PNG", default=None,
                        help="instead: draw a consistent-mixup training view (a labeled and an "
                        "unlabeled image of the built-in dataset, mixed, with the labels of the "
                        "teacher given by the first --run-dir, default the study's Faster R-CNN "
                        "teacher, on the mix) into PNG (docs/unlabeled.md)")  # fmt: skip
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.mixup_example:
        runs = [m for m in args.models if isinstance(m, str)]
        teacher = runs[0] if runs else os.path.join(default_output_dir(False), "faster_rcnn",
                                                    "teacher")  # fmt: skip
        path = draw_mixup_example(
            teacher, args.mixup_example, score_threshold=args.score_threshold, device=args.device
        )
        print(path)
        return [path]
    if not args.models:
        raise ConfigError("give the models to draw: --run-dir RUN_DIR or --model CONFIG WEIGHTS")
    for option in ("label", "ap"):
        if len(getattr(args, option)) > len(args.models):
            raise ConfigError(
                f"{len(getattr(args, option))} --{option} for {len(args.models)} models"
            )
    models = []
    for i, source in enumerate(args.models):
        label = args.label[i] if i < len(args.label) else None
        ap = args.ap[i] if i < len(args.ap) else None
        if isinstance(source, str):
            models.append(run_model(source, label, ap))
        else:
            config, weights = source
            for path in source:
                if not os.path.isfile(path):
                    raise ConfigError(f"--model {config} {weights}: {path!r} does not exist")
            name = label or os.path.splitext(os.path.basename(config))[0]
            models.append(PictureModel(name, config, weights, ap))
    dataset = args.dataset or _config_test_set(models[0].config)
    if not dataset:
        raise ConfigError("--dataset is needed: the first model's config names no DATASETS.TEST")
    paths = draw_predictions(
        models,
        dataset,
        args.output_dir,
        num_images=args.num_images,
        score_threshold=args.score_threshold,
        device=args.device,
        ground_truth=not args.no_ground_truth,
        prefix=args.prefix,
    )
    print("\n".join(paths))
    return paths


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

"""The study of patience and consistency (Beyer et al., CVPR 2022) on the built-in dataset:
``make patience`` / ``python tools/patience_study.py``.

The Faster R-CNN task of the study (R18-FPN student, R50-FPN teacher, PKD: the study's strongest
term on it, docs/results.md), trained for 1x, 2x and 4x the study's student schedule in four arms:

- ``labeled``: the 1,000 labeled images only;
- ``offline``: plus 4,000 unlabeled images (``d2dist_shapes_unlabeled``: new images of the
  generator, labels withheld) labelled once by the teacher (tools/label_images.py, a COCO file);
- ``online``: plus the same images labelled by the teacher on each step's own augmented view
  (``MODEL.DISTILL.TEACHER_LABELS``);
- ``mixup``: as ``online``, with consistent mixup (``MODEL.DISTILL.MIXUP``).

Half of each batch is unlabeled on average in the last three arms. The report (a table and a chart
of box AP against schedule, the teacher's AP as a line) goes into docs/results.md between markers.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from detectron2.data import MetadataCatalog

from ..data import ensure_generated
from ..errors import ConfigError
from ..file_io import CHECKOUT, checkout, project_dir
from .planning import (
    Job,
    StudyError,
    config_path,
    default_output_dir,
    fingerprint,
    plan,
    run_dir,
    shell_command,
)
from .report import SECTION_END as END
from .report import SECTION_START as START
from .report import _fmt, _machine
from .runner import describe_threads, holds_same_run, read_finished, run_jobs, thread_env
from .cli import main as study_cli_main
from .runs import final_results, stored_results
from .tasks import CONFIGS, Method

__all__ = ["ARMS", "SCHEDULES", "patience_main", "plan_patience", "write_patience_report"]

TASK = "faster_rcnn"
UNLABELED = "d2dist_shapes_unlabeled"
PSEUDO = "d2dist_shapes_pseudo"  # the offline labels' dataset (--coco-dataset)
# Offline and online labels alike: the teacher (box AP 10) is rarely confident; at 0.3 its
# detections on the unlabeled images number about what the labeled images hold (2 per image).
SCORE_THRESHOLD = 0.3
BASE_ITERS, BASE_STEPS = 600, (480, 570)  # the students' 1x schedule (Base-Shapes-RCNN-FPN.yaml)
SCHEDULES = {"1x": 1, "2x": 2, "4x": 4}
LABEL_TOOL = os.path.join(CHECKOUT, "tools", "label_images.py")


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    config: str


ARMS = (
    Arm("labeled", "(a) labeled only", f"{CONFIGS}/pkd_faster_rcnn_R18_from_R50_FPN_1x.yaml"),
    Arm("offline", "(b) + unlabeled, offline teacher labels",
        f"{CONFIGS}/pkd_faster_rcnn_R18_from_R50_FPN_offline_labels_1x.yaml"),
    Arm("online", "(c) + unlabeled, online teacher labels",
        f"{CONFIGS}/pkd_faster_rcnn_R18_from_R50_FPN_online_labels_1x.yaml"),
    Arm("mixup", "(d) as (c) + consistent mixup",
        f"{CONFIGS}/pkd_faster_rcnn_R18_from_R50_FPN_online_labels_mixup_1x.yaml"),
)  # fmt: skip


def schedule_opts(factor: int) -> List[str]:
    steps = ",".join(str(s * factor) for s in BASE_STEPS)
    return ["SOLVER.MAX_ITER", str(BASE_ITERS * factor), "SOLVER.STEPS", f"({steps})",
            "SOLVER.CHECKPOINT_PERIOD", str(300 * factor)]  # fmt: skip


def labels_file(out_root: str) -> str:
    return os.path.join(out_root, TASK, "offline_labels", "instances_unlabeled.json")


def unlabeled_dir() -> str:
    return MetadataCatalog.get(UNLABELED).image_root


def plan_patience(
    arms: Sequence[str], schedules: Sequence[str], seeds: Sequence[int], out_root: str,
    opts: Sequence[str] = (), later_schedules: Optional[Sequence[str]] = None,
) -> List[Job]:  # fmt: skip
    """The teacher (the study's, shared with it) and, seed by seed, every arm at every schedule;
    the seeds after the first at ``later_schedules`` only (None: all), which keeps the whole study
    within about two hours on 2 cores (the 4x runs take as long as 1x and 2x together)."""
    by_name = {a.name: a for a in ARMS}
    later = list(schedules if later_schedules is None else later_schedules)
    unknown = [a for a in arms if a not in by_name] + [
        s for s in [*schedules, *later] if s not in SCHEDULES
    ]
    if unknown:
        raise ConfigError(
            f"unknown arm(s) or schedule(s) {unknown}; arms: {list(by_name)}, schedules: "
            f"{list(SCHEDULES)}"
        )
    teacher = plan([TASK], ["pkd"], [seeds[0]], out_root, False, list(opts))[0]
    weights = os.path.join(out_root, TASK, "teacher", "model_final.pth")
    jobs = [teacher]
    for seed in seeds:
        for s in schedules if seed == seeds[0] else [s for s in schedules if s in later]:
            for a in arms:
                arm = by_name[a]
                run_opts = [*schedule_opts(SCHEDULES[s]), *opts, "SEED", str(seed),
                            "MODEL.DISTILL.TEACHER.WEIGHTS", weights]  # fmt: skip
                args = []
                if arm.name == "offline":
                    args = ["--coco-dataset", PSEUDO, labels_file(out_root), unlabeled_dir()]
                method = Method(f"{arm.name}_{s}", f"{arm.label}, {s}", arm.config)
                job = Job(f"{TASK}/patience/{arm.name}_{s}/seed{seed}", TASK, arm.config,
                          run_opts, method, seed, needs_teacher=True, args=args)  # fmt: skip
                extra = [SCORE_THRESHOLD] if arm.name == "offline" else []
                job.fingerprint = fingerprint(
                    arm.config, [*args, *run_opts, *map(str, extra)], teacher.fingerprint
                )
                jobs.append(job)
    # Seed 1 at every schedule first, then the other seeds' 1x and 2x, then their 4x: what a
    # cut-short study has is what matters most.
    first, rest = jobs[:1], jobs[1:]
    return first + sorted(rest, key=lambda j: (j.seed != seeds[0] and "_4x" in j.name,))


def finished_results(job: Job, out_root: str) -> Optional[Dict[str, float]]:
    """A job's results when its directory holds this very run, finished."""
    out = run_dir(job, out_root)
    if not holds_same_run(job, out):
        return None
    return stored_results(out, job.fingerprint) or final_results(out) or None


def make_offline_labels(teacher: Job, out_root: str) -> str:
    """Label the unlabeled images with the finished teacher (tools/label_images.py), once per
    teacher (the file's stamp holds the teacher's fingerprint)."""
    path = labels_file(out_root)
    stamp = path + ".teacher"
    if os.path.isfile(path) and os.path.isfile(stamp):
        with open(stamp) as f:
            if f.read().strip() == teacher.fingerprint:
                return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tool = [sys.executable, LABEL_TOOL] if os.path.isfile(LABEL_TOOL) else [
        sys.executable, "-m", "d2dist.cli.label_images"]  # fmt: skip
    cmd = tool + [
        "--config-file", config_path(teacher.config),
        "--weights", os.path.join(run_dir(teacher, out_root), "model_final.pth"),
        "--image-folder", unlabeled_dir(), "--output", path,
        "--score-threshold", str(SCORE_THRESHOLD), "--device", "cpu", "--opts", *teacher.opts,
    ]  # fmt: skip
    print("Labelling the unlabeled images offline:", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=project_dir(), env=thread_env(os.cpu_count() or 1))
    if done.returncode != 0:
        raise StudyError(f"offline labelling failed (exit {done.returncode}): {' '.join(cmd)}")
    with open(stamp, "w") as f:
        f.write(teacher.fingerprint + "\n")
    return path


def _labels_summary(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    n, m = len(data["images"]), len(data["annotations"])
    return f"{m} boxes on {n} images ({m / max(n, 1):.2f} per image)"


def aggregate_patience(jobs: Sequence[Job]) -> Dict[str, Dict[str, dict]]:
    """``{arm: {schedule: {"ap": [...], "seeds": [...], "mean", "std", "time_min"}}}``."""
    out: Dict[str, Dict[str, dict]] = {}
    for job in jobs:
        if job.method is None or "bbox/AP" not in job.results:
            continue
        arm, s = job.method.name.rsplit("_", 1)
        cell = out.setdefault(arm, {}).setdefault(s, {"ap": [], "seeds": [], "time": []})
        cell["ap"].append(job.results["bbox/AP"])
        cell["seeds"].append(job.seed)
        cell["time"].append(job.results.get("time_min", float("nan")))
    for cells in out.values():
        for c in cells.values():
            c["mean"] = statistics.fmean(c["ap"])
            c["std"] = statistics.stdev(c["ap"]) if len(c["ap"]) > 1 else float("nan")
            c["time_min"] = statistics.fmean(c["time"])
    return out


def write_patience_report(
    jobs: Sequence[Job], out_root: str, report: str, *, invocation: str,
    wall_min: Optional[float], labels: str = "",
) -> str:  # fmt: skip
    """The section of docs/results.md (between its markers: replaced, or appended) and its chart
    ``results_patience_ap.png``; returns the markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(report, exist_ok=True)
    cells = aggregate_patience(jobs)
    teacher = next(j for j in jobs if j.method is None)
    teacher_ap = teacher.results.get("bbox/AP")
    schedules = [s for s in SCHEDULES if any(s in c for c in cells.values())]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for k, arm in enumerate(a for a in ARMS if a.name in cells):
        xs = [s for s in schedules if s in cells[arm.name]]
        ys = [cells[arm.name][s]["mean"] for s in xs]
        es = [0 if cells[arm.name][s]["std"] != cells[arm.name][s]["std"] else
              cells[arm.name][s]["std"] for s in xs]  # fmt: skip
        ax.errorbar([SCHEDULES[s] for s in xs], ys, yerr=es, marker="o", capsize=3,
                    label=arm.label, color=f"C{k}")  # fmt: skip
    if teacher_ap is not None:
        ax.axhline(teacher_ap, color="tab:red", linestyle="--", label=f"teacher ({teacher_ap:.1f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks([SCHEDULES[s] for s in schedules], schedules)
    ax.set_xlabel(f"student schedule (1x = {BASE_ITERS} iterations of 4 images)")
    ax.set_ylabel("box AP (d2dist_shapes_val)")
    ax.set_title("Faster R-CNN R18-FPN from R50-FPN (PKD):\npatience and unlabeled images")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    png = os.path.join(report, "results_patience_ap.png")
    fig.savefig(png, dpi=100)
    plt.close(fig)

    header = ["arm"] + [f"{s} box AP" for s in schedules]
    rows = []
    for arm in (a for a in ARMS if a.name in cells):
        row = [arm.label]
        for s in schedules:
            c = cells[arm.name].get(s)
            if c is None:
                row.append("not run")
                continue
            spread = f" ± {_fmt(c['std'])}" if len(c["ap"]) > 1 else ""
            row.append(f"{_fmt(c['mean'])}{spread} (n={len(c['ap'])}, {_fmt(c['time_min'])} min)")
        rows.append(row)
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    seeds = sorted({j.seed for j in jobs if j.seed is not None})
    lines = [
        START,
        "## Patience and consistency: unlabeled images, teacher labels, mixup",
        "",
        f"`{invocation}`, report of {time.strftime('%Y-%m-%d')} on {_machine()}"
        + (f", {_fmt(wall_min)} min of wall clock" if wall_min is not None else "")
        + f". Seeds {seeds}; each cell: mean ± std over its n seeds and the mean training time "
        "of one run (cells with fewer seeds than others ran out of the study's time budget). "
        f"Teacher (R50-FPN, 3x): box AP **{_fmt(teacher_ap)}**. Student: R18-FPN with PKD "
        "(weight 6, p2-p5) throughout. Unlabeled images: 4,000 new images of the generator "
        f"(`{UNLABELED}`), half of each batch on average; teacher labels: detections scoring "
        f">= {SCORE_THRESHOLD}" + (f" (offline: {labels})" if labels else "") + ".",
        "",
        *table,
        "",
        f"![{os.path.basename(png)}]({os.path.basename(png)})",
        "",
        "Commands (from the checkout; the offline arm's labels are written first by "
        "`tools/label_images.py`, see its config):",
        "",
        "```",
        *[shell_command(j, out_root) for j in jobs],
        "```",
        END,
    ]
    path = os.path.join(report, "results.md")
    text = open(path).read() if os.path.isfile(path) else "# d2dist results\n"
    section = "\n".join(lines)
    if START in text and END in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arms", nargs="+", default=[a.name for a in ARMS])
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES))
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--later-seed-schedules", nargs="+", default=["1x", "2x"],
                   help="the schedules of the seeds after the first (default 1x 2x: the 4x runs "
                   "of seed 1 only, about two hours in all on 2 cores)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--output-dir", default=None, help="default output/study (its teacher shared)")
    root = checkout()
    p.add_argument("--report", default=os.path.join(root, "docs") if root else
                   os.path.join(project_dir(), "output", "report"))  # fmt: skip
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    return p  # fmt: skip


def patience_main(argv: Optional[Sequence[str]] = None) -> List[Job]:
    """Run (or report) the study; returns its jobs with their results."""
    given = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(given)
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: must be at least 1")
    if len(args.opts) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; got {args.opts}")
    out = args.output_dir or default_output_dir(False)
    for name in ("d2dist_shapes_train", "d2dist_shapes_val", "d2dist_shapes_extra_train"):
        ensure_generated(name)
    jobs = plan_patience(args.arms, args.schedules, args.seeds, out, args.opts,
                         later_schedules=args.later_seed_schedules)  # fmt: skip
    teacher = jobs[0]
    start = time.time()
    labels = ""
    if args.report_only:  # what has finished (a cell with fewer seeds says so)
        for job in jobs:
            job.results = finished_results(job, out) or {}
        if not jobs[0].results:
            read_finished(jobs[:1], out)  # the teacher is needed: names what is missing
        jobs = [j for j in jobs if j.results]
        wall = None
    else:
        print(f"{len(jobs)} runs, {args.jobs} side by side: {describe_threads(args.jobs)}.")
        run_jobs([teacher], out, parallel=args.jobs, fresh=args.fresh)
        if "offline" in args.arms:
            labels = _labels_summary(make_offline_labels(teacher, out))
        run_jobs(jobs, out, parallel=args.jobs, fresh=False)  # the teacher: done above
        wall = (time.time() - start) / 60
    if not labels and os.path.isfile(labels_file(out)):
        labels = _labels_summary(labels_file(out))
    invocation = " ".join(
        ["python tools/patience_study.py", *[a for a in given if a != "--report-only"]]
    )
    path = write_patience_report(jobs, out, args.report, invocation=invocation.strip(),
                                 wall_min=wall, labels=labels)  # fmt: skip
    print(f"Report: {path}")
    return jobs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``tools/patience_study.py``: exit 2 for arguments it cannot run with, 1 for a failed run."""
    return study_cli_main(patience_main, argv)

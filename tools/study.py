#!/usr/bin/env python
"""The accuracy study on the built-in dataset: one teacher, the student baseline and every method.

    python tools/study.py [--seeds 1 2 3] [--methods baseline kd ...] [--quick] [--jobs 2]
                          [--output-dir output/study] [--report docs] [--fresh] [KEY VALUE ...]

Trains the teacher once, then the student baseline and each distillation method with the same
schedule for every seed (``SEED`` of the run), each an ordinary ``tools/train_net.py`` run
evaluated with Detectron2's COCOEvaluator. Writes ``<report>/results.md`` (mean and standard
deviation of AP per method, the gain over the baseline, the teacher's AP, the schedule and the
exact commands), a bar chart and the training loss curves (PNG).

Runs whose directory already holds a run of the same config, seed and teacher are reused (a
finished one is only re-evaluated; an interrupted one resumes); ``--fresh`` retrains them, moving
earlier run directories aside. ``--jobs`` runs that many trainings side by side, splitting the
CPU cores between them (on 2 cores two single-threaded runs train faster than one run on both);
the teacher, which the distilled runs wait for, trains first, alone on all cores.
``--quick`` is a smoke check: one seed and short schedules.
"""

import argparse
import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from tabulate import tabulate
from tqdm import tqdm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
CONFIGS = "configs/Shapes-Detection"
TEACHER_CONFIG = f"{CONFIGS}/faster_rcnn_R50_FPN_3x.yaml"


@dataclass(frozen=True)
class Method:
    name: str  # run directory and --methods name
    label: str  # shown in tables and charts
    config: str  # relative to the repository
    distill: bool = True  # needs the teacher


def _distill_config(method: str) -> str:
    return f"{CONFIGS}/{method}_faster_rcnn_R18_from_R50_FPN_1x.yaml"


METHODS: Dict[str, Method] = {
    m.name: m
    for m in [
        Method("baseline", "student baseline", f"{CONFIGS}/faster_rcnn_R18_FPN_1x.yaml", False),
        Method("kd", "KD (RoI logits)", _distill_config("kd")),
        Method("mimic", "MIMIC (FPN)", _distill_config("mimic")),
        Method("reviewkd", "ReviewKD", _distill_config("reviewkd")),
        Method("dist", "DIST (RoI logits)", _distill_config("dist")),
        Method("distplus", "DIST+ (reconstr.)", _distill_config("distplus")),
        Method(
            "distplus_acclim", "DIST+ + acclim. (reconstr.)", _distill_config("distplus_acclim")
        ),
        Method("pkd", "PKD", _distill_config("pkd")),
        Method("cwd", "CWD (FPN)", _distill_config("cwd")),
    ]
}
DEMO_METHODS = ("baseline", "reviewkd", "dist", "distplus")
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
QUICK_ITERS = {"teacher": 100, "student": 50}  # --quick schedules (iterations)


def default_output_dir(quick: bool) -> str:
    """Where the runs go: a --quick smoke check never displaces (moves aside) the study's runs."""
    return os.path.join(REPO, "output", "study-quick" if quick else "study")


def _schedule_opts(max_iter: int) -> List[str]:
    """A shortened schedule: LR steps at 80% and 95%, as in the configs' own schedules."""
    steps = f"({int(max_iter * 0.8)},{int(max_iter * 0.95)})"
    return ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", steps, "SOLVER.WARMUP_ITERS", "10"]


@dataclass
class Job:
    """One training run: the teacher, or a method at a seed."""

    name: str  # directory under the output dir, e.g. "reviewkd/seed1"
    config: str
    opts: List[str]
    method: Optional[Method] = None  # None for the teacher
    seed: Optional[int] = None
    needs_teacher: bool = False
    fingerprint: str = ""
    results: Dict[str, float] = field(default_factory=dict)


# ---- reading a run's files (also while it writes them) --------------------------------------
def _read_metrics(out: str) -> List[dict]:
    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written right now
                break
    return records


def _max_iter(out: str) -> Optional[int]:
    """The run's SOLVER.MAX_ITER from its config.yaml; None until the file is fully written."""
    import yaml

    path = os.path.join(out, "config.yaml")
    try:
        with open(path) as f:
            return int(yaml.safe_load(f)["SOLVER"]["MAX_ITER"])
    except (OSError, yaml.YAMLError, TypeError, KeyError, ValueError):
        return None  # not written yet, or being written right now


def _training_minutes(out: str) -> float:
    """The run's training time: the sum of Detectron2's "Total training time" lines in log.txt
    (one per start or resume of the run), so reused runs report when they were trained."""
    total = 0.0
    path = os.path.join(out, "log.txt")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                m = re.search(r"Total training time: (\d+):(\d\d):(\d\d)", line)
                if m:
                    h, mi, sec = (int(x) for x in m.groups())
                    total += h * 60 + mi + sec / 60
    return total


def schedule(out: str) -> str:
    """The run's schedule, from the config.yaml it wrote: iterations, batch, LR and its steps."""
    import yaml

    try:
        with open(os.path.join(out, "config.yaml")) as f:
            solver = yaml.safe_load(f)["SOLVER"]
        return (
            f"{solver['MAX_ITER']} iterations of {solver['IMS_PER_BATCH']} images, SGD lr "
            f"{solver['BASE_LR']} (x0.1 at {', '.join(str(x) for x in solver['STEPS'])})"
        )
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return "unknown (no readable config.yaml)"


def final_results(out: str) -> Dict[str, float]:
    """The last COCO evaluation of a run (``bbox/AP``..., ``segm/AP``...) and its training time."""
    evals = [r for r in _read_metrics(out) if "bbox/AP" in r]
    if not evals:
        return {}
    return {
        "time_min": _training_minutes(out),
        **{k: v for k, v in evals[-1].items() if k.split("/")[0] in ("bbox", "segm")},
    }


def loss_curves(out: str) -> Dict[str, List[tuple]]:
    """(iteration, value) series of the student's own losses (summed) and the distillation
    losses (summed) from a run's metrics.json."""
    detection, distill = [], []
    for r in _read_metrics(out):
        if "iteration" not in r:
            continue
        keys = [k for k in r if k.startswith("loss_")]
        det = [r[k] for k in keys if not k.startswith("loss_distill")]
        dis = [r[k] for k in keys if k.startswith("loss_distill")]
        if det:
            detection.append((r["iteration"], sum(det)))
        if dis:
            distill.append((r["iteration"], sum(dis)))
    return {"detection": detection, "distill": distill}


# ---- the runs ---------------------------------------------------------------------------------
def _config_text(path: str) -> str:
    """The config file and its _BASE_ chain, as text (what the fingerprint covers)."""
    import yaml

    text = open(path).read()
    base = (yaml.safe_load(text) or {}).get("_BASE_")
    if base:
        text = _config_text(os.path.join(os.path.dirname(path), base)) + text
    return text


def _fingerprint(config: str, opts: Sequence[str], teacher: str = "") -> str:
    import d2dist

    payload = [d2dist.__version__, _config_text(os.path.join(REPO, config)), *opts, teacher]
    return hashlib.sha256("\0".join(payload).encode()).hexdigest()[:16]


def plan(
    methods: Sequence[str], seeds: Sequence[int], out_root: str, quick: bool, opts: Sequence[str]
) -> List[Job]:
    """The jobs of a study: the teacher (when a method needs it), then each method per seed."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"study: unknown method(s) {unknown}; choose from {list(METHODS)}")
    if not seeds:
        raise SystemExit("study: --seeds is empty; give at least one seed, e.g. --seeds 1")
    teacher_opts = (_schedule_opts(QUICK_ITERS["teacher"]) if quick else []) + list(opts)
    student_opts = (_schedule_opts(QUICK_ITERS["student"]) if quick else []) + list(opts)
    jobs: List[Job] = []
    teacher_fp = ""
    if any(METHODS[m].distill for m in methods):
        teacher = Job("teacher", TEACHER_CONFIG, teacher_opts)
        teacher.fingerprint = teacher_fp = _fingerprint(TEACHER_CONFIG, teacher_opts)
        jobs.append(teacher)
    weights = os.path.join(out_root, "teacher", "model_final.pth")
    for seed in seeds:
        for name in methods:
            m = METHODS[name]
            run_opts = [*student_opts, "SEED", str(seed)]
            if m.distill:
                run_opts += ["MODEL.DISTILL.TEACHER.WEIGHTS", weights]
            job = Job(f"{name}/seed{seed}", m.config, run_opts, m, seed, needs_teacher=m.distill)
            job.fingerprint = _fingerprint(m.config, run_opts, teacher_fp if m.distill else "")
            jobs.append(job)
    return jobs


def command(job: Job, out_root: str, resume: bool = False) -> List[str]:
    cmd = [sys.executable, TRAIN_NET, "--config-file", os.path.join(REPO, job.config)]
    return cmd + (["--resume"] if resume else []) + [*job.opts, "OUTPUT_DIR", _out(job, out_root)]


def _out(job: Job, out_root: str) -> str:
    return os.path.join(out_root, job.name)


def _stamp(out: str) -> str:
    return os.path.join(out, "study_fingerprint.txt")


def _holds_same_run(job: Job, out: str) -> bool:
    """Whether ``out`` holds a run of exactly this job (its fingerprint stamp matches)."""
    stamp = _stamp(out)
    if not os.path.isfile(stamp):
        return False
    with open(stamp) as f:
        return f.read().strip() == job.fingerprint


def _prepare(job: Job, out_root: str, fresh: bool) -> bool:
    """Make the job's directory; True when it holds an earlier run of the same job to resume."""
    out = _out(job, out_root)
    resume = False
    if os.path.isdir(out):
        if _holds_same_run(job, out) and not fresh:
            resume = True
        else:
            aside = f"{out}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(out, aside)
            tqdm.write(f"[{job.name}] earlier run moved aside to {aside}")
    os.makedirs(out, exist_ok=True)
    with open(_stamp(out), "w") as f:
        f.write(job.fingerprint + "\n")
    return resume


class _Running:
    def __init__(self, job: Job, out_root: str, fresh: bool, threads: int, slot: int):
        self.job, self.out, self.slot = job, _out(job, out_root), slot
        resume = _prepare(job, out_root, fresh)
        self.cmd = command(job, out_root, resume)
        self.log_path = os.path.join(self.out, "stdout.txt")
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, env=env
        )
        self.bar = tqdm(desc=f"{job.name:>22}", unit="it", position=slot, leave=True)

    def update(self) -> None:
        self.bar.total = self.bar.total or _max_iter(self.out)
        records = [r for r in _read_metrics(self.out) if "iteration" in r]
        if records:
            self.bar.n = min(records[-1]["iteration"] + 1, self.bar.total or float("inf"))
            self.bar.refresh()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        self.log.close()
        self.bar.close()


def run_jobs(jobs: List[Job], out_root: str, *, parallel: int, fresh: bool) -> None:
    """Run the jobs, ``parallel`` at a time (runs needing the teacher wait for it); fills each
    job's ``results``. A failed run stops the others and exits with its command and log tail."""
    cores = os.cpu_count() or 1
    pending, running, done = list(jobs), [], set()
    try:
        while pending or running:
            for job in list(pending):
                # The teacher, which every distilled run waits for, trains alone on all cores.
                alone = job.method is None
                if len(running) >= parallel or (running and alone):
                    break
                if any(r.job.method is None for r in running):
                    break
                if job.needs_teacher and "teacher" not in done:
                    continue
                pending.remove(job)
                free = min(set(range(parallel)) - {r.slot for r in running})
                threads = cores if alone else max(1, cores // parallel)
                running.append(_Running(job, out_root, fresh, threads, free))
            time.sleep(2)
            for r in list(running):
                r.update()
                if r.proc.poll() is None:
                    continue
                running.remove(r)
                r.stop()
                if r.proc.returncode != 0:
                    tail = open(r.log_path).read().splitlines()[-30:]
                    sys.exit(
                        f"study: run {r.job.name!r} failed (exit {r.proc.returncode}); command:\n"
                        f"  {' '.join(r.cmd)}\nlast lines of {r.log_path}:\n" + "\n".join(tail)
                    )
                r.job.results = final_results(r.out)
                if not r.job.results:
                    sys.exit(f"study: run {r.job.name!r} ended without COCO results in {r.out}")
                done.add(r.job.name)
    finally:  # never leave a training run behind (Ctrl-C, or an error here)
        for r in running:
            r.stop()


def read_finished(jobs: List[Job], out_root: str) -> None:
    """Fill each job's ``results`` from its finished run; exit naming the runs that are not."""
    missing = []
    for job in jobs:
        out = _out(job, out_root)
        job.results = final_results(out) if _holds_same_run(job, out) else {}
        if not job.results:
            missing.append(job.name)
    if missing:
        sys.exit(
            f"study: --report-only, but these runs have not finished (with this config, seed and "
            f"teacher) in {out_root}: {missing}. Run the study without --report-only first."
        )


# ---- aggregation and report -------------------------------------------------------------------
def _mean_std(values: Sequence[float]):
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def aggregate(jobs: Sequence[Job], task: str = "bbox") -> List[dict]:
    """One row per method: AP values per seed, mean, std, gain over the baseline and a verdict.

    The verdict compares the gain with twice its standard error over seeds: "helps", "hurts" or
    "within noise"; with one seed there is no spread to judge by ("one seed").
    """
    by_method: Dict[str, List[Job]] = {}
    for job in jobs:
        if job.method is not None and f"{task}/AP" in job.results:
            by_method.setdefault(job.method.name, []).append(job)
    base = [j.results[f"{task}/AP"] for j in by_method.get("baseline", [])]
    rows = []
    for name, method_jobs in by_method.items():
        aps = [j.results[f"{task}/AP"] for j in method_jobs]
        mean, std = _mean_std(aps)
        row = {
            "method": name,
            "label": METHODS[name].label,
            "config": METHODS[name].config,
            "seeds": [j.seed for j in method_jobs],
            "ap": aps,
            "mean": mean,
            "std": std,
            **{m: statistics.fmean(j.results[f"{task}/{m}"] for j in method_jobs) for m in METRICS},
            "time_min": statistics.fmean(j.results["time_min"] for j in method_jobs),
        }
        if base and name != "baseline":
            b_mean, b_std = _mean_std(base)
            row["gain"] = mean - b_mean
            if len(aps) < 2 or len(base) < 2:
                row["verdict"] = "one seed"
            else:
                se = math.sqrt(std**2 / len(aps) + b_std**2 / len(base))
                row["verdict"] = (
                    "helps"
                    if row["gain"] > 2 * se
                    else "hurts" if row["gain"] < -2 * se else "within noise"
                )
        rows.append(row)
    return rows


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def table(rows: Sequence[dict], task: str = "bbox") -> str:
    """The results table (GitHub markdown)."""
    name = {"bbox": "box", "segm": "mask"}[task]
    headers = [
        "method",
        f"{name} AP mean",
        "std",
        "gain",
        "verdict",
        "AP50",
        "AP75",
        "per seed",
        "train min",
    ]
    body = [
        [
            r["label"],
            _fmt(r["mean"]),
            _fmt(r["std"]),
            f"{round(r['gain'], 1) or 0.0:+.1f}" if "gain" in r else "",
            r.get("verdict", ""),
            _fmt(r["AP50"]),
            _fmt(r["AP75"]),
            " / ".join(_fmt(a) for a in r["ap"]),
            _fmt(r["time_min"]),
        ]
        for r in rows
    ]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def plot(
    rows: Sequence[dict],
    teacher_ap: Optional[float],
    jobs: Sequence[Job],
    out_root: str,
    report: str,
    prefix: str,
) -> List[str]:
    """Write the bar chart of AP per method and the loss curves; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 2), 4))
    labels = [r["label"] for r in rows]
    ax.bar(
        range(len(rows)),
        [r["mean"] for r in rows],
        yerr=[0 if math.isnan(r["std"]) else r["std"] for r in rows],
        capsize=4,
        color=["0.6" if r["method"] == "baseline" else "tab:blue" for r in rows],
    )
    if teacher_ap is not None:
        ax.axhline(teacher_ap, color="tab:red", linestyle="--", label=f"teacher ({teacher_ap:.1f})")
        ax.legend(loc="lower right")
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
    ax.set_ylabel("box AP (mean ± std over seeds)")
    ax.set_title("d2dist_shapes_val")
    fig.tight_layout()
    paths.append(os.path.join(report, f"{prefix}_ap.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    first_seed = min(j.seed for j in jobs if j.seed is not None)  # curves of one seed
    for job in jobs:
        if job.method is None or job.seed != first_seed:
            continue
        curves = loss_curves(_out(job, out_root))
        for ax, key in zip(axes, ("detection", "distill")):
            if curves[key]:
                colour = f"C{list(METHODS).index(job.method.name) % 10}"  # same in both panels
                ax.plot(*zip(*curves[key]), label=job.method.label, color=colour)
    axes[0].set_title("student's own losses (sum)")
    axes[1].set_title("distillation losses (weighted sum)")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(report, f"{prefix}_loss_curves.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _machine() -> str:
    import platform

    from d2dist.engine.benchmark import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_report(
    jobs: Sequence[Job],
    out_root: str,
    report: str,
    *,
    prefix: str,
    invocation: str,
    wall_min: Optional[float],
    parallel: int,
) -> str:
    """Write ``<report>/<prefix>.md`` and its charts; returns the markdown path.

    ``wall_min`` is the study's wall clock, None when the report is written from finished runs.
    """
    os.makedirs(report, exist_ok=True)
    teacher = next((j for j in jobs if j.method is None), None)
    teacher_ap = teacher.results.get("bbox/AP") if teacher else None
    rows = aggregate(jobs, "bbox")
    seeds = sorted({j.seed for j in jobs if j.seed is not None})
    pngs = plot(rows, teacher_ap, jobs, out_root, report, prefix)
    student = next(j for j in jobs if j.method is not None)
    per_run = ("SEED", "MODEL.DISTILL.TEACHER.WEIGHTS")  # the overrides shared by all students:
    shared = [x for k, v in zip(student.opts[::2], student.opts[1::2]) if k not in per_run
              for x in (k, v)]  # fmt: skip
    lines = [
        f"# d2dist study on the built-in dataset ({prefix})",
        "",
        f"Runs of `{invocation}`"
        + (" (this report rewritten from them by `--report-only`)" if wall_min is None else "")
        + f", report of {time.strftime('%Y-%m-%d')}: "
        f"{len(jobs)} runs on {_machine()}, {parallel} run(s) side by side; "
        + (f"{_fmt(wall_min)} min of wall clock, " if wall_min is not None else "")
        + f"{_fmt(sum(j.results['time_min'] for j in jobs))} min of training time summed over the "
        f"runs. Box AP on `d2dist_shapes_val` (COCOEvaluator), seeds {seeds}.",
        "",
    ]
    if teacher is not None:
        lines += [
            f"Teacher: `{teacher.config}`, box AP **{_fmt(teacher_ap)}** "
            f"(trained once, {_fmt(teacher.results['time_min'])} min; "
            f"{schedule(_out(teacher, out_root))}).",
            "",
        ]
    lines += [
        f"Students: ResNet-18 FPN, the schedule of `{METHODS['baseline'].config}`"
        + (f" with `{' '.join(shared)}`" if shared else "")
        + f": {schedule(_out(student, out_root))}.",
        "The gain is over the baseline's mean; the verdict compares it with twice its standard "
        'error over seeds ("within noise": this study cannot tell it from no gain).',
        "",
        table(rows, "bbox"),
        "",
    ]
    if any("segm/AP" in j.results for j in jobs):
        lines += [table(aggregate(jobs, "segm"), "segm"), ""]
    lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs] + [""]
    lines += ["## Commands", "", "Each run is one `tools/train_net.py` run:", "", "```"]
    lines += [
        "python "
        + " ".join(
            os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in command(j, out_root)[1:]
        )
        for j in jobs
    ]
    lines += ["```", ""]
    path = os.path.join(report, f"{prefix}.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main(argv=None, *, defaults: Optional[dict] = None) -> List[Job]:
    defaults = defaults or {}
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=list(defaults.get("methods", METHODS)))
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
        help="where the runs go (default output/study, with --quick output/study-quick, so a "
        "smoke check never displaces the study's runs)",
    )
    parser.add_argument(
        "--report",
        default=defaults.get("report", os.path.join(REPO, "docs")),
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
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be at least 1")
    seeds = args.seeds[:1] if args.quick else args.seeds
    args.output_dir = args.output_dir or default_output_dir(args.quick)
    opts = list(args.opts) + (["MODEL.DEVICE", args.device] if args.device else [])
    prefix = defaults.get("prefix", "results_quick" if args.quick else "results")

    # Generate the dataset here, where its progress bar is visible (runs log to files). Importing
    # Detectron2 prints library deprecation warnings that say nothing about the study: hide them.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    from d2dist.data import ensure_generated

    for name in _dataset_names(opts):
        ensure_generated(name)

    jobs = plan(args.methods, seeds, args.output_dir, args.quick, opts)
    start = time.time()
    if args.report_only:
        read_finished(jobs, args.output_dir)
        wall = None  # not a timed run
    else:
        run_jobs(jobs, args.output_dir, parallel=args.jobs, fresh=args.fresh)
        wall = (time.time() - start) / 60
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    invocation = defaults.get("invocation") or "python tools/study.py " + " ".join(given)
    path = write_report(
        jobs,
        args.output_dir,
        args.report,
        prefix=prefix,
        invocation=invocation.strip(),
        wall_min=wall,
        parallel=args.jobs,
    )
    print()
    teacher = next((j for j in jobs if j.method is None), None)
    if teacher is not None:
        print(f"teacher box AP {_fmt(teacher.results['bbox/AP'])}")
    print(table(aggregate(jobs, "bbox"), "bbox"))
    print(f"\nReport and charts: {path}\nRuns, logs and checkpoints: {args.output_dir}")
    return jobs


def _dataset_names(opts: Sequence[str]) -> List[str]:
    """The built-in datasets the runs use (generated up front, with a visible progress bar)."""
    pairs = dict(zip(opts[::2], opts[1::2]))
    train = pairs.get("DATASETS.TRAIN", "d2dist_shapes_train")
    test = pairs.get("DATASETS.TEST", "d2dist_shapes_val")
    return re.findall(r"d2dist_shapes\w*", f"{train} {test}")


if __name__ == "__main__":
    main()

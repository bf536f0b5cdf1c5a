"""The study's report: per task, AP per method (mean and spread over seeds; with one seed, the AP
of that run), the gain over the baseline with a verdict against the seed noise, charts, pictures of
predictions and next steps (the demo), and the exact commands."""

import math
import os
import platform
import statistics
import time
from typing import Dict, List, Optional, Sequence

from tabulate import tabulate

from ..engine.benchmark import cpu_model
from .pictures import SCORE_THRESHOLD
from .planning import Job, run_dir, shell_command
from .runs import config_value, loss_curves, schedule
from .tasks import TASKS

__all__ = ["METRICS", "aggregate", "table", "write_report"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _mean_std(values: Sequence[float]):
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def aggregate(jobs: Sequence[Job], task: str, metric_task: str = "bbox") -> List[dict]:
    """One row per method of ``task``: AP per seed, mean, std, gain over the baseline, verdict.

    The verdict compares the gain with twice its standard error over seeds: "helps", "hurts" or
    "within noise"; with one seed there is no spread to judge by ("one seed").
    """
    key = f"{metric_task}/AP"
    by_method: Dict[str, List[Job]] = {}
    for job in jobs:
        if job.task == task and job.method is not None and key in job.results:
            by_method.setdefault(job.method.name, []).append(job)
    base = [j.results[key] for j in by_method.get("baseline", [])]
    rows = []
    for name, method_jobs in by_method.items():
        aps = [j.results[key] for j in method_jobs]
        mean, std = _mean_std(aps)
        method = method_jobs[0].method
        row = {
            "method": name,
            "label": method.label,
            "config": method.config,
            "seeds": [j.seed for j in method_jobs],
            "ap": aps,
            "mean": mean,
            "std": std,
            **{
                m: statistics.fmean(j.results[f"{metric_task}/{m}"] for j in method_jobs)
                for m in METRICS
            },
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


def _fmt(x, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _one_seed(rows: Sequence[dict]) -> bool:
    return all(len(r["ap"]) < 2 for r in rows)


def table(rows: Sequence[dict], metric_task: str = "bbox") -> str:
    """The results table (GitHub markdown). Over several seeds: the mean, the spread, the gain
    with its verdict and the AP of each seed; with one seed: the AP of that run and its gain."""
    name = {"bbox": "box", "segm": "mask"}[metric_task]

    def gain(r):
        return f"{round(r['gain'], 1) or 0.0:+.1f}" if "gain" in r else ""

    if _one_seed(rows):
        headers = ["method", f"{name} AP", "gain", "AP50", "AP75", "train min"]
        body = [[r["label"], _fmt(r["mean"]), gain(r), _fmt(r["AP50"]), _fmt(r["AP75"]),
                 _fmt(r["time_min"])] for r in rows]  # fmt: skip
        return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)
    headers = ["method", f"{name} AP mean", "std", "gain", "verdict", "AP50", "AP75",
               "per seed", "train min"]  # fmt: skip
    body = [
        [
            r["label"],
            _fmt(r["mean"]),
            _fmt(r["std"]),
            gain(r),
            r.get("verdict", ""),
            _fmt(r["AP50"]),
            _fmt(r["AP75"]),
            " / ".join(_fmt(a) for a in r["ap"]),
            _fmt(r["time_min"]),
        ]
        for r in rows
    ]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def _datasets(jobs: Sequence[Job], out_root: str) -> str:
    """The test datasets the runs were evaluated on, read from their own config.yaml files."""
    names = set()
    for job in jobs:
        test = config_value(run_dir(job, out_root), "DATASETS", "TEST")
        names.update(test or [])
    return ", ".join(f"`{n}`" for n in sorted(names)) or "unknown (no readable config.yaml)"


def plot(rows, teacher_ap, jobs, out_root: str, report: str, stem: str, title: str) -> List[str]:
    """The bar chart of AP per method (legend outside the bars) and the loss curves of one seed
    (the student's own losses on one axis, each method's distillation losses on an axis of its
    own: their scales differ by orders of magnitude); returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows) + 3), 4.2))
    colors = ["0.6" if r["method"] == "baseline" else "tab:blue" for r in rows]
    if _one_seed(rows):  # one run per method: its AP, no spread to draw
        seeds = sorted({s for r in rows for s in r["seeds"]})
        label = f"students (seed {', '.join(str(s) for s in seeds)})"
        bars = ax.bar(range(len(rows)), [r["mean"] for r in rows], color=colors, label=label)
    else:
        bars = ax.bar(
            range(len(rows)),
            [r["mean"] for r in rows],
            yerr=[0 if math.isnan(r["std"]) else r["std"] for r in rows],
            capsize=4,
            color=colors,
            label="students (mean ± std over seeds)",
        )
    ax.bar_label(bars, labels=[_fmt(r["mean"]) for r in rows], fontsize=8)
    if teacher_ap is not None:
        ax.axhline(teacher_ap, color="tab:red", linestyle="--", label=f"teacher ({teacher_ap:.1f})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the plot
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("box AP")
    ax.set_title(title)
    fig.tight_layout()
    paths.append(os.path.join(report, f"{stem}_ap.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    seeds = [j.seed for j in jobs if j.seed is not None]
    if not seeds:
        return paths
    seed = min(seeds)
    shown = [j for j in jobs if j.method is not None and j.seed == seed]
    distilled = [j for j in shown if j.method.distill]
    cols = 4
    rows_n = 1 + math.ceil(len(distilled) / cols)
    fig = plt.figure(figsize=(4 * cols, 3 * rows_n))
    grid = fig.add_gridspec(rows_n, cols)
    own = fig.add_subplot(grid[0, :])
    for i, job in enumerate(shown):
        curves = loss_curves(run_dir(job, out_root))
        if curves["detection"]:
            own.plot(*zip(*curves["detection"]), label=job.method.label, color=f"C{i % 10}")
    own.set_title(f"student's own losses (sum), seed {seed}")
    own.set_xlabel("iteration")
    if own.lines:
        own.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for k, job in enumerate(distilled):
        ax = fig.add_subplot(grid[1 + k // cols, k % cols])
        curve = loss_curves(run_dir(job, out_root))["distill"]
        if curve:
            ax.plot(*zip(*curve), color=f"C{shown.index(job) % 10}")
        ax.set_title(f"{job.method.label}: distillation (seed {seed})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    paths.append(os.path.join(report, f"{stem}_loss_curves.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _seeds_sentence(seeds: Sequence[int]) -> str:
    if len(seeds) == 1:
        return (
            f"One seed ({seeds[0]}): one run per method, so a gain here (over the baseline of the "
            "same seed) cannot be told from the run-to-run noise; the full study (`make study`, "
            "docs/results.md) repeats every run over three seeds and judges each gain against it."
        )
    return (
        f"Seeds {list(seeds)}. The gain is over the baseline's mean; the verdict compares it with "
        'twice its standard error over seeds ("within noise": this study cannot tell it from no '
        "gain)."
    )


def write_report(
    jobs: Sequence[Job],
    out_root: str,
    report: str,
    *,
    prefix: str,
    invocation: str,
    wall_min: Optional[float],
    parallel: int,
    threads: str = "",
    pictures: Sequence[str] = (),
    next_steps: Sequence[str] = (),
) -> str:
    """Write ``<report>/<prefix>.md`` and its charts (a section per task); returns the path.

    ``wall_min`` is the study's wall clock, None when the report is written from finished runs;
    ``threads`` says how many threads each run had; ``pictures`` are PNGs (in ``report``) of the
    runs' predictions shown after the results, ``next_steps`` markdown lines that close it.
    """
    os.makedirs(report, exist_ok=True)
    seeds = sorted({j.seed for j in jobs if j.seed is not None})
    tasks = list(dict.fromkeys(j.task for j in jobs))
    lines = [
        f"# d2dist study on the built-in dataset ({prefix})",
        "",
        f"Runs of `{invocation}`"
        + (" (this report rewritten from them by `--report-only`)" if wall_min is None else "")
        + f", report of {time.strftime('%Y-%m-%d')}: "
        f"{len(jobs)} runs on {_machine()}, {parallel} run(s) side by side"
        + (f" ({threads})" if threads else "")
        + "; "
        + (f"{_fmt(wall_min)} min of wall clock, " if wall_min is not None else "")
        + f"{_fmt(sum(j.results['time_min'] for j in jobs))} min of training time summed over the "
        f"runs. Box AP on {_datasets(jobs, out_root)} (COCOEvaluator). " + _seeds_sentence(seeds),
        "",
    ]
    for name in tasks:
        task_jobs = [j for j in jobs if j.task == name]
        teacher = next((j for j in task_jobs if j.method is None), None)
        teacher_ap = teacher.results.get("bbox/AP") if teacher else None
        rows = aggregate(task_jobs, name, "bbox")
        students = [j for j in task_jobs if j.method is not None]
        lines += [f"## {TASKS[name].label}", ""]
        if teacher is not None:
            lines += [
                f"Teacher: `{teacher.config}`, box AP **{_fmt(teacher_ap)}** "
                f"(trained once, {_fmt(teacher.results['time_min'])} min; "
                f"{schedule(run_dir(teacher, out_root))}).",
                "",
            ]
        if students:
            base = TASKS[name].by_name["baseline"].config
            lines += [
                f"Students: the schedule of `{base}`: "
                f"{schedule(run_dir(students[0], out_root))}.",
                "",
            ]
        lines += [table(rows, "bbox"), ""]
        if any("segm/AP" in j.results for j in task_jobs):
            lines += [table(aggregate(task_jobs, name, "segm"), "segm"), ""]
        pngs = plot(rows, teacher_ap, task_jobs, out_root, report, f"{prefix}_{name}",
                    TASKS[name].label)  # fmt: skip
        lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs] + [""]
    if pictures:
        lines += ["## Predictions", "",
                  f"Each panel: a model's detections (score >= {SCORE_THRESHOLD}) on a validation "
                  "image, titled with its box AP; the first panel shows the ground truth.",
                  ""]  # fmt: skip
        lines += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pictures] + [""]
    if next_steps:
        lines += ["## Next steps", "", *next_steps, ""]
    lines += ["## Commands", "", "Each run is one `tools/train_net.py` run, from the checkout:",
              "", "```"]  # fmt: skip
    lines += [shell_command(j, out_root) for j in jobs]
    lines += ["```", ""]
    path = os.path.join(report, f"{prefix}.md")
    kept = kept_section(path)
    with open(path, "w") as f:
        f.write("\n".join(lines) + (f"\n{kept}\n" if kept else ""))
    return path


# Where another study's section (the patience study's) stands in a report: kept when it is rewritten.
SECTION_START, SECTION_END = "<!-- patience-study:start -->", "<!-- patience-study:end -->"


def kept_section(path: str) -> str:
    """The section between :data:`SECTION_START` and :data:`SECTION_END` in the report at
    ``path`` (with its markers), or ""."""
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        text = f.read()
    if SECTION_START not in text or SECTION_END not in text:
        return ""
    return text[text.index(SECTION_START) : text.index(SECTION_END) + len(SECTION_END)]

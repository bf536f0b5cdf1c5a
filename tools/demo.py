#!/usr/bin/env python
"""d2dist's main job on the built-in dataset: train a teacher, a student and distilled students.

    python tools/demo.py [--output-dir output/demo] [--fresh] [--device cpu|cuda]

Each run is an ordinary ``tools/train_net.py`` training run (logs in ``<output-dir>/<run>/``),
evaluated with Detectron2's COCOEvaluator. A run whose directory already holds a run of the same
config is resumed (a finished one is only re-evaluated); ``--fresh`` retrains everything, moving
earlier run directories aside rather than deleting them.
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional

from tabulate import tabulate
from tqdm import tqdm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")


@dataclass(frozen=True)
class Run:
    name: str  # directory under --output-dir
    role: str  # shown in the table
    config: str  # relative to the repository
    opts: tuple = ()  # "{output_dir}" is replaced by --output-dir


# Distilled students learn from the teacher trained by the first run.
_TEACHER = ("MODEL.DISTILL.TEACHER.WEIGHTS", "{output_dir}/teacher/model_final.pth")
_CFG = "configs/Shapes-Detection/{}_faster_rcnn_R18_from_R50_FPN_1x.yaml"
RUNS = [
    Run("teacher", "teacher", "configs/Shapes-Detection/faster_rcnn_R50_FPN_2x.yaml"),
    Run("student", "student baseline", "configs/Shapes-Detection/faster_rcnn_R18_FPN_1x.yaml"),
    Run("mimic", "student + MIMIC", _CFG.format("mimic"), _TEACHER),
    Run("reviewkd", "student + ReviewKD", _CFG.format("reviewkd"), _TEACHER),
    Run("dist", "student + DIST (RoI)", _CFG.format("dist"), _TEACHER),
    Run("distplus", "student + DIST+ (reconstr.)", _CFG.format("distplus"), _TEACHER),
]
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _config_text(path: str) -> str:
    """The config file and its _BASE_ chain, as text (what the fingerprint covers)."""
    import yaml

    text = open(path).read()
    base = (yaml.safe_load(text) or {}).get("_BASE_")
    if base:
        text = _config_text(os.path.join(os.path.dirname(path), base)) + text
    return text


def _fingerprint(run: Run, opts: List[str]) -> str:
    import d2dist

    payload = [d2dist.__version__, _config_text(os.path.join(REPO, run.config)), *opts]
    return hashlib.sha256("\0".join(payload).encode()).hexdigest()[:16]


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


def train(run: Run, out_root: str, opts: List[str], fresh: bool) -> Dict[str, float]:
    out = os.path.join(out_root, run.name)
    run_opts = [o.format(output_dir=out_root) for o in run.opts]
    stamp_path = os.path.join(out, "demo_fingerprint.txt")
    fingerprint = _fingerprint(run, run_opts + opts)
    resume = False
    if os.path.isdir(out):
        same = os.path.isfile(stamp_path) and open(stamp_path).read().strip() == fingerprint
        if same and not fresh:
            resume = True
        else:
            aside = f"{out}.old-{time.strftime('%Y%m%d-%H%M%S')}"
            os.rename(out, aside)
            tqdm.write(f"[{run.name}] earlier run moved aside to {aside}")
    os.makedirs(out, exist_ok=True)
    with open(stamp_path, "w") as f:
        f.write(fingerprint + "\n")

    cmd = [sys.executable, TRAIN_NET, "--config-file", os.path.join(REPO, run.config)]
    cmd += ["--resume"] if resume else []
    cmd += [*run_opts, *opts, "OUTPUT_DIR", out]
    log_path = os.path.join(out, "stdout.txt")
    with open(log_path, "a") as log, tqdm(desc=f"{run.name:>8}", unit="it", leave=True) as bar:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            while proc.poll() is None:
                time.sleep(2)
                bar.total = bar.total or _max_iter(out)
                records = [r for r in _read_metrics(out) if "iteration" in r]
                if records:
                    bar.n = min(records[-1]["iteration"] + 1, bar.total or float("inf"))
                    bar.refresh()
        finally:  # never leave a training run behind (Ctrl-C, or an error here)
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    if proc.returncode != 0:
        tail = open(log_path).read().splitlines()[-30:]
        sys.exit(
            f"demo: run {run.name!r} failed (exit {proc.returncode}); command:\n  "
            + " ".join(cmd)
            + f"\nlast lines of {log_path}:\n"
            + "\n".join(tail)
        )
    results = [r for r in _read_metrics(out) if "bbox/AP" in r]
    if not results:
        sys.exit(f"demo: run {run.name!r} finished without COCO results in {out}/metrics.json")
    final = results[-1]
    return {
        "time_min": _training_minutes(out),
        **{
            f"{task}/{m}": final[f"{task}/{m}"]
            for task in ("bbox", "segm")
            for m in METRICS
            if f"{task}/{m}" in final
        },
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", "demo"))
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished")
    parser.add_argument("--device", default=None, help="MODEL.DEVICE for every run")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = parser.parse_args(argv)
    opts = list(args.opts) + (["MODEL.DEVICE", args.device] if args.device else [])

    # Generate the dataset here, where its progress bar is visible (runs log to files). Importing
    # Detectron2 prints library deprecation warnings that say nothing about the demo: hide them.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    from d2dist.data import ensure_generated

    for name in ("d2dist_shapes_train", "d2dist_shapes_val"):
        ensure_generated(name)

    rows = []
    for run in RUNS:
        res = train(run, args.output_dir, opts, args.fresh)
        tasks = [t for t in ("bbox", "segm") if f"{t}/AP" in res]
        for task in tasks:
            rows.append(
                [run.role, run.config.split("/")[-1], task]
                + [f"{res[f'{task}/{m}']:.1f}" for m in METRICS]
                + [f"{res['time_min']:.1f}"]
            )
    print()
    print(
        tabulate(rows, headers=["run", "config", "task", *METRICS, "train min"], tablefmt="github")
    )
    print(f"\nRuns, logs and checkpoints: {args.output_dir}")


if __name__ == "__main__":
    main()

"""Reading a training run's files, also while it writes them: metrics, schedule, results."""

import json
import os
import re
from typing import Dict, List, Optional

import yaml

__all__ = [
    "config_value",
    "final_results",
    "loss_curves",
    "max_iter",
    "read_metrics",
    "schedule",
    "training_minutes",
]


def read_metrics(out: str) -> List[dict]:
    """The records of ``out/metrics.json``, up to a line being written right now."""
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


def config_value(out: str, *keys: str):
    """A value of the run's ``config.yaml`` (e.g. ``"SOLVER", "MAX_ITER"``); None until the file
    is fully written or when it has no such key."""
    try:
        with open(os.path.join(out, "config.yaml")) as f:
            node = yaml.safe_load(f)
        for key in keys:
            node = node[key]
        return node
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return None  # not written yet, or being written right now


def max_iter(out: str) -> Optional[int]:
    """The run's SOLVER.MAX_ITER from its config.yaml; None until the file is fully written."""
    value = config_value(out, "SOLVER", "MAX_ITER")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def training_minutes(out: str) -> float:
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
    solver = config_value(out, "SOLVER")
    try:
        return (
            f"{solver['MAX_ITER']} iterations of {solver['IMS_PER_BATCH']} images, SGD lr "
            f"{solver['BASE_LR']} (x0.1 at {', '.join(str(x) for x in solver['STEPS'])})"
        )
    except (TypeError, KeyError):
        return "unknown (no readable config.yaml)"


def final_results(out: str) -> Dict[str, float]:
    """The last COCO evaluation of a run (``bbox/AP``..., ``segm/AP``...) and its training time."""
    evals = [r for r in read_metrics(out) if "bbox/AP" in r]
    if not evals:
        return {}
    return {
        "time_min": training_minutes(out),
        **{k: v for k, v in evals[-1].items() if k.split("/")[0] in ("bbox", "segm")},
    }


def loss_curves(out: str) -> Dict[str, List[tuple]]:
    """(iteration, value) series of the student's own losses (summed) and the distillation
    losses (summed) from a run's metrics.json."""
    detection, distill = [], []
    for r in read_metrics(out):
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

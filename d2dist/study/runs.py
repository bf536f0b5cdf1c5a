"""Reading a training run's files, also while it writes them: metrics, schedule, results; and the
evaluation results the study stores with the files they belong to (``study_results.json``)."""

import json
import os
import re
from typing import Dict, List, Optional

import yaml

from ..checkpoint.record import file_sha256

__all__ = [
    "RESULTS_FILE",
    "config_value",
    "final_results",
    "files_fingerprint",
    "loss_curves",
    "max_iter",
    "read_metrics",
    "run_box_ap",
    "schedule",
    "store_results",
    "stored_results",
    "training_minutes",
]

RESULTS_FILE = "study_results.json"  # in the run directory, next to what it was computed from
FINAL_CHECKPOINT = "model_final.pth"


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


def files_fingerprint(out: str) -> Optional[dict]:
    """What a finished run's evaluation belongs to: the text of its ``config.yaml`` and its final
    checkpoint ``model_final.pth`` (size, modification time and SHA-256 of its bytes); None while
    either file is missing (the run has not finished)."""
    config = os.path.join(out, "config.yaml")
    checkpoint = os.path.join(out, FINAL_CHECKPOINT)
    if not (os.path.isfile(config) and os.path.isfile(checkpoint)):
        return None
    stat = os.stat(checkpoint)
    return {
        "config_sha256": file_sha256(config),
        "checkpoint": {
            "file": FINAL_CHECKPOINT,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": file_sha256(checkpoint),
        },
    }


def _same_files(stored: dict, current: Optional[dict]) -> bool:
    """The same config text and the same checkpoint bytes (a copy with another modification time
    holds the same model, so the time is recorded but not compared)."""
    if current is None:
        return False
    before, now = stored.get("checkpoint") or {}, current["checkpoint"]
    return (
        stored.get("config_sha256") == current["config_sha256"]
        and before.get("size") == now["size"]
        and before.get("sha256") == now["sha256"]
    )


def store_results(out: str, run: str, results: Dict[str, float]) -> str:
    """Store a finished run's evaluation ``results`` in ``out/study_results.json`` with the
    fingerprint of the study's run (``run``) and of the files they were computed from
    (:func:`files_fingerprint`); returns the path. Written atomically (a reader never sees half)."""
    path = os.path.join(out, RESULTS_FILE)
    record = {"run": run, **(files_fingerprint(out) or {}), "results": results}
    with open(path + ".partial", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".partial", path)
    return path


def stored_results(out: str, run: Optional[str] = None) -> Optional[Dict[str, float]]:
    """The results :func:`store_results` stored for ``out``, if they still belong to it: the same
    run of the study (``run``; None: any) and an unchanged ``config.yaml`` and final checkpoint.
    None otherwise (nothing stored, or a changed config or checkpoint, to be evaluated again)."""
    try:
        with open(os.path.join(out, RESULTS_FILE)) as f:
            stored = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or not isinstance(stored.get("results"), dict):
        return None
    if run is not None and stored.get("run") != run:
        return None
    return stored["results"] if _same_files(stored, files_fingerprint(out)) else None


def run_box_ap(out: str) -> Optional[float]:
    """A run's box AP: its stored results when they belong to its current files, else its last
    COCO evaluation in metrics.json; None when it has neither."""
    results = stored_results(out) or final_results(out)
    return results.get("bbox/AP")

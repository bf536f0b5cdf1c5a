#!/usr/bin/env python
"""The one GPU check (``bash tools/gpu_check.sh OUT``): the CUDA tests, the step cost of five
methods at COCO scale, a 300-iteration AMP run of the demo pair, and a markdown summary ready for
``docs/benchmarks.md``, written as at most eight plain files directly under ``OUT``.

Sized for one H200 within eight minutes, its own install included: every part is given the time
left of ``--budget-s``; a part that would start with too little time left is not run and the
summary says so by name (nothing is dropped silently).

Where CUDA is absent it runs its CPU-safe parts, so that it cannot rot unnoticed (a test runs it
so, in under two minutes): the CUDA tests (each reported skipped, with the reason), one benchmark
through ``tools/benchmark.py --json`` at a reduced size, and the summary. The AMP run needs a GPU
(Detectron2's AMP trainer is CUDA-only) and is reported as not run.

Goals it measures on the GPU: ``overhead_ratio <= 1.05`` (what d2dist adds above the student
step, the teacher forward and the method's own modules and losses) and a bfloat16 teacher at
least 1.5x faster than a float32 one (``teacher_forward``).

    python tools/gpu_check.py OUT [--cpu] [--budget-s SECONDS] [--work DIR]

is what ``tools/gpu_check.sh`` runs once Detectron2 is importable (it installs the wheels of
``.whl/`` first where it is not); run from the checkout, like the other tools.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from PIL import Image
from tabulate import tabulate

from d2dist.engine.benchmark import machine_description
from d2dist.file_io import CHECKOUT

# (name, config): the methods timed at COCO scale, with random weights (timing only).
BENCHMARKS = [
    ("ReviewKD R18<-R101", "configs/COCO-Detection/reviewkd_faster_rcnn_R18_from_R101_FPN_1x.yaml"),
    ("DIST RoI R18<-R101", "configs/COCO-Detection/dist_faster_rcnn_R18_from_R101_FPN_1x.yaml"),
    ("DIST+ (reconstruction) R18<-R101",
     "configs/COCO-Detection/distplus_faster_rcnn_R18_from_R101_FPN_1x.yaml"),
    ("CrossKD RetinaNet R50<-R101",
     "configs/COCO-Detection/crosskd_retinanet_R50_from_R101_FPN_1x.yaml"),
    ("MGD R50<-R101", "configs/COCO-Detection/mgd_faster_rcnn_R50_from_R101_FPN_1x.yaml"),
]  # fmt: skip
AUTOCAST = ["MODEL.DISTILL.TEACHER.AUTOCAST", "bfloat16"]
CHANNELS_LAST = ["MODEL.DISTILL.TEACHER.CHANNELS_LAST", "True"]
# The teacher's precision and memory format: every method in the first two, the first method in
# all four (teacher_forward hardly depends on the method).
VARIANTS = {
    "float32": [],
    "bfloat16": AUTOCAST,
    "channels_last": CHANNELS_LAST,
    "bfloat16 + channels_last": AUTOCAST + CHANNELS_LAST,
}
GPU_SCALE = {"size": (1333, 800), "batch": 8, "images": 24, "iters": 8, "warmup": 3}
CPU_SCALE = {"size": (256, 160), "batch": 2, "images": 4, "iters": 1, "warmup": 0}
AMP_ITERS = 300
# Seconds a part needs at least to be started (it is stopped at the time left in any case).
NEEDS = {"cuda_tests": 60, "benchmark": 25, "amp_run": 90}


def synthetic_coco(root: str, n: int, size=(1333, 800), seed: int = 0) -> str:
    """COCO's train2017 layout under ``root`` (``coco/train2017/*.jpg`` and
    ``coco/annotations/instances_train2017.json``, COCO's 80 categories) with ``n`` random images
    of ``size`` (width, height) and a few random boxes each: the configs' own ``coco_2017_train``
    then reads it with ``DETECTRON2_DATASETS=root``. For timing at COCO scale with no COCO at hand.
    """
    categories = [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]]
    rng = np.random.default_rng(seed)
    images_dir = os.path.join(root, "coco", "train2017")
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "coco", "annotations"), exist_ok=True)
    images, annotations = [], []
    w, h = size
    for i in range(n):
        name = f"{i:012d}.jpg"
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(images_dir, name), quality=80)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        for _ in range(int(rng.integers(3, 12))):
            bw, bh = int(rng.integers(16, w // 3)), int(rng.integers(16, h // 3))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            category = categories[int(rng.integers(len(categories)))]["id"]
            annotations.append({"id": len(annotations) + 1, "image_id": i, "iscrowd": 0,
                                "category_id": category, "bbox": [x, y, bw, bh],
                                "area": bw * bh})  # fmt: skip
    path = os.path.join(root, "coco", "annotations", "instances_train2017.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


class Check:
    """The parts' shared state: the output folder, the time budget and the log."""

    def __init__(self, out: str, work: str, budget_s: float, gpu: bool):
        self.out, self.work, self.gpu = out, work, gpu
        self.deadline = time.monotonic() + budget_s
        self.not_run: List[str] = []
        self.failed: List[str] = []
        self.log_path = os.path.join(out, "gpu_check.log")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def may_start(self, part: str, what: str) -> bool:
        if self.left() >= NEEDS[part]:
            return True
        self.not_run.append(f"{what} (not run: {self.left():.0f} s of the budget left)")
        self.log(f"not run: {what}: {self.left():.0f} s left")
        return False

    def log(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        print(line, flush=True)
        with open(self.log_path, "a") as f:
            f.write(line + "\n")

    def run(self, argv: List[str], env: Optional[Dict[str, str]] = None):
        """Runs ``argv`` from the checkout, stopped at the time left; its output goes to the log."""
        self.log("$ " + " ".join(argv))
        try:
            done = subprocess.run(
                argv, cwd=CHECKOUT, env={**os.environ, **(env or {})}, capture_output=True,
                text=True, timeout=max(self.left(), 1.0),
            )  # fmt: skip
        except subprocess.TimeoutExpired as e:
            self.log(f"stopped at the end of the time budget after {e.timeout:.0f} s")
            return None
        with open(self.log_path, "a") as f:
            f.write(done.stderr[-4000:] + "\n")
        return done


def cuda_tests(check: Check) -> str:
    if not check.may_start("cuda_tests", "the CUDA tests"):
        return "not run"
    report = os.path.join(check.out, "cuda_tests.xml")
    done = check.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                      "tests/cuda", f"--junitxml={report}"])  # fmt: skip
    if done is None:
        return "stopped at the end of the time budget"
    with open(os.path.join(check.out, "cuda_tests.txt"), "w") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode != 0:
        check.failed.append("the CUDA tests")
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else f"pytest exited with status {done.returncode}"


def benchmarks(check: Check, cases) -> List[dict]:
    """``tools/benchmark.py --json --random-weights`` for each (method, config, variant), on the
    synthetic COCO under the work folder; appends each result to ``benchmarks.jsonl``."""
    scale = GPU_SCALE if check.gpu else CPU_SCALE
    root = os.path.join(check.work, "datasets")
    if not os.path.exists(os.path.join(root, "coco", "annotations")):
        synthetic_coco(root, scale["images"], scale["size"])
    w, h = scale["size"]
    opts = ["INPUT.MIN_SIZE_TRAIN", f"({h},)", "INPUT.MAX_SIZE_TRAIN", str(w),
            "SOLVER.IMS_PER_BATCH", str(scale["batch"]), "DATASETS.TEST", "()",
            "DATALOADER.NUM_WORKERS", "4" if check.gpu else "0"]  # fmt: skip
    rows = []
    for name, config, variant in cases:
        if not check.may_start("benchmark", f"benchmark {name}, {variant} teacher"):
            continue
        argv = [sys.executable, "tools/benchmark.py", "--config-file", config, "--json",
                "--random-weights", "--iters", str(scale["iters"]), "--warmup",
                str(scale["warmup"]), "--device", "cuda" if check.gpu else "cpu",
                *opts, *VARIANTS[variant]]  # fmt: skip
        start = time.monotonic()
        done = check.run(argv, env={"DETECTRON2_DATASETS": root})
        row = {"method": name, "config": config, "teacher": variant, **scale,
               "wall_s": round(time.monotonic() - start, 1)}  # fmt: skip
        if done is None or done.returncode != 0:
            why = "stopped at the end of the time budget" if done is None else done.stderr[-1500:]
            row["error"] = why
            check.failed.append(f"benchmark {name} ({variant})")
            check.log(f"benchmark {name} ({variant}) failed: {why}")
        else:
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        rows.append(row)
        with open(os.path.join(check.out, "benchmarks.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
    return rows


def amp_run(check: Check) -> Dict[str, object]:
    """The demo pair with ``SOLVER.AMP.ENABLED``, ``AMP_ITERS`` iterations each, through
    ``tools/train_net.py``: the Shapes teacher, then the ReviewKD student distilled from it; their
    box AP from the final evaluation."""
    shapes = "configs/Shapes-Detection"
    common = ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True",
              "SOLVER.MAX_ITER", str(AMP_ITERS), "SOLVER.CHECKPOINT_PERIOD", str(AMP_ITERS),
              "SOLVER.STEPS", f"({AMP_ITERS * 4 // 5},{AMP_ITERS * 19 // 20})",
              "SOLVER.WARMUP_ITERS", str(AMP_ITERS // 10),
              "DATALOADER.NUM_WORKERS", "4"]  # fmt: skip
    teacher = os.path.join(check.work, "amp_teacher")
    runs = [
        ("teacher", f"{shapes}/faster_rcnn_R50_FPN_3x.yaml", [], teacher),
        ("student", f"{shapes}/reviewkd_faster_rcnn_R18_from_R50_FPN_1x.yaml",
         ["MODEL.DISTILL.TEACHER.WEIGHTS", os.path.join(teacher, "model_final.pth")],
         os.path.join(check.work, "amp_student")),
    ]  # fmt: skip
    results: Dict[str, object] = {"iterations": AMP_ITERS}
    for key, config, extra, output in runs:
        if not check.may_start("amp_run", f"the AMP run's {key}"):
            break
        start = time.monotonic()
        done = check.run([sys.executable, "tools/train_net.py", "--config-file", config, *common,
                          *extra, "OUTPUT_DIR", output])  # fmt: skip
        results[f"{key}_wall_s"] = round(time.monotonic() - start, 1)
        if done is None or done.returncode != 0:
            results[f"{key}_error"] = "timed out" if done is None else done.stderr[-1500:]
            check.failed.append(f"the AMP run's {key}")
            break
        with open(os.path.join(output, "metrics.json")) as f:
            evals = [json.loads(line) for line in f if '"bbox/AP"' in line]
        results[f"{key}_box_ap"] = evals[-1]["bbox/AP"] if evals else None
    with open(os.path.join(check.out, "amp_run.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def _goals(rows: List[dict]) -> List[str]:
    goals = []
    ok = [r for r in rows if "error" not in r]
    for method in dict.fromkeys(r["method"] for r in ok):
        by = {r["teacher"]: r for r in ok if r["method"] == method}
        if "float32" in by:
            ratio = by["float32"]["overhead_ratio"]
            verdict = "meets" if ratio <= 1.05 else "misses"
            goals.append(f"{method}: overhead_ratio {ratio:.3f} ({verdict} <= 1.05)")
        if "float32" in by and "bfloat16" in by:
            speed = by["float32"]["teacher_forward_s"] / by["bfloat16"]["teacher_forward_s"]
            verdict = "meets" if speed >= 1.5 else "misses"
            goals.append(f"{method}: bfloat16 teacher {speed:.2f}x float32's speed "
                         f"({verdict} >= 1.5x)")  # fmt: skip
    return goals


def summary(check: Check, machine: str, tests: str, rows: List[dict], amp) -> str:
    mode = "CUDA" if check.gpu else "no CUDA: the CPU-safe parts only, at a reduced size"
    lines = [f"### GPU check, {time.strftime('%Y-%m-%d')}", "",
             f"Machine: {machine}. Command: `bash tools/gpu_check.sh OUT` ({mode}).", "",
             f"CUDA tests (`pytest tests/cuda`): {tests}.", ""]  # fmt: skip
    ok = [r for r in rows if "error" not in r]
    if ok:
        scale = GPU_SCALE if check.gpu else CPU_SCALE
        lines += [
            f"Step cost (`tools/benchmark.py --json --random-weights`, median of {scale['iters']} "
            f"iterations after {scale['warmup']} warm-up, batch {scale['batch']} at "
            f"{scale['size'][0]}x{scale['size'][1]}, timed with {ok[0]['clock']}; seconds, peak "
            "MiB over the phases):", ""]  # fmt: skip
        table = [[r["method"], r["teacher"], f"{r['student_step_s']:.4f}",
                  f"{r['teacher_forward_s']:.4f}", f"{r['method_step_s']:.4f}",
                  f"{r['distill_step_s']:.4f}", f"{r['overhead_ratio']:.3f}",
                  f"{r['distill_over_student']:.2f}",
                  f"{max(r['peak_memory_mib'].values()):.0f}"] for r in ok]  # fmt: skip
        headers = ["method", "teacher", "student step", "teacher fwd", "method", "distill step",
                   "overhead_ratio", "distill/student", "peak MiB"]  # fmt: skip
        lines += [tabulate(table, headers=headers, tablefmt="github"), ""]
        if check.gpu:
            lines += ["Goals:", ""] + [f"- {g}" for g in _goals(rows)] + [""]
        else:
            lines += ["Goals: judged on a GPU only (the figures above only show that the "
                      "benchmark runs).", ""]  # fmt: skip
    if amp:
        text = ", ".join(f"{k} {v}" for k, v in amp.items() if not k.endswith("_error"))
        failed = [k for k in amp if k.endswith("_error")]
        lines += [f"AMP run of the demo pair (`SOLVER.AMP.ENABLED True`): {text}"
                  + (f"; failed: {', '.join(failed)} (see amp_run.json)" if failed else ""),
                  ""]  # fmt: skip
    elif not check.gpu:
        lines += ["AMP run of the demo pair: not run (Detectron2's AMP trainer needs CUDA).", ""]
    if check.failed:
        lines += ["Failed (see gpu_check.log): " + "; ".join(check.failed) + ".", ""]
    if check.not_run:
        lines += ["Not run for lack of time:", ""] + [f"- {x}" for x in check.not_run] + [""]
    text = "\n".join(lines)
    with open(os.path.join(check.out, "summary.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="the folder the results are written to (at most 8 files)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a new temporary)")
    parser.add_argument("--cpu", action="store_true", help="the CPU-safe parts even with CUDA")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="seconds for all parts together (default 420)")  # fmt: skip
    args = parser.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix="d2dist-gpu-check-")
    gpu = torch.cuda.is_available() and not args.cpu
    check = Check(args.out, work, args.budget_s, gpu)
    check.log(f"gpu_check: {'CUDA' if gpu else 'CPU-safe parts'}, work folder {work}")
    tests = cuda_tests(check)
    first = BENCHMARKS[0]
    core = [(n, c, v) for n, c in BENCHMARKS for v in ("float32", "bfloat16")]
    extra = [(first[0], first[1], v) for v in ("channels_last", "bfloat16 + channels_last")]
    if gpu:
        rows = benchmarks(check, core)
        amp = amp_run(check)
        rows += benchmarks(check, extra)
    else:
        rows, amp = benchmarks(check, core[:1]), {}
    machine = machine_description(torch.device("cuda" if gpu else "cpu"))
    print(summary(check, machine, tests, rows, amp))
    if check.failed:
        check.log("failed: " + "; ".join(check.failed))
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""tools/gpu_check.sh in its CPU-safe mode, as it runs where no GPU is lent: so that the one GPU
check cannot rot between the rare runs on a GPU machine."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tools", "gpu_check.sh")


@pytest.mark.slow
def test_the_cpu_safe_parts_run_and_write_their_files(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", SCRIPT, str(out), "--cpu", "--work", str(tmp_path / "work")],
        capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # At most eight plain files, directly under OUT (what the device tool brings back).
    files = sorted(os.listdir(out))
    assert files == ["benchmarks.jsonl", "cuda_tests.txt", "cuda_tests.xml", "gpu_check.log",
                     "summary.md"]  # fmt: skip
    tests = (out / "cuda_tests.txt").read_text()
    assert "SKIPPED" in tests and "CUDA is not available here" in tests
    (row,) = [json.loads(line) for line in (out / "benchmarks.jsonl").read_text().splitlines()]
    assert row["method"] == "ReviewKD R18<-R101" and row["teacher"] == "float32"
    assert row["clock"] == "perf_counter" and row["random_weights"] is True
    assert all(row[f"{p}_s"] > 0 for p in ("student_step", "teacher_forward", "distill_step"))
    summary = (out / "summary.md").read_text()
    assert "| ReviewKD R18<-R101 | float32" in summary
    assert "skipped" in summary and "AMP run of the demo pair: not run" in summary
    assert "Goals: judged on a GPU only" in summary


def test_without_detectron2_or_wheels_it_stops_with_a_clear_error(tmp_path):
    python = tmp_path / "python-without-site-packages"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    wheels = tmp_path / "no-wheels"
    wheels.mkdir()
    done = subprocess.run(
        ["bash", SCRIPT, str(tmp_path / "out")], capture_output=True, text=True,
        env={**os.environ, "PYTHON": str(python), "D2DIST_GPU_WHEELS": str(wheels)},
    )  # fmt: skip
    assert done.returncode == 2
    assert "cannot import Detectron2" in done.stderr
    assert f"bash tools/gpu_wheels.sh {wheels}" in done.stderr


def test_a_missing_output_folder_argument_is_a_usage_error():
    done = subprocess.run(["bash", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 2 and "usage: bash tools/gpu_check.sh OUT" in done.stderr

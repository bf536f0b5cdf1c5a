"""Subnormal floats are flushed to zero in CPU runs (d2dist.engine.subnormals), unless asked not."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

from d2dist.engine import subnormals
from d2dist.engine.subnormals import ENV_VAR, flush_subnormals, log_subnormal_mode
from d2dist.errors import ConfigError

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
STUDENT_CFG = os.path.join(REPO, "configs", "Shapes-Detection", "faster_rcnn_R18_FPN_1x.yaml")
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "",
    "DATASETS.TRAIN", "('d2dist_shapes_tiny_train',)", "DATASETS.TEST", "()",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()",
]  # fmt: skip


def _run(tmp_path, env_value):
    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    if env_value is not None:
        env[ENV_VAR] = env_value
    out = str(tmp_path / "run")
    proc = subprocess.run(
        [sys.executable, os.path.join(TESTS, "_subnormal_worker.py"), "--config-file",
         STUDENT_CFG, *TINY, "OUTPUT_DIR", out],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    log = open(os.path.join(out, "log.txt")).read() if os.path.isfile(f"{out}/log.txt") else ""
    return report, proc.stderr, log


@pytest.mark.slow
def test_a_cpu_training_run_flushes_on_every_thread_and_says_so(tmp_path):
    report, _, log = _run(tmp_path, None)
    assert report == {"status": 0, "flushed": 1.0}
    assert "subnormal floats are flushed to zero" in log
    assert f"set {ENV_VAR}=0 to keep them" in log


@pytest.mark.slow
def test_a_cpu_run_keeps_subnormals_when_asked(tmp_path):
    report, _, log = _run(tmp_path, "0")
    assert report == {"status": 0, "flushed": 0.0}  # IEEE arithmetic: no thread flushes
    assert f"subnormal floats are kept ({ENV_VAR}=0)" in log


def test_a_bad_value_is_an_error_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "maybe")
    with pytest.raises(ConfigError, match=f"{ENV_VAR}='maybe': expected 1 .* or 0"):
        flush_subnormals("cpu")
    with pytest.raises(ConfigError, match=ENV_VAR):  # on a GPU run too: never silently ignored
        flush_subnormals("cuda")
    report, stderr, _ = _run(tmp_path, "maybe")
    assert report["status"] == 2
    assert f"error: {ENV_VAR}='maybe'" in stderr and "Traceback" not in stderr


def test_gpu_runs_are_left_alone(monkeypatch):
    def refuse(_):
        raise AssertionError("set_flush_denormal called for a GPU run")

    monkeypatch.setattr(torch, "set_flush_denormal", refuse)
    assert flush_subnormals("cuda") is None
    assert flush_subnormals(torch.device("cuda", 1)) is None


def test_the_probe_measures_the_mode():
    # conftest flushed before any computation: every thread of this process flushes.
    assert subnormals.subnormals_flushed() == 1.0
    x = torch.full((512, 512), 1e-21)
    assert torch.count_nonzero(x @ x) == 0  # would be ~5e-40 each with IEEE arithmetic


def test_a_partial_or_impossible_flush_is_a_warning_with_the_fix(monkeypatch, caplog):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(subnormals, "subnormals_flushed", lambda: 0.5)
    with caplog.at_level(logging.INFO, logger="d2dist.engine.subnormals"):
        log_subnormal_mode(False)
    assert "not flushed to zero (only some threads flush (50%" in caplog.text
    assert "call it before any PyTorch computation" in caplog.text
    caplog.clear()
    monkeypatch.setattr(subnormals, "subnormals_flushed", lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="d2dist.engine.subnormals"):
        log_subnormal_mode(False)
    assert "this processor has no flush-to-zero mode" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="d2dist.engine.subnormals"):
        log_subnormal_mode(None)  # a GPU run: nothing to say
    assert caplog.text == ""

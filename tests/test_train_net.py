"""tools/train_net.py end to end on the tiny built-in dataset, and its input validation."""

import json
import os
import subprocess
import sys

import pytest
import torch
from _tools import load_tool

from d2dist.engine import argument_parser, setup
from d2dist.errors import ConfigError

pytestmark = (
    pytest.mark.slow
)  # trains and evaluates through train_net, in this process and in subprocesses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
STUDENT_CFG = os.path.join(REPO, "configs", "Shapes-Detection", "faster_rcnn_R18_FPN_1x.yaml")

# A tiny model on the tiny built-in dataset: a few seconds per run on a CPU.
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.NORM", "BN",  # GroupNorm needs 32 channels per group: too wide for tiny
    "MODEL.FPN.NORM", "",
    "DATASETS.TRAIN", "('d2dist_shapes_tiny_train',)",
    "DATASETS.TEST", "('d2dist_shapes_tiny_val',)",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "64",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "4",
    "SOLVER.STEPS", "(3,)",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.CHECKPOINT_PERIOD", "2",
]  # fmt: skip


def _load_train_net():
    return load_tool("train_net")


def _args(*argv):
    return argument_parser().parse_args(list(argv))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny training run through train_net.py's main, shared by the tests below."""
    out = str(tmp_path_factory.mktemp("run"))
    args = _args("--config-file", STUDENT_CFG, *TINY, "OUTPUT_DIR", out)
    results = _load_train_net().main(args)
    return out, results


def test_train_writes_checkpoints_metrics_and_coco_results(trained_run):
    out, results = trained_run
    for name in ("model_final.pth", "model_0000001.pth", "last_checkpoint", "config.yaml"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert set(results) == {"bbox"}
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(results["bbox"])
    assert all(isinstance(v, float) for v in results["bbox"].values())
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    assert max(r["iteration"] for r in records if "total_loss" in r) == 3  # MAX_ITER 4
    # The final evaluation reaches metrics.json (what tools/demo.py reads).
    assert any("bbox/AP" in r for r in records)
    checkpoint = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu")
    assert checkpoint["iteration"] == 3
    assert any(k.startswith("backbone.bottom_up") for k in checkpoint["model"])


def test_eval_only_reproduces_the_final_evaluation(trained_run, tmp_path):
    out, results = trained_run
    weights = os.path.join(out, "model_final.pth")
    args = _args(
        "--config-file", STUDENT_CFG, "--eval-only", *TINY,
        "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    again = _load_train_net().main(args)
    assert again["bbox"] == pytest.approx(results["bbox"], nan_ok=True)


def test_a_finished_run_is_never_overwritten(trained_run):
    out, _ = trained_run
    with pytest.raises(ConfigError, match="holds checkpoints of an earlier run.*--resume"):
        setup(_args("--config-file", STUDENT_CFG, *TINY, "OUTPUT_DIR", out))


def test_resume_of_a_finished_run_trains_nothing_and_evaluates(trained_run):
    out, results = trained_run
    args = _args("--config-file", STUDENT_CFG, "--resume", *TINY, "OUTPUT_DIR", out)
    again = _load_train_net().main(args)
    assert again["bbox"] == pytest.approx(results["bbox"], nan_ok=True)


def test_unknown_dataset_name(tmp_path):
    args = _args(
        "--config-file", STUDENT_CFG, *TINY, "DATASETS.TRAIN", "('shapes_trian',)",
        "OUTPUT_DIR", str(tmp_path),
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"DATASETS.TRAIN names 'shapes_trian'.*d2dist_shapes_train"
    ):
        setup(args)


def test_amp_on_the_cpu_is_refused_before_training(tmp_path):
    args = _args("--config-file", STUDENT_CFG, *TINY, "SOLVER.AMP.ENABLED", "True",
                 "OUTPUT_DIR", str(tmp_path))  # fmt: skip
    with pytest.raises(ConfigError, match=r"SOLVER.AMP.ENABLED is True but MODEL.DEVICE is 'cpu'"):
        setup(args)


def test_missing_config_file(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"--config-file .*nope.yaml' does not exist"):
        setup(_args("--config-file", missing, "OUTPUT_DIR", str(tmp_path)))


def test_unknown_config_key(tmp_path):
    args = _args("--config-file", STUDENT_CFG, "SOLVER.MAX_ITERS", "3", "OUTPUT_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="command-line overrides.*SOLVER.MAX_ITERS"):
        setup(args)


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    args = _args("--config-file", STUDENT_CFG, *TINY, "OUTPUT_DIR", str(blocker / "run"))
    with pytest.raises(ConfigError, match=r"OUTPUT_DIR '.*a_file/run' is not a writable directory"):
        setup(args)


def test_eval_only_without_weights(tmp_path):
    args = _args("--config-file", STUDENT_CFG, "--eval-only", *TINY, "OUTPUT_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="--eval-only needs trained weights.*MODEL.WEIGHTS"):
        setup(args)


def test_cuda_default_falls_back_to_cpu_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    opts = [o for o in TINY]
    del opts[:2]  # drop MODEL.DEVICE cpu: the config's default (cuda) applies
    cfg = setup(_args("--config-file", STUDENT_CFG, *opts, "OUTPUT_DIR", str(tmp_path)))
    assert cfg.MODEL.DEVICE == "cpu"
    with pytest.raises(ConfigError, match="MODEL.DEVICE cuda was given on the command line"):
        setup(
            _args(
                "--config-file",
                STUDENT_CFG,
                *opts,
                "MODEL.DEVICE",
                "cuda",
                "OUTPUT_DIR",
                str(tmp_path),
            )
        )


def test_cli_reports_config_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, TRAIN_NET, "--config-file", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "train_net.py: error: --config-file" in proc.stderr
    assert "Traceback" not in proc.stderr

"""Distillation through tools/train_net.py on the tiny built-in dataset: train, resume, export."""

import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA
from _tools import load_tool

from d2dist.config import get_cfg
from d2dist.engine import Trainer, argument_parser, export_student

pytestmark = (
    pytest.mark.slow
)  # distillation runs through train_net: resume, kill, export, two processes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs", "Shapes-Detection")
TEACHER_CFG = os.path.join(CONFIGS, "faster_rcnn_R50_FPN_3x.yaml")
DISTILL_CFG = os.path.join(CONFIGS, "mimic_faster_rcnn_R18_from_R50_FPN_1x.yaml")

DATA = SHAPES_TINY_DATA + [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.STEPS", "(3,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "2",
]  # fmt: skip
TEACHER_TINY, STUDENT_TINY = SHAPES_TEACHER_TINY, SHAPES_STUDENT_TINY


def _main(*argv):
    return load_tool("train_net").main(argument_parser().parse_args(list(argv)))


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("teacher"))
    _main(
        "--config-file",
        TEACHER_CFG,
        *DATA,
        *TEACHER_TINY,
        "SOLVER.MAX_ITER",
        "2",
        "OUTPUT_DIR",
        out,
    )
    return os.path.join(out, "model_final.pth")


def _distill_opts(teacher_weights, out, max_iter=4):
    teacher_opts = str(DATA[:2] + TEACHER_TINY)  # the teacher's own overrides
    return [
        *DATA, *STUDENT_TINY, "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", out,
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher_weights,
        "MODEL.DISTILL.TEACHER.OPTS", teacher_opts,
        "MODEL.DISTILL.LOSSES", "['MIMIC', 'KD']",
        # A 2-iteration teacher has large features: keep the tiny run numerically tame.
        "MODEL.DISTILL.MIMIC.WEIGHT", "0.01", "SOLVER.BASE_LR", "0.002",
    ]  # fmt: skip


def _cfg(*opts):
    cfg = get_cfg()
    cfg.merge_from_file(DISTILL_CFG)
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.fixture(scope="module")
def distill_run(teacher_weights, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distill"))
    opts = _distill_opts(teacher_weights, out)
    results = _main("--config-file", DISTILL_CFG, *opts)
    return out, opts, results


def test_distillation_run_logs_terms_and_saves_no_teacher(distill_run):
    out, _, results = distill_run
    assert {"AP", "AP50"} <= set(results["bbox"])
    with open(os.path.join(out, "metrics.json")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if "total_loss" in r]
    assert all("loss_distill_mimic" in r and "loss_distill_kd" in r for r in train)
    assert any("distill/mimic/p2" in r for r in train) and any(
        "distill/mimic/p6" in r for r in train
    )
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    keys = ckpt["model"].keys()
    assert not any(k.startswith("teacher") for k in keys)
    # The student's entries under their own names (a plain model loads them), the terms' apart.
    assert any(k.startswith("backbone.") for k in keys)
    assert not any(k.startswith("student.") for k in keys)
    assert any(k.startswith("terms.0.adapters.p2") for k in keys)  # MIMIC's adapters are saved
    assert "optimizer" in ckpt["trainer"]["_trainer"] and "LRScheduler" in ckpt["trainer"]["hooks"]
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    with open(os.path.join(out, "log.txt")) as f:  # d2dist's own messages are in the run's log
        log = f.read()
    assert "d2dist.modeling.teacher INFO: Teacher: GeneralizedRCNN from" in log
    assert "MODEL.DISTILL.KD.TARGET auto -> 'roi'" in log


def test_eval_teacher_evaluates_the_teacher_before_distilling(teacher_weights, tmp_path, caplog):
    out = str(tmp_path / "run")
    opts = _distill_opts(teacher_weights, out, max_iter=1)
    with caplog.at_level(logging.INFO, logger="d2dist"):
        _main("--config-file", DISTILL_CFG, "--eval-teacher", *opts)
    with open(os.path.join(out, "teacher_eval", "results.json")) as f:
        results = json.load(f)
    assert {"AP", "AP50"} <= set(results["bbox"])
    assert any("Teacher evaluation" in r.getMessage() for r in caplog.records)
    # The same teacher, evaluated on its own, gives the same numbers.
    plain = _main("--config-file", TEACHER_CFG, "--eval-only", *DATA, *TEACHER_TINY,
                  "MODEL.WEIGHTS", teacher_weights, "OUTPUT_DIR", str(tmp_path / "t"))  # fmt: skip
    assert plain["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"])


def test_eval_teacher_needs_a_distillation_config(tmp_path):
    from d2dist.config import ConfigError

    with pytest.raises(ConfigError, match="--eval-teacher evaluates a distillation run's teacher"):
        _main("--config-file", TEACHER_CFG, "--eval-teacher", *DATA, *TEACHER_TINY,
              "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path))  # fmt: skip


def test_resume_rebuilds_the_teacher_and_continues(distill_run, teacher_weights, tmp_path):
    out, opts, results = distill_run
    # A longer schedule resumed from the finished 4-iteration run trains iterations 4..5.
    resumed = _main("--config-file", DISTILL_CFG, "--resume", *opts, "SOLVER.MAX_ITER", "6")
    assert set(resumed) == {"bbox"}
    with open(os.path.join(out, "metrics.json")) as f:
        iters = [json.loads(line)["iteration"] for line in f if "total_loss" in line]
    assert max(iters) == 5
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 5


def test_exported_student_is_a_plain_model_with_the_same_results(teacher_weights, tmp_path):
    out = str(tmp_path / "run")
    opts = _distill_opts(teacher_weights, out)
    results = _main("--config-file", DISTILL_CFG, *opts)
    cfg = _cfg(*opts)
    weights, config = export_student(
        cfg, os.path.join(out, "model_final.pth"), str(tmp_path / "s.pth")
    )
    exported = torch.load(weights, map_location="cpu", weights_only=False)["model"]
    assert not any(k.startswith(("student.", "teacher", "terms")) for k in exported)

    scfg = get_cfg()
    scfg.merge_from_file(config)
    assert scfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    scfg.MODEL.DEVICE = "cpu"  # the exported config pins no device (cuda is the default)
    scfg.OUTPUT_DIR = str(tmp_path / "eval")
    model = Trainer.build_model(scfg)
    model.load_state_dict(exported, strict=True)
    again = Trainer.test(scfg, model)
    assert again["bbox"] == pytest.approx(results["bbox"], nan_ok=True)


def test_export_student_cli(distill_run, tmp_path):
    import subprocess
    import sys

    out, opts, _ = distill_run
    cli = [sys.executable, os.path.join(REPO, "tools", "export_student.py")]
    target = str(tmp_path / "student.pth")
    done = subprocess.run(
        cli + ["--config-file", DISTILL_CFG, "--output", target, *opts],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(target) and os.path.isfile(str(tmp_path / "student.yaml"))
    assert f"student weights: {target}" in done.stdout
    missing = subprocess.run(
        cli + ["--config-file", DISTILL_CFG, "--checkpoint", str(tmp_path / "none.pth"), *opts],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert missing.returncode == 2
    assert (
        "export_student.py: error: checkpoint '" in missing.stderr and "none.pth" in missing.stderr
    )


def test_export_refuses_a_plain_checkpoint(tmp_path, teacher_weights):
    with pytest.raises(ValueError, match="is not a checkpoint of a Distiller run"):
        export_student(
            _cfg(*_distill_opts(teacher_weights, str(tmp_path))),
            teacher_weights,
            str(tmp_path / "x.pth"),
        )


def test_model_weights_initialise_the_student_only(teacher_weights, tmp_path):
    """A model-zoo style .pkl (Detectron2 matches its keys by suffix) reaches the student only."""
    out = str(tmp_path / "run")
    cfg = _cfg(*_distill_opts(teacher_weights, out))
    student_state = Trainer.build_model(_student_cfg(cfg)).state_dict()
    init = {k: np.full(tuple(v.shape), 0.5, dtype=np.float32) for k, v in student_state.items()
            if k.startswith("backbone.bottom_up") and v.is_floating_point()}  # fmt: skip
    pkl = tmp_path / "init.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": init, "__author__": "test", "matching_heuristics": True}, f)
    cfg.MODEL.WEIGHTS = str(pkl)
    cfg.OUTPUT_DIR = out
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)  # loads the teacher's own weights, then MODEL.WEIGHTS
    student = trainer.model.student.state_dict()
    for k in init:
        assert torch.all(student[k] == 0.5), k
    saved = torch.load(teacher_weights, weights_only=False)["model"]
    for k, v in trainer.model.teacher.state_dict().items():
        assert torch.equal(v, saved[k]), f"teacher {k} was overwritten"
    assert trainer.start_iter == 0


def _student_cfg(cfg):
    from d2dist.engine import student_config

    scfg = student_config(cfg)
    scfg.MODEL.DEVICE = "cpu"
    return scfg


def test_two_runs_with_one_seed_and_one_worker_are_identical(teacher_weights, tmp_path):
    from d2dist.engine.subnormals import subnormals_flushed

    assert subnormals_flushed() == 1.0  # deterministic with subnormals flushed, as CPU runs are
    finals = []
    for run in ("a", "b"):
        out = str(tmp_path / run)
        opts = _distill_opts(teacher_weights, out, max_iter=4)
        _main("--config-file", DISTILL_CFG, *opts, "SEED", "3", "DATALOADER.NUM_WORKERS", "1")
        with open(os.path.join(out, "metrics.json")) as f:
            losses = [json.loads(line) for line in f if "total_loss" in line][-1]
        state = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
        finals.append((losses, state))
    (losses_a, state_a), (losses_b, state_b) = finals
    keys = [k for k in losses_a if k.startswith("loss_")]
    assert keys and {k: losses_a[k] for k in keys} == {k: losses_b[k] for k in keys}
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        assert torch.equal(state_a[k], state_b[k]), k


def test_a_killed_run_resumes_from_its_last_complete_checkpoint(teacher_weights, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = str(tmp_path / "run")
    opts = _distill_opts(teacher_weights, out, max_iter=40)  # checkpoints every 2 iterations
    opts += [  # an ABF chain, adapters, acclimation and a warm-up: all must resume exactly
        "MODEL.DISTILL.LOSSES", "['ReviewKD', 'DIST_FEATURE']",
        "MODEL.DISTILL.REVIEWKD.MID_CHANNELS", "8", "MODEL.DISTILL.REVIEWKD.WEIGHT", "0.01",
        "MODEL.DISTILL.DIST_FEATURE.WEIGHT", "0.1", "MODEL.DISTILL.ACCLIMATION.ENABLED", "True",
        "MODEL.DISTILL.WEIGHT_SCHEDULE.WARMUP_ITERS", "60",
    ]  # fmt: skip
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "train_net.py"),
        "--config-file",
        DISTILL_CFG,
    ]
    proc = subprocess.Popen(cmd + opts, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = os.path.join(out, "last_checkpoint")
    deadline = time.time() + 120
    while not os.path.exists(tag) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before its first checkpoint"

    # Only complete checkpoints are tagged and named *.pth; a save cut short stays *.partial.pth.
    with open(tag) as f:
        saved_name = f.read().strip()
    assert saved_name.endswith(".pth") and ".partial" not in saved_name
    saved = torch.load(os.path.join(out, saved_name), map_location="cpu", weights_only=False)

    # Resuming restores exactly that state: weights, adapters, optimizer, scheduler, iteration.
    trainer = Trainer(_cfg(*opts))
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == saved["iteration"] + 1
    state = trainer.checkpointer.model.state_dict()
    assert state.keys() == saved["model"].keys()
    assert all(torch.equal(state[k], saved["model"][k]) for k in state)
    for part in ("terms.0.adapter.abfs", "terms.1.adapters", "terms.1.acclimation"):
        assert any(k.startswith(part) for k in state), part
    resumed_opt = trainer.optimizer.state_dict()["state"]
    saved_opt = saved["trainer"]["_trainer"]["optimizer"]["state"]
    assert resumed_opt.keys() == saved_opt.keys() and resumed_opt
    for k in saved_opt:
        assert torch.equal(resumed_opt[k]["momentum_buffer"], saved_opt[k]["momentum_buffer"])
    saved_scheduler = saved["trainer"]["hooks"]["LRScheduler"]
    assert trainer.scheduler.state_dict()["last_epoch"] == saved_scheduler["last_epoch"]
    del trainer

    # ... and the resumed run (a real process again) reaches MAX_ITER.
    subprocess.run(cmd + ["--resume"] + opts, check=True, stdout=subprocess.DEVNULL)
    final = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["iteration"] == 39
    # The warm-up continued from the resumed iteration (its factor is (iteration + 1) / 60).
    with open(os.path.join(out, "metrics.json")) as f:
        logged = [json.loads(line) for line in f if "distill/weight_factor" in line]
    assert logged and logged[-1]["iteration"] == 39
    for row in logged:
        assert row["distill/weight_factor"] == pytest.approx((row["iteration"] + 1) / 60)


def test_checkpoints_appear_only_when_complete(tmp_path, monkeypatch):
    from d2dist.checkpoint import AtomicCheckpointer

    model = torch.nn.Linear(2, 2)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"

    def interrupted(data, f):  # the process dies half way through writing
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000019")
    assert not (tmp_path / "model_0000019.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert checkpointer.get_checkpoint_file().endswith("model_0000009.pth")


def _ddp_run(teacher_weights, tmp_path, *opts):
    """Train with two CPU processes (gloo) through train_net's code; each rank's final state."""
    import subprocess
    import sys

    out, dump = str(tmp_path / "run"), tmp_path / "ranks"
    dump.mkdir()
    cmd = [
        sys.executable, os.path.join(REPO, "tests", "_ddp_worker.py"), "--dump", str(dump),
        "--num-gpus", "2", "--config-file", DISTILL_CFG,
        *_distill_opts(teacher_weights, out, max_iter=4), "SOLVER.IMS_PER_BATCH", "4", *opts,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(dump / f"rank{r}.pth", weights_only=False) for r in (0, 1)]
    for rank in ranks:  # the teacher is a plain, frozen module on each rank, outside DDP
        assert rank["type"] == "DistributedDataParallel"
        assert rank["teacher_params_in_ddp"] == 0 and not rank["teacher_training"]
    assert len(ranks[0]["files"]) == 4
    for step0, step1 in zip(ranks[0]["files"], ranks[1]["files"]):
        assert len(step0) == len(step1) == 2 and not set(step0) & set(step1)  # each its own data
    a, b = ranks[0]["params"], ranks[1]["params"]
    assert a.keys() == b.keys()
    for name in a:  # gradients were averaged: identical weights although the data differed
        assert torch.equal(a[name], b[name]), name
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    # the checkpoint names the student's entries as the student alone does (no "student.")
    assert all(torch.equal(final[name.removeprefix("student.")], a[name]) for name in a)
    return ranks


def test_two_cpu_processes_train_to_identical_weights(teacher_weights, tmp_path):
    ranks = _ddp_run(
        teacher_weights, tmp_path,
        "MODEL.DISTILL.LOSSES", "['ReviewKD', 'DIST', 'DIST_FEATURE']",
        "MODEL.DISTILL.REVIEWKD.MID_CHANNELS", "8", "MODEL.DISTILL.REVIEWKD.WEIGHT", "0.01",
        "MODEL.DISTILL.DIST_FEATURE.WEIGHT", "0.1", "MODEL.DISTILL.ACCLIMATION.ENABLED", "True",
    )  # fmt: skip
    rank = ranks[0]
    # Every parameter (student, ABF chain, adapters, acclimation) takes part in every step, so
    # DDP skips the unused-parameter search; a parameter left out would fail the second step.
    assert rank["find_unused_parameters"] is False
    names = list(rank["params"])
    for part in ("terms.0.adapter.abfs", "terms.2.adapters", "terms.1.acclimation.log_t",
                 "terms.2.acclimation"):  # fmt: skip
        assert any(n.startswith(part) for n in names), part
    moved = [n for n in names if not torch.equal(rank["params"][n], rank["initial"][n])]
    assert any(n.startswith("student.") for n in moved)
    assert any(n.startswith("terms.0.adapter") for n in moved)
    assert any(".acclimation." in n for n in moved)


def test_two_cpu_processes_with_a_stopping_schedule(teacher_weights, tmp_path):
    # From STOP_ITER on the terms do not run: DDP must look for unused parameters, and those keep
    # grad None on both ranks, so the optimizer leaves them alone.
    ranks = _ddp_run(teacher_weights, tmp_path, "MODEL.DISTILL.WEIGHT_SCHEDULE.STOP_ITER", "1")
    for rank in ranks:
        assert rank["find_unused_parameters"] is True
        none = rank["grad_is_none"]
        assert all(none[n] for n in none if n.startswith("terms."))
        assert not all(none[n] for n in none if n.startswith("student."))


def test_eval_only_of_a_distilled_checkpoint_needs_no_teacher(teacher_weights, tmp_path):
    out = str(tmp_path / "run")
    opts = _distill_opts(teacher_weights, out, max_iter=2)
    results = _main("--config-file", DISTILL_CFG, *opts)
    gone = ["MODEL.DISTILL.TEACHER.WEIGHTS", str(tmp_path / "deleted.pth"),
            "MODEL.DISTILL.TEACHER.CONFIG_FILE", str(tmp_path / "deleted.yaml")]  # fmt: skip
    again = _main("--config-file", DISTILL_CFG, "--eval-only", *opts, *gone,
                  "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                  "OUTPUT_DIR", str(tmp_path / "eval"))  # fmt: skip
    assert again["bbox"] == pytest.approx(results["bbox"], nan_ok=True)


def test_eval_teacher_builds_and_loads_the_teacher_once(teacher_weights, tmp_path, monkeypatch):
    from d2dist.modeling import teacher as teacher_module

    calls = {"build": 0, "load": 0}
    build, load = teacher_module.build_teacher, teacher_module.Teacher.load

    def counted_build(cfg):
        calls["build"] += 1
        return build(cfg)

    def counted_load(self):
        calls["load"] += not self.loaded
        return load(self)

    monkeypatch.setattr("d2dist.modeling.meta_arch.distiller.build_teacher", counted_build)
    monkeypatch.setattr(teacher_module.Teacher, "load", counted_load)
    out = str(tmp_path / "run")
    _main("--config-file", DISTILL_CFG, "--eval-teacher",
          *_distill_opts(teacher_weights, out, max_iter=1))  # fmt: skip
    assert calls == {"build": 1, "load": 1}
    assert os.path.isfile(os.path.join(out, "teacher_eval", "results.json"))


def test_the_trainer_patches_nothing_of_detectron2(teacher_weights, tmp_path):
    import detectron2.engine.defaults as d2_defaults

    original = d2_defaults.create_ddp_model
    seen = []

    class Watching(Trainer):
        @classmethod
        def build_model(cls, cfg):
            seen.append(d2_defaults.create_ddp_model is original)
            return super().build_model(cfg)

    cfg = _cfg(*_distill_opts(teacher_weights, str(tmp_path / "run"), max_iter=1))
    Watching(cfg)
    assert seen == [True] and d2_defaults.create_ddp_model is original


TTA = ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(56, 64)", "TEST.AUG.MAX_SIZE", "100"]


def test_test_time_augmentation_of_the_student(distill_run, teacher_weights, tmp_path):
    """TEST.AUG evaluates the student with Detectron2's GeneralizedRCNNWithTTA: after training
    (the results of both evaluations returned) and with --eval-only (was silently ignored)."""
    out, opts, _ = distill_run
    final = os.path.join(out, "model_final.pth")
    evaluated = _main("--config-file", DISTILL_CFG, "--eval-only", *opts, *TTA,
                      "MODEL.WEIGHTS", final, "OUTPUT_DIR", str(tmp_path / "eval"))  # fmt: skip
    assert {"bbox", "bbox_TTA"} <= set(evaluated)
    assert os.path.isdir(os.path.join(str(tmp_path / "eval"), "inference_TTA"))
    trained = _main(
        "--config-file",
        DISTILL_CFG,
        *_distill_opts(teacher_weights, str(tmp_path / "run"), max_iter=1),
        *TTA,
    )
    assert {"bbox", "bbox_TTA"} <= set(trained)  # fmt: skip


def test_test_time_augmentation_of_another_model_is_refused_before_training(tmp_path):
    from d2dist.config import ConfigError

    retinanet = os.path.join(CONFIGS, "retinanet_R18_FPN_1x.yaml")
    with pytest.raises(ConfigError, match="supports GeneralizedRCNN models only.*RetinaNet"):
        _main("--config-file", retinanet, *DATA, *STUDENT_TINY, *TTA, "SOLVER.MAX_ITER", "1",
              "OUTPUT_DIR", str(tmp_path / "run"))  # fmt: skip
    assert not os.path.exists(os.path.join(str(tmp_path / "run"), "last_checkpoint"))
    with pytest.raises(ConfigError, match="supports GeneralizedRCNN models only"):
        _main("--config-file", retinanet, "--eval-only", *DATA, *STUDENT_TINY, *TTA,
              "MODEL.WEIGHTS", "whatever.pth", "OUTPUT_DIR", str(tmp_path / "eval"))  # fmt: skip

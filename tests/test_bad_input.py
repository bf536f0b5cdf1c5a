"""One table of wrong configurations and inputs, each through the entry point that meets it.

Every row either works (and its result is checked) or fails before training, or at the first
step, with a :class:`ConfigError` whose message names the key or input and the fix; nothing
reaches Detectron2's internals to crash there with a shape or pickle error.
"""

import os
import subprocess
import sys

import pytest
import torch
from _bad_input import (
    CONFIGS,
    DISTILL_CFG,
    FIVE_CLASSES,
    REPO,
    TEACHER_CFG,
    TEACHER_OPTS,
    TRAIN_NET,
    Ctx,
    _config,
    _finite,
    _tool_error,
    _trained,
)
from _bad_input_config import CONFIG_ROWS
from _bad_input_data import DATA_ROWS
from _bad_input_env import ENV_ROWS
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TINY_DATA, inputs
from _tools import load_tool
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from d2dist.config import get_cfg
from d2dist.engine import argument_parser, launch_cli
from d2dist.errors import ConfigError


def _yaml_with_wrong_type(ctx):
    path = ctx.tmp / "wrong_type.yaml"
    path.write_text(
        f'_BASE_: "{DISTILL_CFG}"\nMODEL:\n  DISTILL:\n    MIMIC:\n      IN_FEATURES: p2\n'
    )
    return ctx.cli(config=str(path))


def _resume_from_a_corrupt_checkpoint(ctx):
    out = ctx.tmp / "corrupt_run"
    out.mkdir()
    (out / "model_0000009.pth").write_bytes(b"\x00 cut short")
    (out / "last_checkpoint").write_text("model_0000009.pth")
    return ctx.cli("OUTPUT_DIR", str(out), flags=["--resume"])


def _without_instances(batch):
    for x in batch:
        empty = Instances((64, 64))
        empty.gt_boxes = Boxes(torch.zeros(0, 4))
        empty.gt_classes = torch.zeros(0, dtype=torch.long)
        x["instances"] = empty
    return batch


def _with_channels(batch, channels):
    for x in batch:
        x["image"] = x["image"][:1].repeat(channels, 1, 1)
    return batch


def _no_foreground(losses):
    _finite(losses)
    assert losses["loss_box_reg"] == 0  # no sampled RoI is foreground
    assert losses["loss_distill_dist"] > 0


def _num_gpus_without_gpus(ctx, capsys):
    args = argument_parser().parse_args(
        ["--num-gpus", "2", "--config-file", DISTILL_CFG, "OUTPUT_DIR", ctx.out()]
    )
    assert launch_cli(lambda a: None, args) == 2
    raise ConfigError(capsys.readouterr().err)


def _config_error_in_a_worker(ctx, capsys):
    argv = ["--num-gpus", "2", "--config-file", DISTILL_CFG]
    argv += ctx.opts("MODEL.DISTILL.TEACHER.WEIGHTS", ctx.missing, "SOLVER.IMS_PER_BATCH", "4")
    proc = subprocess.run(
        [sys.executable, TRAIN_NET, *argv], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    raise ConfigError(proc.stderr)


def _loop(ctx):
    a = _config(ctx, "loop_a.yaml", '_BASE_: "loop_b.yaml"\n')
    _config(ctx, "loop_b.yaml", '_BASE_: "loop_a.yaml"\n')
    return a


def _distilled_run(ctx):
    """A finished one-iteration distillation run (its OUTPUT_DIR)."""
    return ctx.cli()


def _eval_only(ctx, config, *opts, flags=("--eval-only",)):
    argv = [*flags, "--config-file", config, *SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY,
            "DATASETS.TEST", "('d2dist_shapes_tiny_val',)", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "64", *opts]  # fmt: skip
    return load_tool("train_net").main(argument_parser().parse_args(argv))


def _eval_plain_with_a_distiller_checkpoint(ctx):
    run = _distilled_run(ctx)
    student = os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x.yaml")
    return _eval_only(ctx, student, "MODEL.WEIGHTS", os.path.join(run, "model_final.pth"),
                      "OUTPUT_DIR", ctx.out())  # fmt: skip


def _eval_distiller_with_an_exported_student(ctx):
    run = _distilled_run(ctx)
    exported = os.path.join(run, "student.pth")
    assert load_tool("export_student").main(["--run-dir", run, "--output", exported]) == 0
    return _eval_only(ctx, DISTILL_CFG, "MODEL.WEIGHTS", exported, "OUTPUT_DIR", ctx.out(),
                      "MODEL.DISTILL.TEACHER.WEIGHTS", ctx.missing)  # no teacher needed  # fmt: skip


def _eval_with_another_models_checkpoint(ctx):
    student = os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x.yaml")
    return _eval_only(ctx, student, "MODEL.WEIGHTS", ctx.teacher, "OUTPUT_DIR", ctx.out())


def _eval_resume_in_an_empty_dir(ctx):
    student = os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x.yaml")
    return _eval_only(ctx, student, "OUTPUT_DIR", ctx.out(), flags=("--eval-only", "--resume"))


def _has_results(results):
    assert "bbox" in results and set(results["bbox"]) >= {"AP", "AP50"}, results


def _retinanet_default_student(ctx):
    base = os.path.join(CONFIGS, "retinanet_R18_FPN_1x.yaml")
    return ctx.cli(
        config=_config(
            ctx,
            "retina_distill.yaml",
            f"""_BASE_: "{base}"
MODEL:
  META_ARCHITECTURE: "Distiller"
  DISTILL:
    TEACHER:
      CONFIG_FILE: "{TEACHER_CFG}"
    LOSSES: ["MIMIC"]
""",
        )
    )


def _batch_not_divisible(ctx, capsys):
    argv = ["--num-gpus", "2", "--config-file", DISTILL_CFG]
    argv += ctx.opts("SOLVER.IMS_PER_BATCH", "3")
    proc = subprocess.run(
        [sys.executable, TRAIN_NET, *argv], capture_output=True, text=True, cwd=REPO, timeout=600
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    raise ConfigError(proc.stderr)


def _export_a_corrupt_checkpoint(ctx, capsys):
    return _tool_error(
        "export_student",
        ["--config-file", DISTILL_CFG, "--checkpoint", ctx.corrupt, "--output", ctx.out() + ".pth"],
        capsys,
    )


def _export_with_another_students_config(ctx, capsys):
    run = _distilled_run(ctx)
    argv = ["--config-file", DISTILL_CFG, "--checkpoint", os.path.join(run, "model_final.pth"),
            "--output", ctx.out() + ".pth", "MODEL.RESNETS.DEPTH", "34"]  # fmt: skip
    return _tool_error("export_student", argv, capsys)


def _export_a_broken_lazy_config(ctx, capsys):
    path = _config(ctx, "broken.py", "model = (\n")
    return _tool_error("export_student", ["--config-file", path, "--checkpoint", ctx.corrupt],
                       capsys)  # fmt: skip


def _benchmark(ctx, capsys, *argv):
    return _tool_error("benchmark", list(argv), capsys)


def _teacher_scoring_zero(ctx):
    return ctx.cli("DATASETS.TEST", "('d2dist_shapes_tiny_val',)", "INPUT.MIN_SIZE_TEST", "64",
                   "INPUT.MAX_SIZE_TEST", "64", "MODEL.DISTILL.TEACHER.OPTS", str(TEACHER_OPTS + [
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.99999"]),
                   flags=["--eval-teacher"])  # fmt: skip


def _teacher_scoring_zero_accepted(ctx):
    return ctx.cli("DATASETS.TEST", "('d2dist_shapes_tiny_val',)", "INPUT.MIN_SIZE_TEST", "64",
                   "INPUT.MAX_SIZE_TEST", "64", "MODEL.DISTILL.TEACHER.OPTS", str(TEACHER_OPTS + [
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.99999"]),
                   flags=["--eval-teacher", "--ignore-teacher-check"])  # fmt: skip


def _start_removes_leftovers(ctx):
    out = ctx.tmp / "leftovers"
    out.mkdir()
    (out / "model_0000003.partial.pth").write_bytes(b"cut")
    (out / "last_checkpoint.partial").write_text("model_0000003.partial.pth")
    ctx.cli("OUTPUT_DIR", str(out))
    return str(out)


def _no_leftovers(out):
    _trained(out)
    assert not [f for f in os.listdir(out) if ".partial" in f], os.listdir(out)


# (what is wrong, how it is run, what must happen: the error's message as a regex, or a check
# of the result when the input is valid and must work)
CASES = [
    ("a weight that is not a number", lambda c, _: c.cli("MODEL.DISTILL.MIMIC.WEIGHT", "abc"),
     r"command-line overrides: .*config key: MODEL.DISTILL.MIMIC.WEIGHT.*value types must be"),
    ("LOSSES a string, not a list", lambda c, _: c.cli("MODEL.DISTILL.LOSSES", "MIMIC"),
     r"config key: MODEL.DISTILL.LOSSES.*value types must be"),
    ("IN_FEATURES a string in a config file", lambda c, _: _yaml_with_wrong_type(c),
     r"config file '.*wrong_type.yaml'.*MODEL.DISTILL.MIMIC.IN_FEATURES"),
    ("a negative weight", lambda c, _: c.cli("MODEL.DISTILL.MIMIC.WEIGHT", "-1.0"),
     r"MIMIC.WEIGHT=-1.0: a term's weight must be a finite number >= 0.*remove it from"),
    ("an unknown term", lambda c, _: c.cli("MODEL.DISTILL.LOSSES", "['MIMICK']"),
     r"'MIMICK', which is not a registered distillation term; registered: \[.*'MIMIC'"),
    ("an unknown key", lambda c, _: c.cli("MODEL.DISTILL.MIMIC.WEIGTH", "1.0"),
     r"Non-existent key: MODEL.DISTILL.MIMIC.WEIGTH. Keys and value types must be"),
    ("an unknown dataset", lambda c, _: c.cli("DATASETS.TRAIN", "('nope',)"),
     r"DATASETS.TRAIN names 'nope', which is not a registered dataset.*datasets/README.md"),
    ("a missing config file", lambda c, _: c.cli(config=c.missing + ".yaml"),
     r"--config-file '.*missing.pth.yaml' does not exist.*configs/"),
    ("a teacher config that is a Distiller's",
     lambda c, _: c.cli("MODEL.DISTILL.TEACHER.CONFIG_FILE", DISTILL_CFG),
     r"is itself a Distiller config.*tools/export_student.py"),
    ("missing teacher weights", lambda c, _: c.cli("MODEL.DISTILL.TEACHER.WEIGHTS", c.missing),
     r"TEACHER.WEIGHTS='.*missing.pth' does not exist"),
    ("missing student weights", lambda c, _: c.cli("MODEL.WEIGHTS", c.missing),
     r"could not load MODEL.WEIGHTS \('.*missing.pth'\).*not found"),
    ("a corrupt teacher checkpoint", lambda c, _: c.cli("MODEL.DISTILL.TEACHER.WEIGHTS", c.corrupt),
     r"could not read MODEL.DISTILL.TEACHER.WEIGHTS='.*corrupt.pth'"),
    ("a corrupt student checkpoint", lambda c, _: c.cli("MODEL.WEIGHTS", c.corrupt),
     r"(?s)could not load MODEL.WEIGHTS \('.*corrupt.pth'\): UnpicklingError.*Give a checkpoint"),
    ("--resume from a corrupt last checkpoint", lambda c, _: _resume_from_a_corrupt_checkpoint(c),
     r"(?s)could not load the last checkpoint of OUTPUT_DIR \('.*model_0000009.pth'\): .*"
     r"delete that file and the last_checkpoint entry"),
    ("a teacher with other classes, logit term",
     lambda c, _: c.cli("MODEL.DISTILL.LOSSES", "['KD']",
                        "MODEL.DISTILL.TEACHER.WEIGHTS", c.five_class_teacher,
                        teacher_opts=TEACHER_OPTS + FIVE_CLASSES),
     r"'roi' logits: the student predicts 9 classes, the teacher 6"),
    ("a teacher with other classes, feature term (works)",
     lambda c, _: c.cli("MODEL.DISTILL.TEACHER.WEIGHTS", c.five_class_teacher,
                        teacher_opts=TEACHER_OPTS + FIVE_CLASSES),
     _trained),
    ("teacher weights trained for other classes than its config",
     lambda c, _: c.cli("MODEL.DISTILL.TEACHER.WEIGHTS", c.five_class_teacher),
     r"WEIGHTS does not fit the teacher.*shape mismatches.*cls_score"),
    ("an empty training set", lambda c, _: c.cli("DATASETS.TRAIN", "('bad_input_empty',)"),
     r"DATASETS.TRAIN=\('bad_input_empty',\) gives no training images.*Check the dataset"),
    ("a training set whose images have no annotations",
     lambda c, _: c.cli("DATASETS.TRAIN", "('bad_input_unannotated',)"),
     r"gives no training images.*FILTER_EMPTY_ANNOTATIONS=True drops images without"),
    ("AMP on the CPU", lambda c, _: c.cli("SOLVER.AMP.ENABLED", "True"),
     r"SOLVER.AMP.ENABLED is True but MODEL.DEVICE is 'cpu'.*SOLVER.AMP.ENABLED False"),
    ("zero-instance images, R-CNN logits and masks (works)",
     lambda c, _: c.step("mask_rcnn", _without_instances(inputs("mask_rcnn")), ("KD", "DIST")),
     _finite),
    ("zero-instance images, dense logits (works)",
     lambda c, _: c.step("retinanet", _without_instances(inputs("retinanet")), ("DIST",)),
     _finite),
    ("an RoI batch with no foreground (works)",
     lambda c, _: c.step("faster_rcnn", inputs("faster_rcnn"), ("DIST",),
                         MODEL__ROI_HEADS__IOU_THRESHOLDS=[0.999],
                         MODEL__ROI_HEADS__PROPOSAL_APPEND_GT=False),
     _no_foreground),
    ("grey images (1 channel)",
     lambda c, _: c.step("faster_rcnn", _with_channels(inputs("faster_rcnn"), 1)),
     r"has shape \(1, 64, 64\), but the student expects \(3, H, W\): INPUT.FORMAT='BGR'"),
    ("RGBA images (4 channels)",
     lambda c, _: c.step("faster_rcnn", _with_channels(inputs("faster_rcnn"), 4)),
     r"has shape \(4, 64, 64\).*Load the images in that format"),
    ("--num-gpus 2 on a machine without GPUs", _num_gpus_without_gpus,
     r"--num-gpus 2 asks for 2 GPUs per machine, but 0 CUDA.*--num-gpus N MODEL.DEVICE cpu"),
    ("a config error in one of 2 processes", _config_error_in_a_worker,
     r"train_net.py: error: MODEL.DISTILL.TEACHER.WEIGHTS='.*missing.pth' does not exist"),
    # ---- evaluation only ever runs on weights that loaded
    ("--eval-only, a plain config and a Distiller's checkpoint (works: its student)",
     lambda c, _: _eval_plain_with_a_distiller_checkpoint(c), _has_results),
    ("--eval-only, a Distiller config and an exported student (works, no teacher file)",
     lambda c, _: _eval_distiller_with_an_exported_student(c), _has_results),
    ("--eval-only with another model's checkpoint",
     lambda c, _: _eval_with_another_models_checkpoint(c),
     r"'.*teacher.pth' does not fit the GeneralizedRCNN of this config \(.*shape mismatches.*"
     r"Evaluate a run's checkpoint with that run's own config"),
    ("--eval-only --resume in a directory without checkpoints",
     lambda c, _: _eval_resume_in_an_empty_dir(c),
     r"there are no weights to evaluate: no MODEL.WEIGHTS and no checkpoint in '.*run1'"),
    # ---- config files that cannot be read
    ("a _BASE_ loop", lambda c, _: c.cli(config=_loop(c)),
     r"config file '.*loop_a.yaml': its _BASE_ chain loops"),
    ("a missing _BASE_", lambda c, _: c.cli(config=_config(c, "nobase.yaml", '_BASE_: "no.yaml"\n')),
     r"the file '.*no.yaml' it names \(as _BASE_\) does not exist"),
    ("a YAML syntax error",
     lambda c, _: c.cli(config=_config(c, "syntax.yaml", "MODEL:\n  WEIGHTS: [oops\n")),
     r"config file '.*syntax.yaml' is not valid YAML"),
    ("a YAML file that is not a mapping",
     lambda c, _: c.cli(config=_config(c, "list.yaml", "- 1\n- 2\n")),
     r"config file '.*list.yaml' .*is not a mapping of config keys"),
    ("a teacher config with a _BASE_ loop",
     lambda c, _: c.cli("MODEL.DISTILL.TEACHER.CONFIG_FILE", _loop(c)),
     r"teacher config '.*loop_a.yaml': its _BASE_ chain loops"),
    ("a teacher config that is not valid YAML",
     lambda c, _: c.cli("MODEL.DISTILL.TEACHER.CONFIG_FILE",
                        _config(c, "t.yaml", "MODEL: {WEIGHTS: \n")),
     r"teacher config '.*t.yaml' is not valid YAML"),
    # ---- values Detectron2 accepts but cannot run with
    ("an unknown norm in an adapter",
     lambda c, _: c.cli("MODEL.DISTILL.MIMIC.ADAPTER_NORM", "XN"),
     r"ADAPTER_NORM of 'p2'='XN' is not a norm Detectron2 knows; use one of \[''"),
    ("an unknown norm in ReviewKD's ABF",
     lambda c, _: c.cli("MODEL.DISTILL.LOSSES", "['ReviewKD']", "MODEL.DISTILL.REVIEWKD.NORM",
                        "XN", "MODEL.DISTILL.REVIEWKD.MID_CHANNELS", "8"),
     r"MODEL.DISTILL.REVIEWKD.NORM \(ABF\)='XN' is not a norm"),
    ("CHECKPOINT_PERIOD 0", lambda c, _: c.cli("SOLVER.CHECKPOINT_PERIOD", "0"),
     r"SOLVER.CHECKPOINT_PERIOD=0: must be at least 1"),
    ("MAX_ITER 0", lambda c, _: c.cli("SOLVER.MAX_ITER", "0"),
     r"SOLVER.MAX_ITER=0: must be at least 1"),
    ("BASE_LR 0", lambda c, _: c.cli("SOLVER.BASE_LR", "0.0"), r"SOLVER.BASE_LR=0.0: must be > 0"),
    ("an unknown device", lambda c, _: c.cli("MODEL.DEVICE", "gpu"),
     r"MODEL.DEVICE='gpu' is not a device PyTorch knows"),
    ("a batch not divisible by the processes", _batch_not_divisible,
     r"SOLVER.IMS_PER_BATCH=3 images per step cannot be split evenly between 2 processes"),
    ("a RetinaNet config that left STUDENT_META_ARCHITECTURE at its default",
     lambda c, _: _retinanet_default_student(c),
     r"STUDENT_META_ARCHITECTURE='GeneralizedRCNN' \(its default\) cannot be built from this "
     r"config: .*Base-RetinaNet.yaml describes a RetinaNet.*Set MODEL.DISTILL."
     r"STUDENT_META_ARCHITECTURE 'RetinaNet'"),
    # ---- nonsense that used to be accepted silently
    ("a negative STUDENT_LOSS_WEIGHT", lambda c, _: c.cli("MODEL.DISTILL.STUDENT_LOSS_WEIGHT", "-1.0"),
     r"STUDENT_LOSS_WEIGHT=-1.0: must be a finite number >= 0 \(a negative weight would make"),
    ("a negative DIST BETA",
     lambda c, _: c.cli("MODEL.DISTILL.LOSSES", "['DIST']", "MODEL.DISTILL.DIST.BETA", "-1.0"),
     r"MODEL.DISTILL.DIST.BETA=-1.0: must be a finite number >= 0"),
    ("DIST BETA = GAMMA = 0",
     lambda c, _: c.cli("MODEL.DISTILL.LOSSES", "['DIST_FEATURE']", "MODEL.DISTILL.DIST_FEATURE.BETA",
                        "0.0", "MODEL.DISTILL.DIST_FEATURE.GAMMA", "0.0"),
     r"DIST_FEATURE.BETA and GAMMA are both 0, so the term would compute nothing"),
    ("STOP_ITER below -1", lambda c, _: c.cli("MODEL.DISTILL.WEIGHT_SCHEDULE.STOP_ITER", "-2"),
     r"STOP_ITER=-2 with WARMUP_ITERS=0: the terms would never act at full weight"),
    ("STOP_ITER at WARMUP_ITERS",
     lambda c, _: c.cli("MODEL.DISTILL.WEIGHT_SCHEDULE.STOP_ITER", "5",
                        "MODEL.DISTILL.WEIGHT_SCHEDULE.WARMUP_ITERS", "5"),
     r"STOP_ITER=5 with WARMUP_ITERS=5: .*an iteration after the warm-up"),
    ("acclimation that no term uses", lambda c, _: c.cli("MODEL.DISTILL.ACCLIMATION.ENABLED", "True"),
     r"ACCLIMATION.ENABLED is True, but no term of LOSSES=\['MIMIC'\] uses it"),
    ("an unknown acclimation mode",
     lambda c, _: c.cli("MODEL.DISTILL.LOSSES", "['DIST']", "MODEL.DISTILL.ACCLIMATION.ENABLED",
                        "True", "MODEL.DISTILL.ACCLIMATION.MODE", "teacher"),
     r"ACCLIMATION.MODE='teacher'; expected one of \('output', 'head'\)"),
    ("a level named twice", lambda c, _: c.cli("MODEL.DISTILL.MIMIC.IN_FEATURES", "['p2', 'p2']"),
     r"MIMIC.IN_FEATURES=\['p2', 'p2'\] names \['p2'\] more than once"),
    ("INHERIT names no student parameter", lambda c, _: c.cli("MODEL.DISTILL.INHERIT", "['neck']"),
     r"INHERIT names 'neck', which starts no parameter name of the student"),
    ("full-model gradient clipping at 0",
     lambda c, _: c.cli("SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
                        "full_model", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.0"),
     r"CLIP_VALUE=0.0: the largest gradient norm must be > 0"),
    ("--eval-teacher on an empty test set", lambda c, _: c.cli(flags=["--eval-teacher"]),
     r"--eval-teacher evaluates the teacher on DATASETS.TEST, which is empty"),
    ("--eval-teacher, a teacher that scores 0", lambda c, _: _teacher_scoring_zero(c),
     r"the teacher \(.*teacher.pth\) scores .*AP = (nan|0.0).*cannot teach.*--ignore-teacher-check"),
    ("--eval-teacher, a teacher that scores 0, told to go on (works)",
     lambda c, _: _teacher_scoring_zero_accepted(c), _trained),
    # ---- the tools' own arguments and files
    ("export: a corrupt checkpoint", _export_a_corrupt_checkpoint,
     r"export_student.py: error: could not read checkpoint '.*corrupt.pth'"),
    ("export: another student's config", _export_with_another_students_config,
     r"(?s)student weights of '.*model_final.pth' do not fit the student of this config.*--run-dir"),
    ("export: a LazyConfig that does not load", _export_a_broken_lazy_config,
     r"could not load the LazyConfig '.*broken.py'"),
    ("benchmark: a missing config file",
     lambda c, cap: _benchmark(c, cap, "--config-file", c.missing + ".yaml"),
     r"benchmark.py: error: --config-file '.*missing.pth.yaml' does not exist"),
    ("benchmark: an unknown device",
     lambda c, cap: _benchmark(c, cap, "--config-file", DISTILL_CFG, "--device", "gpu", *c.opts()),
     r"benchmark.py: error: MODEL.DEVICE='gpu' is not a device"),
    ("benchmark: no iterations",
     lambda c, cap: _benchmark(c, cap, "--config-file", DISTILL_CFG, "--iters", "0", *c.opts()),
     r"--iters must be >= 1"),
    # ---- no litter
    ("leftovers of an interrupted save at the start of a run (works: removed)",
     lambda c, _: _start_removes_leftovers(c), _no_leftovers),
]  # fmt: skip
CASES += DATA_ROWS + CONFIG_ROWS + ENV_ROWS


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """Random-weight Shapes teachers (the tiny widths): 8 classes, and 5 classes."""
    out = tmp_path_factory.mktemp("teachers")
    paths = []
    for name, extra in (("teacher", []), ("five", FIVE_CLASSES)):
        cfg = get_cfg()
        cfg.merge_from_file(TEACHER_CFG)
        cfg.merge_from_list(TEACHER_OPTS + extra)
        torch.manual_seed(0)
        path = str(out / f"{name}.pth")
        torch.save({"model": build_model(cfg).state_dict()}, path)
        paths.append(path)
    return paths


def test_the_table_is_long_enough():
    assert len(CASES) >= 60 and len({what for what, _, _ in CASES}) == len(CASES)
    assert SLOW <= {what for what, _, _ in CASES}


# Rows that start several processes (seconds each): in `make test`, not in `make test-fast`.
SLOW = {"a config error in one of 2 processes", "a batch not divisible by the processes"}


@pytest.mark.parametrize(
    "what,run,expected",
    [pytest.param(*c, marks=pytest.mark.slow) if c[0] in SLOW else c for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input(what, run, expected, tmp_path, teachers, capsys):
    ctx = Ctx(tmp_path, teachers)
    if callable(expected):
        expected(run(ctx, capsys))
        return
    with pytest.raises(ConfigError, match=expected):
        run(ctx, capsys)
        pytest.fail(f"{what}: ran without an error")

"""Rows of tests/test_bad_input.py: the environment, files never overwritten, divergence
(issue 22).

Each row is ``(what, run(ctx, capsys), expected)`` as in test_bad_input.CASES: ``expected`` is a
regular expression the :class:`~d2dist.errors.ConfigError` (or DataError) message must match, or
a callable that checks the result of a row that works.
"""

import os

from _bad_input import CONFIGS, _as_tool, _tool_error, _trained
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TINY_DATA
from _tools import load_tool

from d2dist.engine import argument_parser

STUDENT_CFG = os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x.yaml")


def _dir_with(ctx, *names):
    """A fresh OUTPUT_DIR holding files of those names (checkpoints: real ones are not needed)."""
    out = ctx.out()
    os.makedirs(out)
    for name in names:
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"an earlier run's file")
    return out


def _untagged_checkpoints_new_run(ctx):
    return ctx.cli("OUTPUT_DIR", _dir_with(ctx, "model_0000004.pth", "metrics.json"))


def _untagged_checkpoints_resume(ctx):
    return ctx.cli("OUTPUT_DIR", _dir_with(ctx, "model_0000004.pth"), flags=["--resume"])


def _resume_in_an_empty_directory(ctx):
    out = ctx.out()
    ctx.cli("OUTPUT_DIR", out, flags=["--resume"])
    return out


def _started_anew_and_said_so(out):
    _trained(out)
    with open(os.path.join(out, "log.txt")) as f:
        assert "has no checkpoint yet, so this starts a new run" in f.read()


def _eval_only_into_a_run_with_another_config(ctx):
    run = ctx.cli()  # a finished one-iteration run
    student = os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x.yaml")
    argv = ["--eval-only", "--config-file", student, *SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY,
            "DATASETS.TEST", "('d2dist_shapes_tiny_val',)", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "64", "MODEL.WEIGHTS", os.path.join(run, "model_final.pth"),
            "OUTPUT_DIR", run]  # fmt: skip
    load_tool("train_net").main(argument_parser().parse_args(argv))
    return run


def _the_runs_config_kept(run):
    with open(os.path.join(run, "config.yaml")) as f:
        assert "Distiller" in f.read()  # the run's own, as it was
    with open(os.path.join(run, "config.eval.yaml")) as f:
        evaluation = f.read()
    assert "META_ARCHITECTURE: GeneralizedRCNN" in evaluation, evaluation[:300]


def _new_run_beside_another_config(ctx):
    out = _dir_with(ctx, "log.txt")
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write("an earlier start's config\n")
    ctx.cli("OUTPUT_DIR", out)
    return out


def _earlier_config_kept(out):
    _trained(out)
    with open(os.path.join(out, "config.1.yaml")) as f:
        assert f.read() == "an earlier start's config\n"


def _export(ctx, capsys, *extra):
    run = ctx.cli()
    first = ["--run-dir", run]
    assert load_tool("export_student").main(first) == 0
    weights = os.path.join(run, "student.pth")
    before = os.path.getmtime(weights)
    if "--overwrite" in extra:
        assert load_tool("export_student").main([*first, *extra]) == 0
        return weights
    try:
        return _tool_error("export_student", [*first, *extra], capsys)
    finally:
        assert os.path.getmtime(weights) == before  # the earlier export is as it was


def _export_to_a_full_disk(ctx, capsys):
    run = ctx.cli()
    output = os.path.join(ctx.tmp, "exported", "student.pth")
    os.makedirs(os.path.dirname(output))
    os.symlink("/dev/full", output + ".tmp")  # writing the weights meets a full device
    try:
        return _tool_error("export_student", ["--run-dir", run, "--output", output], capsys)
    finally:
        assert not os.path.exists(output)  # nothing half-exported


def _lock_that_cannot_be_opened(ctx, capsys):
    out = ctx.out()
    os.makedirs(os.path.join(out, ".d2dist.lock"))  # (a file of another user's: the same fault)
    return _as_tool(ctx, capsys, "OUTPUT_DIR", out)


ENV_ROWS = [
    # ---- a diverging student
    ("a learning rate that makes the student diverge",
     lambda c, cap: _as_tool(c, cap, "SOLVER.BASE_LR", "1e8", "SOLVER.MAX_ITER", "20",
                             "SOLVER.CHECKPOINT_PERIOD", "1000"),
     r"error: the training diverged at iteration \d+: non-finite (distillation )?losses: "
     r".* = (nan|inf).*The run stopped and saved model_\d{7}.pth \(its state after iteration "
     r"\d+\) in .*run\d\. Lower the learning rate \(now 1e\+08\)"),
    ("a plain model that diverges (Detectron2's own checks)",
     lambda c, cap: _as_tool(c, cap, "SOLVER.BASE_LR", "1e8", "SOLVER.MAX_ITER", "20",
                             "SOLVER.CHECKPOINT_PERIOD", "1000", config=STUDENT_CFG),
     r"error: the training diverged at iteration \d+: (non-finite losses: .* = (nan|inf)|"
     r"Predicted boxes or scores contain Inf/NaN).*The run stopped and (saved model_\d{7}.pth|"
     r"nothing was saved).*Lower the learning rate"),
    # ---- nothing an earlier run or export wrote is overwritten; --resume never starts over
    ("a new run into a directory with checkpoints but no last_checkpoint",
     lambda c, _: _untagged_checkpoints_new_run(c),
     r"holds checkpoints of an earlier run \(model_0000004.pth\), without a last_checkpoint "
     r"naming the last one. Pass --resume"),
    ("--resume with checkpoints but no last_checkpoint",
     lambda c, _: _untagged_checkpoints_resume(c),
     r"--resume: OUTPUT_DIR '.*' holds checkpoints \(model_0000004.pth\) but no last_checkpoint "
     r"naming the one to continue.*echo model_0000004.pth >"),
    ("--resume in a directory without checkpoints (works: a new run, said so)",
     lambda c, _: _resume_in_an_empty_directory(c), _started_anew_and_said_so),
    ("--eval-only with another config in a run's OUTPUT_DIR (works: the run's config.yaml kept)",
     lambda c, _: _eval_only_into_a_run_with_another_config(c), _the_runs_config_kept),
    ("a new run beside an earlier start's config.yaml (works: kept as config.1.yaml)",
     lambda c, _: _new_run_beside_another_config(c), _earlier_config_kept),
    ("export over an earlier export", lambda c, cap: _export(c, cap),
     r"export_student.py: error: --output '.*student.pth': '.*student.pth' and '.*student.yaml' "
     r"exist already.*Pass --overwrite"),
    ("export over an earlier export with --overwrite (works)",
     lambda c, cap: _export(c, cap, "--overwrite"), os.path.isfile),
    # ---- the environment: one message naming the path and the cause, and what was saved
    ("export onto a full disk", _export_to_a_full_disk,
     r"export_student.py: error: could not write '.*student.pth': the disk is full \(No space "
     r"left on device\). Nothing was exported"),
    ("a run lock that cannot be opened", _lock_that_cannot_be_opened,
     r"could not open the run lock '.*\.d2dist\.lock' of OUTPUT_DIR '.*': it is a directory"),
]  # fmt: skip


def _unreadable_config(ctx, capsys):
    """A _BASE_ that cannot be read (here a directory; a file of another user's without read
    permission is the same fault, which root, who runs these tests here, does not meet)."""
    base = os.path.join(ctx.tmp, "base_dir.yaml")
    os.makedirs(base)
    config = os.path.join(ctx.tmp, "child.yaml")
    with open(config, "w") as f:
        f.write('_BASE_: "base_dir.yaml"\n')
    return _as_tool(ctx, capsys, config=config)


ENV_ROWS.append(
    ("a _BASE_ that cannot be read", _unreadable_config,
     r"error: config file '.*child.yaml': could not read '.*base_dir.yaml': it is a directory"),
)  # fmt: skip

"""Rows of tests/test_bad_input.py: config keys and values, the resume record, divergence (issue 22).

Each row is ``(what, run(ctx, capsys), expected)`` as in test_bad_input.CASES: ``expected`` is a
regular expression the :class:`~d2dist.errors.ConfigError` (or DataError) message must match, or
a callable that checks the result of a row that works.
"""

import os

import torch
from _bad_input import CONFIGS, DISTILL_CFG, TEACHER_CFG, TEACHER_OPTS, _config, _tool_error
from _tiny import LAZY_TINY_DATA, tiny_cfg
from _tools import load_tool
from detectron2.modeling import build_model

from d2dist.engine.lazy import lazy_argument_parser

LAZY_STUDENT = os.path.join(CONFIGS, "mask_rcnn_R18_FPN_1x.py")
LAZY_DISTILL = os.path.join(CONFIGS, "distplus_mask_rcnn_R18_from_ViTDet_tiny_1x.py")
# The LazyConfig student at tiny widths, one iteration (as tests/engine/test_lazy.py's R18_TINY).
LAZY_R18_TINY = [
    "model.backbone.out_channels=16", "model.proposal_generator.head.in_channels=16",
    "model.roi_heads.box_head.input_shape.channels=16", "model.roi_heads.box_head.fc_dims=[16, 16]",
    "model.roi_heads.box_predictor.input_shape.channels=16",
    "model.roi_heads.mask_head.input_shape.channels=16",
    "model.roi_heads.mask_head.conv_dims=[8, 8]",
    "model.backbone.bottom_up.stem.norm=BN", "model.backbone.norm=",
]  # fmt: skip
LAZY_ONE_STEP = [
    "train.max_iter=1", "lr_multiplier.scheduler.milestones=[10, 20]",
    "lr_multiplier.scheduler.num_updates=30", "train.log_period=1",
    "dataloader.test.dataset.names=d2dist_shapes_tiny_val",
]  # fmt: skip


def _lazy(ctx, *opts, config=LAZY_STUDENT, flags=()):
    """tools/lazyconfig_train_net.py's lazy_main, one step of the tiny LazyConfig student."""
    argv = [*flags, "--config-file", config, *LAZY_TINY_DATA, *LAZY_ONE_STEP]
    if config == LAZY_STUDENT:
        argv += LAZY_R18_TINY
    argv += [f"train.output_dir={ctx.out()}", *opts]
    return load_tool("lazyconfig_train_net").lazy_main(lazy_argument_parser().parse_args(argv))


def _lazy_file(ctx, name, lines):
    """A LazyConfig of the tiny student's own file with ``lines`` added (a user's config)."""
    text = (
        "from detectron2.config import LazyConfig\n"
        f"_base = LazyConfig.load({LAZY_STUDENT!r})\n"
        "model, dataloader, train = _base.model, _base.dataloader, _base.train\n"
        "optimizer, lr_multiplier = _base.optimizer, _base.lr_multiplier\n"
        + "".join(f"{line}\n" for line in lines)
    )
    return _lazy(ctx, config=_config(ctx, name, text))


def _nan_teacher(ctx):
    """The Shapes teacher's checkpoint with NaN in one tensor and Inf in another."""
    state = torch.load(ctx.teacher, weights_only=False)
    state["model"]["backbone.bottom_up.stem.conv1.weight"][0, 0, 0, 0] = float("nan")
    state["model"]["roi_heads.box_predictor.cls_score.bias"][0] = float("inf")
    path = str(ctx.tmp / "nan_teacher.pth")
    torch.save(state, path)
    return ctx.cli("MODEL.DISTILL.TEACHER.WEIGHTS", path)


def _reviewkd_width(ctx, width):
    """ReviewKD of a LazyConfig Distiller (TermSpec) with a MID_CHANNELS of ``width``."""
    from d2dist.modeling import TermSpec

    student = build_model(tiny_cfg("faster_rcnn"))
    teacher = build_model(tiny_cfg("faster_rcnn", "teacher"))
    return TermSpec("ReviewKD", mid_channels=width).build(student, teacher)


# ---- the resume record


def _checkpoint(out):
    with open(os.path.join(out, "last_checkpoint")) as f:
        return os.path.join(out, f.read().strip())


def _edit_record(out, edit):
    """The run's last checkpoint with its run record (the ``d2dist`` entry) edited."""
    path = _checkpoint(out)
    data = torch.load(path, weights_only=False)
    edit(data)
    torch.save(data, path)


def _resume(ctx, out, *opts):
    """The run in ``out`` resumed for a second iteration; returns ``out``."""
    ctx.cli("OUTPUT_DIR", out, "SOLVER.MAX_ITER", "2", *opts, flags=["--resume"])
    return out


def _resume_without_a_record(ctx):
    out = ctx.cli()
    _edit_record(out, lambda data: data.pop("d2dist"))
    return _resume(ctx, out)


def _warned_of_no_record(out):
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "model_final.pth holds no run record" in log, log[-3000:]
    assert "cannot be compared" in log, log[-3000:]


def _resume_a_garbled_record(ctx):
    out = ctx.cli()
    _edit_record(out, lambda data: data.update(d2dist="config: not a record"))
    return _resume(ctx, out)


def _teacher_files(ctx):
    """A copy of the Shapes teacher's config and its _BASE_ file, to be changed."""
    base = ctx.tmp / "t_base.yaml"
    with open(os.path.join(CONFIGS, "Base-Shapes-RCNN-FPN.yaml")) as f:
        text = f.read()
    root = os.path.join(os.path.dirname(CONFIGS), "Base-RCNN-FPN.yaml")
    base.write_text(text.replace('_BASE_: "../Base-RCNN-FPN.yaml"', f'_BASE_: "{root}"'))
    with open(TEACHER_CFG) as f:
        text = f.read().replace('_BASE_: "Base-Shapes-RCNN-FPN.yaml"', '_BASE_: "t_base.yaml"')
    config = ctx.tmp / "t_cfg.yaml"
    config.write_text(text)
    return config, base


def _resume_with_a_changed_teacher_file(ctx, which):
    config, base = _teacher_files(ctx)
    teacher = ("MODEL.DISTILL.TEACHER.CONFIG_FILE", str(config))
    out = ctx.cli(*teacher)
    changed = {"config": config, "base": base}[which]
    changed.write_text(changed.read_text() + "# changed after the run started\n")
    return _resume(ctx, out, *teacher)


CONFIG_ROWS = [
    # ---- LazyConfig: typos refused before anything is built
    ("LazyConfig: an override that adds a key (train.max_iterr=1)",
     lambda c, _: _lazy(c, "train.max_iterr=1"),
     r"train.max_iterr=1: train has no key 'max_iterr' .*the closest is train.max_iter"),
    ("LazyConfig: an unregistered dataset",
     lambda c, _: _lazy(c, "dataloader.train.dataset.names=d2dist_shapes_tiny_trian"),
     r"dataloader.train.dataset.names names 'd2dist_shapes_tiny_trian', which is not a registered "
     r"dataset.*the closest is 'd2dist_shapes_tiny_train'"),
    ("LazyConfig: a _target_ that cannot be imported",
     lambda c, _: _lazy(c, "model.backbone.bottom_up._target_=detectron2.modeling.ResNett"),
     r"model.backbone.bottom_up._target_='detectron2.modeling.ResNett' cannot be imported.*"
     r"detectron2.modeling has no 'ResNett'.*the closest is 'ResNet'"),
    ("LazyConfig: a misspelled constructor argument",
     lambda c, _: _lazy_file(c, "typo.py", ["model.backbone.out_chanels = 16"]),
     r"model.backbone.out_chanels: .*FPN takes no argument 'out_chanels'.*the closest is "
     r"'out_channels'"),
    ("LazyConfig: an override that misspells a constructor argument",
     lambda c, _: _lazy(c, "model.roi_heads.box_predictor.test_score_tresh=0.5"),
     r"model.roi_heads.box_predictor.test_score_tresh: .*FastRCNNOutputLayers takes no argument "
     r"'test_score_tresh'.*the closest is 'test_score_thresh'"),
    ("LazyConfig: a non-integer width",
     lambda c, _: _lazy(c, "model.proposal_generator.head.in_channels=16.5"),
     r"model.proposal_generator.head.in_channels=16.5: StandardRPNHead's in_channels is an int"),
    ("LazyConfig: a string for train.max_iter", lambda c, _: _lazy(c, "train.max_iter=abc"),
     r"train.max_iter='abc' is a str; it must be an int >= 1"),
    ("LazyConfig: a string for the optimizer's lr", lambda c, _: _lazy(c, "optimizer.lr=abc"),
     r"optimizer.lr='abc': SGD's lr is a float"),
    ("LazyConfig: a PIXEL_STD of zero", lambda c, _: _lazy(c, "model.pixel_std=[0.0, 1.0, 1.0]"),
     r"model.pixel_std=\[0.0, 1.0, 1.0\]: .*standard deviations must be finite and > 0"),
    ("LazyConfig: teacher autocast float16 on the CPU",
     lambda c, _: _lazy(c, "model.teacher.autocast=float16", config=LAZY_DISTILL),
     r"model.teacher.autocast='float16' with train.device='cpu'.*NaN.*bfloat16"),
    # ---- yacs: wrong types, named with the expected type and the closest key
    ("a string for SOLVER.MAX_ITER", lambda c, _: c.cli("SOLVER.MAX_ITER", "abc"),
     r"command-line overrides: config key: SOLVER.MAX_ITER takes an int \(like its current "
     r"value, 1\), but was given 'abc', a str"),
    ("a string for SOLVER.BASE_LR", lambda c, _: c.cli("SOLVER.BASE_LR", "abc"),
     r"config key: SOLVER.BASE_LR takes a float \(like its current value, 0.02\), but was given "
     r"'abc'"),
    ("a string for SOLVER.IMS_PER_BATCH", lambda c, _: c.cli("SOLVER.IMS_PER_BATCH", "abc"),
     r"config key: SOLVER.IMS_PER_BATCH takes an int \(like its current value, 2\), but was "
     r"given 'abc'"),
    ("None for SOLVER.MAX_ITER", lambda c, _: c.cli("SOLVER.MAX_ITER", "None"),
     r"config key: SOLVER.MAX_ITER takes an int .*but was given None"),
    ("an int for a float (BASE_LR 1)", lambda c, _: c.cli("SOLVER.BASE_LR", "1"),
     r"SOLVER.BASE_LR takes a float .*but was given 1, an int: write 1.0"),
    ("a non-integer width", lambda c, _: c.cli("MODEL.FPN.OUT_CHANNELS", "16.5"),
     r"config key: MODEL.FPN.OUT_CHANNELS takes an int \(like its current value, 16\), but was "
     r"given 16.5"),
    ("a non-integer width of a LazyConfig term (TermSpec)",
     lambda c, _: _reviewkd_width(c, 8.5),
     r"MODEL.DISTILL.REVIEWKD.MID_CHANNELS=8.5: the ABF width must be an int >= 1"),
    ("strings in PIXEL_STD", lambda c, _: c.cli("MODEL.PIXEL_STD", "['a', 'b', 'c']"),
     r"config key: MODEL.PIXEL_STD takes a list of numbers .*but was given \['a', 'b', 'c'\]"),
    ("an unknown key in a config file names the closest",
     lambda c, _: c.cli(config=_config(c, "typo.yaml", f'_BASE_: "{DISTILL_CFG}"\nMODEL:\n'
                                       "  DISTILL:\n    MIMIC:\n      WIEGHT: 2.0\n")),
     r"config file '.*typo.yaml': Non-existent config key: MODEL.DISTILL.MIMIC.WIEGHT.*"
     r"The closest key is MODEL.DISTILL.MIMIC.WEIGHT"),
    ("an unknown key on the command line names the closest",
     lambda c, _: c.cli("SOLVER.MAX_ITERS", "1"),
     r"Non-existent key: SOLVER.MAX_ITERS.*The closest key is SOLVER.MAX_ITER\b"),
    # ---- values without meaning
    ("a PIXEL_STD of zero", lambda c, _: c.cli("MODEL.PIXEL_STD", "[0.0, 57.12, 58.395]"),
     r"MODEL.PIXEL_STD=\[0.0, 57.12, 58.395\]: .*standard deviations must be finite and > 0"),
    ("a teacher PIXEL_STD of zero",
     lambda c, _: c.cli(teacher_opts=TEACHER_OPTS + ["MODEL.PIXEL_STD", "[1.0, 0.0, 1.0]"]),
     r"teacher config '.*faster_rcnn_R50_FPN_3x.yaml'.*MODEL.PIXEL_STD=\[1.0, 0.0, 1.0\]"),
    ("a term WEIGHT of 1e30", lambda c, _: c.cli("MODEL.DISTILL.MIMIC.WEIGHT", "1e30"),
     r"MODEL.DISTILL.MIMIC.WEIGHT=1e\+30 is above 1e\+06"),
    ("teacher AUTOCAST float16 on the CPU",
     lambda c, _: c.cli("MODEL.DISTILL.TEACHER.AUTOCAST", "float16"),
     r"MODEL.DISTILL.TEACHER.AUTOCAST='float16' with MODEL.DEVICE='cpu'.*NaN.*bfloat16"),
    ("a teacher checkpoint with NaN weights", lambda c, _: _nan_teacher(c),
     r"'.*nan_teacher.pth' holds NaN or Inf values in 2 tensors of the teacher: "
     r"\['backbone.bottom_up.stem.conv1.weight', 'roi_heads.box_predictor.cls_score.bias'\]"),
    # ---- the resume record
    ("--resume from a checkpoint without a run record (works, with a warning)",
     lambda c, _: _resume_without_a_record(c), _warned_of_no_record),
    ("--resume from a checkpoint with a garbled run record",
     lambda c, _: _resume_a_garbled_record(c),
     r"the run record of '.*model_final.pth' \(its 'd2dist' entry\) is garbled \(a str, not a "
     r"mapping\).*--allow-config-change"),
    ("--resume after the teacher's config file changed",
     lambda c, _: _resume_with_a_changed_teacher_file(c, "config"),
     r"teacher config file '.*t_cfg.yaml' \(contents\): [0-9a-f]{12} -> [0-9a-f]{12}"),
    ("--resume after a _BASE_ file of the teacher's config changed",
     lambda c, _: _resume_with_a_changed_teacher_file(c, "base"),
     r"teacher config's _BASE_ file '.*t_base.yaml' \(contents\): [0-9a-f]{12} -> [0-9a-f]{12}"),
]  # fmt: skip


def _yacs_student_with_a_misspelled_override(ctx, capsys):
    from d2dist.modeling.lazy import yacs_model

    student = os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x.yaml")
    yacs_model(student, opts=["MODEL.RESNET.DEPTH", "18"])


CONFIG_ROWS += [
    ("export: a misspelled override names the closest key",
     lambda c, cap: _tool_error("export_student", ["--config-file", DISTILL_CFG,
                                                   "SOLVER.MAX_ITERS", "3"], cap),
     r"export_student.py: error: command-line overrides: Non-existent key: SOLVER.MAX_ITERS.*"
     r"The closest key is SOLVER.MAX_ITER"),
    ("LazyConfig: a yacs student (yacs_model) with a misspelled override",
     _yacs_student_with_a_misspelled_override,
     r"yacs_model\('.*faster_rcnn_R18_FPN_1x.yaml'\), opts=.*Non-existent key: MODEL.RESNET.DEPTH"
     r".*The closest key is MODEL.RESNETS.DEPTH"),
]  # fmt: skip

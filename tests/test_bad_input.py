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
from _tiny import (
    SHAPES_STUDENT_TINY,
    SHAPES_TEACHER_TINY,
    SHAPES_TINY_DATA,
    build_distiller,
    distill_cfg,
    inputs,
    write_teacher,
)
from _tools import load_tool
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from d2dist.config import ConfigError, get_cfg
from d2dist.engine import argument_parser, launch_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "Shapes-Detection")
TEACHER_CFG = os.path.join(CONFIGS, "faster_rcnn_R50_FPN_3x.yaml")
DISTILL_CFG = os.path.join(CONFIGS, "mimic_faster_rcnn_R18_from_R50_FPN_1x.yaml")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")

ONE_STEP = SHAPES_TINY_DATA + SHAPES_STUDENT_TINY + [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
    "DATASETS.TEST", "()", "MODEL.DISTILL.MIMIC.WEIGHT", "0.01",
]  # fmt: skip
TEACHER_OPTS = SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY
FIVE_CLASSES = ["MODEL.ROI_HEADS.NUM_CLASSES", "5"]

DatasetCatalog.register("bad_input_empty", lambda: [])
DatasetCatalog.register(
    "bad_input_unannotated",
    lambda: [
        {"file_name": f"{i}.jpg", "image_id": i, "height": 64, "width": 64, "annotations": []}
        for i in range(4)
    ],
)


class Ctx:
    """What the rows run with: a scratch directory, Shapes teachers, tiny teachers per arch."""

    def __init__(self, tmp_path, teachers):
        self.tmp = tmp_path
        self.teacher, self.five_class_teacher = teachers
        self.corrupt = str(tmp_path / "corrupt.pth")
        with open(self.corrupt, "wb") as f:
            f.write(b"\x00 not a checkpoint")
        self.missing = str(tmp_path / "missing.pth")
        self._runs = 0

    def out(self) -> str:
        self._runs += 1
        return str(self.tmp / f"run{self._runs}")

    def opts(self, *extra, teacher_opts=TEACHER_OPTS):
        return [
            *ONE_STEP, "OUTPUT_DIR", self.out(),
            "MODEL.DISTILL.TEACHER.WEIGHTS", self.teacher,
            "MODEL.DISTILL.TEACHER.OPTS", str(list(teacher_opts)), *extra,
        ]  # fmt: skip

    def cli(self, *extra, config=DISTILL_CFG, teacher_opts=TEACHER_OPTS, flags=()):
        """tools/train_net.py's main in this process (a ConfigError propagates)."""
        argv = [*flags, "--config-file", config, *self.opts(*extra, teacher_opts=teacher_opts)]
        load_tool("train_net").main(argument_parser().parse_args(argv))
        return argv[argv.index("OUTPUT_DIR") + 1]

    def step(self, arch, batch, losses=("MIMIC", "KD"), **student):
        """One training step of a tiny Distiller of ``arch`` on ``batch``."""
        cfg = distill_cfg(arch, *write_teacher(str(self.tmp), arch), losses=losses)
        for key, value in student.items():  # KEY__SUB=value
            *path, last = key.split("__")
            node = cfg
            for part in path:
                node = node[part]
            node[last] = value
        model = build_distiller(cfg)
        model.train()
        with EventStorage(0):
            return model(batch)


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


def _finite(losses):
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    assert any(k.startswith("loss_distill_") for k in losses)


def _trained(out):
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


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
]  # fmt: skip


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
    assert len(CASES) >= 15 and len({what for what, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("what,run,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(what, run, expected, tmp_path, teachers, capsys):
    ctx = Ctx(tmp_path, teachers)
    if callable(expected):
        expected(run(ctx, capsys))
        return
    with pytest.raises(ConfigError, match=expected):
        run(ctx, capsys)
        pytest.fail(f"{what}: ran without an error")

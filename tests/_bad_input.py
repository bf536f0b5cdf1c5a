"""What the rows of tests/test_bad_input.py run with: the context (a scratch directory, the Shapes
teachers, tiny teachers per arch), the settings of a one-step run and helpers the row modules
share (tests/_bad_input_*.py hold rows of their own kind; test_bad_input.py runs them all)."""

import os
import re

import torch
from _tiny import (
    SHAPES_STUDENT_TINY,
    SHAPES_TEACHER_TINY,
    SHAPES_TINY_DATA,
    build_distiller,
    distill_cfg,
    write_teacher,
)
from _tools import load_tool
from detectron2.data import DatasetCatalog
from detectron2.utils.events import EventStorage

from d2dist.engine import argument_parser
from d2dist.errors import ConfigError

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


def _finite(losses):
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    assert any(k.startswith("loss_distill_") for k in losses)


def _trained(out):
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def _config(ctx, name, text):
    path = ctx.tmp / name
    path.write_text(text)
    return str(path)


def _one_message(status, capsys):
    """A tool's end as a user sees it: status 2 and its message, no traceback, raised as a
    ConfigError for the row's check (d2dist's other errors, DataError and RunFault, are printed
    alike)."""
    err = capsys.readouterr().err
    # (a logger whose handler holds an earlier test's captured, closed stdout reports that as a
    # "Logging error" with a traceback of its own: a test-process artefact, not the tool's)
    err = re.sub(r"--- Logging error ---.*?^Arguments:.*?$", "", err, flags=re.S | re.M)
    assert status == 2 and "Traceback" not in err, (status, err[-3000:])
    raise ConfigError(err)


def _tool_error(tool, argv, capsys):
    """A tool's ``main`` run as a user runs it: status 2 and a one-line message, no traceback."""
    _one_message(load_tool(tool).main(argv), capsys)


def _as_tool(ctx, capsys, *extra, config=DISTILL_CFG, flags=()):
    """tools/train_net.py as a user runs it (through launch_cli): it must exit with status 2 and
    print one message without a traceback (:func:`_one_message`)."""
    from d2dist.engine import launch_cli

    tool = load_tool("train_net")
    args = argument_parser().parse_args([*flags, "--config-file", config, *ctx.opts(*extra)])
    _one_message(launch_cli(tool.main, args), capsys)

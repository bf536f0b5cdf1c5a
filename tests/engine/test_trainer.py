"""The trainer extends Detectron2 through its extension points: a project's own base class keeps
its ``__init__``; what ``DefaultTrainer.__init__`` builds, d2dist builds in the same order; a bug
in a model keeps its traceback, and ``--debug`` shows a d2dist error's too."""

import ast
import inspect
import os
import subprocess
import sys
import textwrap

import pytest
from _tiny import (
    SHAPES_STUDENT_TINY,
    SHAPES_TEACHER_TINY,
    SHAPES_TINY_DATA,
    save_random_weights,
    shapes_distill_opts,
)
from detectron2.engine import DefaultTrainer

from d2dist.checkpoint import AtomicCheckpointer
from d2dist.config import get_cfg
from d2dist.engine import DistillationMixin
from d2dist.engine.steps import stopping_without_traceback
from d2dist.engine.trainer import DefaultTrainerParts
from d2dist.errors import ConfigError
from d2dist.evaluation import build_evaluator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
STUDENT_CFG = os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml")
TEACHER_CFG = os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml")
DISTILL_CFG = os.path.join(SHAPES, "mimic_faster_rcnn_R18_from_R50_FPN_1x.yaml")
ONE_STEP = ["SOLVER.MAX_ITER", "1", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "DATASETS.TEST", "()"]  # fmt: skip


class ProjectTrainer(DefaultTrainer):
    """A project's own trainer, with an ``__init__`` of its own (around DefaultTrainer's)."""

    def __init__(self, cfg):
        self.calls = ["project: before"]
        super().__init__(cfg)
        self.calls.append(f"project: after, checkpointer {type(self.checkpointer).__name__}")

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)


class UsersTrainer(DistillationMixin, ProjectTrainer):
    pass


def test_a_projects_own_base_class_keeps_its_init(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(STUDENT_CFG)
    cfg.merge_from_list(SHAPES_TINY_DATA + SHAPES_STUDENT_TINY + ONE_STEP)
    cfg.OUTPUT_DIR = str(tmp_path)
    order = UsersTrainer.__mro__
    # d2dist's parts come after the project's class, right before DefaultTrainer
    assert order.index(ProjectTrainer) < order.index(DefaultTrainerParts)
    assert order.index(DefaultTrainerParts) + 1 == order.index(DefaultTrainer)
    trainer = UsersTrainer(cfg)
    assert trainer.calls == ["project: before", "project: after, checkpointer AtomicCheckpointer"]
    assert isinstance(trainer.checkpointer, AtomicCheckpointer)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == 1 and os.path.isfile(tmp_path / "model_final.pth")


def _construction(init):
    """What an ``__init__`` builds, in order: the trainer's ``build_*`` methods it calls and the
    attributes it sets on ``self``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    steps = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "self" and (
                node.attr.startswith("build_") or isinstance(node.ctx, ast.Store)
            ):
                steps.append((node.lineno, node.col_offset, node.attr))
    return [name for _, _, name in sorted(steps)]


def test_d2dist_builds_what_default_trainer_builds_in_its_order():
    """If Detectron2 changes what DefaultTrainer.__init__ builds, this fails (review
    DefaultTrainerParts then)."""
    upstream = _construction(DefaultTrainer.__init__)
    ours = _construction(DefaultTrainerParts.__init__)
    assert upstream == [
        "build_model", "build_optimizer", "build_train_loader", "_trainer",
        "scheduler", "build_lr_scheduler", "checkpointer", "start_iter", "max_iter", "cfg",
        "build_hooks",
    ]  # fmt: skip
    assert [s for s in ours if s not in ("build_ddp_model", "build_checkpointer")] == upstream


def test_the_mixin_must_come_with_a_default_trainer(tmp_path):
    class Alone(DistillationMixin):
        pass

    with pytest.raises(TypeError, match="DistillationMixin goes before DefaultTrainer"):
        Alone(get_cfg())


BUGGY_PROJECT = """
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN


@META_ARCH_REGISTRY.register()
class BuggyRCNN(GeneralizedRCNN):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.heads = self.roi_heads.box_heads_of_another_project  # the bug: no such attribute


def add_buggy_config(cfg):
    pass
"""


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    return save_random_weights(TEACHER_CFG, SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY, path)


def _train_net(tmp_path, *argv, env=None):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "buggy_project.py").write_text(BUGGY_PROJECT)
    env = {**os.environ, "PYTHONPATH": f"{project}:{REPO}", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )


def test_a_bug_in_a_students_constructor_ends_with_its_traceback(teacher_weights, tmp_path):
    done = _train_net(
        tmp_path, "--config-function", "buggy_project.add_buggy_config",
        "--config-file", DISTILL_CFG, *shapes_distill_opts(teacher_weights), *ONE_STEP,
        "MODEL.DISTILL.STUDENT_META_ARCHITECTURE", "BuggyRCNN", "OUTPUT_DIR", str(tmp_path / "o"),
    )  # fmt: skip
    err = done.stderr
    assert done.returncode == 1, (done.returncode, err[-3000:])
    assert "Traceback" in err and "buggy_project.py" in err, err[-3000:]
    assert "AttributeError" in err and "box_heads_of_another_project" in err, err[-3000:]
    assert "MODEL.DISTILL.STUDENT_META_ARCHITECTURE='BuggyRCNN'" in err  # the note: where
    assert "ConfigError" not in err and "train_net.py: error:" not in err, err[-3000:]


def test_debug_shows_a_config_errors_traceback(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    plain = _train_net(tmp_path, "--config-file", missing)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr, plain.stderr[-3000:]
    assert f"train_net.py: error: --config-file {missing!r} does not exist" in plain.stderr
    for argv, env in ((["--debug"], None), ([], {"D2DIST_DEBUG": "1"})):
        shown = _train_net(tmp_path, *argv, "--config-file", missing, env=env)
        assert shown.returncode == 1, shown.stderr[-3000:]
        assert "Traceback" in shown.stderr and "d2dist.errors.ConfigError: --config-file" in (
            shown.stderr
        ), shown.stderr[-3000:]


def test_a_d2dist_error_leaves_the_training_loop_without_its_traceback_unless_debugging(
    monkeypatch,
):
    from d2dist.engine.steps import _Stopped, reporting_d2dist_errors

    error = ConfigError("the message")
    with pytest.raises(_Stopped):
        with stopping_without_traceback():
            raise error
    with pytest.raises(ConfigError, match="the message") as raised:
        with reporting_d2dist_errors(), stopping_without_traceback():
            raise error
    assert raised.value is error and raised.value.__traceback__ is not None
    with pytest.raises(KeyError):  # anything else: as it is
        with stopping_without_traceback():
            raise KeyError("a bug")
    monkeypatch.setenv("D2DIST_DEBUG", "1")
    with pytest.raises(ConfigError):
        with stopping_without_traceback():
            raise error


def test_colour_codes_are_kept_out_of_the_logs_during_setup_only():
    import logging

    from d2dist.engine.run import _plain_text

    logger = logging.getLogger("detectron2")
    before = list(logger.filters)
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        with _plain_text():
            logger.warning("\x1b[38;5;197mMODEL\x1b[39m: x")
        logger.warning("\x1b[1mafter\x1b[0m")
    finally:
        logger.removeHandler(handler)
    assert seen == ["MODEL: x", "\x1b[1mafter\x1b[0m"]
    assert logger.filters == before  # Detectron2's logger as it was


def test_a_signal_between_steps_never_interrupts_an_import(tmp_path, monkeypatch):
    """Between two steps a signal stops the run at once (an exception raised where the code is),
    except inside an import, where that would leave a half-initialised module behind (a writer's
    first lazy import, seen once in CI): there it is noted, and the run stops after the hooks."""
    import importlib
    import signal
    import sys

    from d2dist.engine.faults import PreemptionHook, _Interrupted

    hook = PreemptionHook(checkpointer=None)
    hook.interruptible = True
    (tmp_path / "imported_while_signalled.py").write_text(
        "import signal, sys\nHOOK._note(signal.SIGTERM, sys._getframe())\nDONE = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr("builtins.HOOK", hook, raising=False)
    module = importlib.import_module("imported_while_signalled")
    assert module.DONE and hook.signal == signal.SIGTERM and hook.interruptible  # noted only
    with pytest.raises(_Interrupted):  # elsewhere: at once
        hook._note(signal.SIGTERM, sys._getframe())
    hook.after_train()

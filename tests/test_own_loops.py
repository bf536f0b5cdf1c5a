"""Scripts that load weights themselves, with the README's recipes: Detectron2's
tools/lazyconfig_train_net.py and a project's own training loop (CenterNet2's train_net.py),
each as a test script shaped like upstream's (tests/projects/, the lines the diffs touch identical
to upstream's), patched with the README's diff. A Distiller's teacher is loaded, its student
initialised from the plain checkpoint given (never left random), the run resumed and extended,
and evaluation builds the student alone (the teacher's files may be gone). Unpatched, the
Distiller refuses to train and names the fix."""

import importlib.util
import json
import os

import pytest
import torch
from _tiny import (
    LAZY_TINY_DATA,
    SHAPES_STUDENT_TINY,
    SHAPES_TEACHER_TINY,
    SHAPES_TINY_DATA,
    save_random_weights,
)
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import default_argument_parser
from test_own_train_net import PROJECTS, SCRIPTS, patched

from d2dist.modeling import TeacherNotLoadedError

pytestmark = pytest.mark.slow  # training runs of users' own scripts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
LAZY_STUDENT = os.path.join(SHAPES, "mask_rcnn_R18_FPN_1x.py")
LAZY_DISTILL = os.path.join(SHAPES, "distplus_mask_rcnn_R18_from_ViTDet_tiny_1x.py")
LAZY_DATA = LAZY_TINY_DATA
R18 = ["roi_heads.box_head.fc_dims=[16, 16]", "roi_heads.box_predictor.input_shape.channels=16",
       "roi_heads.mask_head.conv_dims=[8, 8]", "backbone.bottom_up.stem.norm=BN",
       "backbone.norm="]  # fmt: skip


def _width(w):
    return [f"backbone.out_channels={w}", f"proposal_generator.head.in_channels={w}",
            f"roi_heads.box_head.input_shape.channels={w}",
            f"roi_heads.mask_head.input_shape.channels={w}"]  # fmt: skip


STUDENT = [f"model.{o}" for o in R18 + _width(16)]
TEACHER = [f"model.{o}" for o in R18 + _width(32)]


def _lazy_args(config, out, *opts, flags=()):
    return default_argument_parser().parse_args(
        [*flags, "--config-file", config, *LAZY_DATA, *opts, f"train.output_dir={out}"]
    )


def _params(state):
    """The floating-point parameters of a state dict (BatchNorm statistics change even at LR 0)."""
    return {k: v for k, v in state.items() if v.is_floating_point() and "running_" not in k}


@pytest.fixture(scope="module")
def lazy_setup(tmp_path_factory):
    """A LazyConfig teacher (the R18 student config at width 32) and a plain student checkpoint,
    both random weights saved by the test; the Distiller's overrides for them."""
    tmp = tmp_path_factory.mktemp("lazy")
    teacher = LazyConfig.apply_overrides(LazyConfig.load(LAZY_STUDENT), TEACHER)
    teacher_weights = str(tmp / "teacher.pth")
    torch.save({"model": instantiate(teacher.model).state_dict()}, teacher_weights)
    student = LazyConfig.apply_overrides(LazyConfig.load(LAZY_STUDENT), STUDENT)
    torch.manual_seed(3)
    plain = str(tmp / "plain_student.pth")
    torch.save({"model": instantiate(student.model).state_dict()}, plain)
    distill = [o.replace("model.", "model.student.", 1) for o in STUDENT] + [
        f"model.teacher.config_file={LAZY_STUDENT}", f"model.teacher.weights={teacher_weights}",
        f"model.teacher.opts={[o for o in TEACHER]!r}", "optimizer.lr=0.0",
        "lr_multiplier.scheduler.milestones=[10, 20]", "lr_multiplier.scheduler.num_updates=30",
        "train.checkpointer.period=2", "train.log_period=1", "train.eval_period=0",
    ]  # fmt: skip
    return distill, plain


def test_upstream_lazyconfig_train_net_with_the_readme_s_lines(lazy_setup, tmp_path):
    distill, plain = lazy_setup
    script = patched("tools/lazyconfig_train_net.py", tmp_path)
    out = str(tmp_path / "run")
    script.main(_lazy_args(LAZY_DISTILL, out, *distill, "train.max_iter=2",
                           f"train.init_checkpoint={plain}"))  # fmt: skip
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    # At LR 0 the student's parameters are those of train.init_checkpoint: it was loaded.
    expected = _params(torch.load(plain, weights_only=False)["model"])
    got = _params({k: v for k, v in final.items() if not k.startswith("terms.")})
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    with open(os.path.join(out, "metrics.json")) as f:
        assert all("loss_distill_dist" in json.loads(line) for line in f if "total_loss" in line)

    # --resume with a longer schedule continues the run.
    script.main(_lazy_args(LAZY_DISTILL, out, *distill, "train.max_iter=4",
                           f"train.init_checkpoint={plain}", flags=["--resume"]))  # fmt: skip
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["iteration"] == 3

    # --eval-only builds the student alone: the teacher's files may be gone.
    results = script.main(_lazy_args(
        LAZY_DISTILL, str(tmp_path / "eval"), *distill, "model.teacher.config_file=/nowhere.py",
        "model.teacher.weights=/nowhere.pth", f"train.init_checkpoint={out}/model_final.pth",
        flags=["--eval-only"]))  # fmt: skip
    assert "bbox" in results


def test_upstream_lazyconfig_train_net_with_load_teacher_alone(lazy_setup, tmp_path):
    """A user who only adds ``model.load_teacher()`` to upstream's script: its own
    ``checkpointer.resume_or_load(train.init_checkpoint)`` initialises the Distiller's student
    (Detectron2's checkpointer, the Distiller's own load_state_dict)."""
    distill, plain = lazy_setup
    original = os.path.join(PROJECTS, SCRIPTS["tools/lazyconfig_train_net.py"])
    with open(original) as f:
        text = f.read()
    line = "    model.to(cfg.train.device)\n    cfg.optimizer.params.model = model\n"
    assert text.count(line) == 1
    script = tmp_path / "lazyconfig_train_net.py"
    script.write_text(text.replace(line, "    model.load_teacher()\n" + line))
    spec = importlib.util.spec_from_file_location("user_lazy_load_teacher", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = str(tmp_path / "run")
    module.main(_lazy_args(LAZY_DISTILL, out, *distill, "train.max_iter=1",
                           f"train.init_checkpoint={plain}"))  # fmt: skip
    expected = _params(torch.load(plain, weights_only=False)["model"])
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    got = _params({k: v for k, v in final.items() if not k.startswith("terms.")})
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_upstream_lazyconfig_train_net_without_them_names_the_fix(lazy_setup, tmp_path):
    distill, plain = lazy_setup
    spec = importlib.util.spec_from_file_location(
        "upstream_lazy", os.path.join(PROJECTS, SCRIPTS["tools/lazyconfig_train_net.py"])
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(
        TeacherNotLoadedError, match=r"d2dist\.checkpoint\.resume_or_load\(checkpointer"
    ):
        script.main(_lazy_args(LAZY_DISTILL, str(tmp_path / "run"), *distill, "train.max_iter=1",
                               f"train.init_checkpoint={plain}"))  # fmt: skip


def test_a_project_s_own_training_loop_with_the_readme_s_lines(tmp_path):
    """CenterNet2's shape: build_model, its own loop, Detectron2's checkpointer."""
    script = patched("train_net.py", tmp_path)
    student_cfg = os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml")
    teacher_cfg = os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml")
    teacher = save_random_weights(
        teacher_cfg, SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY, str(tmp_path / "teacher.pth")
    )
    plain = save_random_weights(
        student_cfg, SHAPES_TINY_DATA[:2] + SHAPES_STUDENT_TINY, str(tmp_path / "plain.pth"), 3
    )

    distill = [
        *SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY, "SOLVER.BASE_LR", "0.0", "SOLVER.STEPS", "(1,)",
        "MODEL.META_ARCHITECTURE", "Distiller",
        "MODEL.DISTILL.TEACHER.CONFIG_FILE", teacher_cfg, "MODEL.DISTILL.TEACHER.WEIGHTS", teacher,
        "MODEL.DISTILL.TEACHER.OPTS", str(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY),
        "MODEL.DISTILL.LOSSES", "['MIMIC', 'KD']", "MODEL.WEIGHTS", plain,
        "SOLVER.CHECKPOINT_PERIOD", "2",
    ]  # fmt: skip
    out = str(tmp_path / "run")

    def args(*opts, flags=()):
        return default_argument_parser().parse_args(
            [*flags, "--config-file", student_cfg, *distill, *opts, "OUTPUT_DIR", out]
        )

    results = script.main(args("SOLVER.MAX_ITER", "2"))
    assert "AP" in results["bbox"]
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert final["iteration"] == 1
    expected = _params(torch.load(plain, weights_only=False)["model"])
    got = _params({k: v for k, v in final["model"].items() if not k.startswith("terms.")})
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)  # MODEL.WEIGHTS was loaded
    with open(os.path.join(out, "metrics.json")) as f:
        assert any("loss_distill_kd" in json.loads(line) for line in f)

    # --resume with a longer schedule continues at the next iteration.
    script.main(args("SOLVER.MAX_ITER", "4", flags=["--resume"]))
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["iteration"] == 3

    # --eval-only builds the student alone: the teacher's files may be gone.
    results = script.main(default_argument_parser().parse_args(
        ["--eval-only", "--config-file", student_cfg, *distill,
         "MODEL.DISTILL.TEACHER.CONFIG_FILE", "/nowhere.yaml",
         "MODEL.DISTILL.TEACHER.WEIGHTS", "/nowhere.pth",
         "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
         "OUTPUT_DIR", str(tmp_path / "eval")]))  # fmt: skip
    assert "AP" in results["bbox"]

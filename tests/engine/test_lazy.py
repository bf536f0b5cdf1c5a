"""LazyConfig: tools/lazyconfig_train_net.py for plain models and Distillers, a LazyConfig (ViTDet-
style) teacher under a yacs student, kill and resume, eval-only without a teacher, and export."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from _plain import assert_same_predictions, plain_predictions, run_predictions
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TINY_DATA
from _tools import load_tool
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog
from detectron2.engine import default_argument_parser

from d2dist.engine import argument_parser
from d2dist.errors import ConfigError

pytestmark = pytest.mark.slow  # LazyConfig training runs, one killed and resumed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
VIT_TEACHER = os.path.join(SHAPES, "mask_rcnn_ViTDet_tiny_3x.py")
LAZY_STUDENT = os.path.join(SHAPES, "mask_rcnn_R18_FPN_1x.py")
LAZY_DISTILL = os.path.join(SHAPES, "distplus_mask_rcnn_R18_from_ViTDet_tiny_1x.py")
YACS_DISTILL = os.path.join(SHAPES, "distplus_mask_rcnn_R18_from_ViTDet_tiny_1x.yaml")


# Tiny sizes and the tiny dataset, as LazyConfig key=value overrides.
LAZY_DATA = [
    "train.device=cpu", "dataloader.train.dataset.names=d2dist_shapes_tiny_train",
    "dataloader.test.dataset.names=d2dist_shapes_tiny_val", "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
]  # fmt: skip
VIT_TINY = ["model.backbone.net.embed_dim=32", "model.backbone.net.depth=1",
            "model.backbone.net.num_heads=2", "model.backbone.out_channels=16",
            "model.proposal_generator.head.in_channels=16",
            "model.roi_heads.box_head.input_shape.channels=16",
            "model.roi_heads.box_head.conv_dims=[16]", "model.roi_heads.box_head.fc_dims=[32]",
            "model.roi_heads.box_predictor.input_shape.channels=32",
            "model.roi_heads.mask_head.input_shape.channels=16",
            "model.roi_heads.mask_head.conv_dims=[8, 8]"]  # fmt: skip
R18_TINY = ["model.backbone.out_channels=16", "model.proposal_generator.head.in_channels=16",
            "model.roi_heads.box_head.input_shape.channels=16",
            "model.roi_heads.box_head.fc_dims=[16, 16]",
            "model.roi_heads.box_predictor.input_shape.channels=16",
            "model.roi_heads.mask_head.input_shape.channels=16",
            "model.roi_heads.mask_head.conv_dims=[8, 8]",
            "model.backbone.bottom_up.stem.norm=BN", "model.backbone.norm=",
            ]  # fmt: skip
def _schedule(n):
    """n iterations, LR steps at a third and two thirds (the scheduler is scale-invariant)."""
    return [f"train.max_iter={n}", "lr_multiplier.scheduler.milestones=[10, 20]",
            "lr_multiplier.scheduler.num_updates=30", "train.checkpointer.period=2",
            "train.log_period=1"]  # fmt: skip


def _lazy(*argv):
    return load_tool("lazyconfig_train_net").lazy_main(default_argument_parser().parse_args(argv))


@pytest.fixture(scope="module")
def vit_teacher(tmp_path_factory):
    """The ViTDet-style teacher config trained for 2 iterations at tiny size."""
    out = str(tmp_path_factory.mktemp("vit"))
    results = _lazy("--config-file", VIT_TEACHER, *LAZY_DATA, *VIT_TINY, *_schedule(2),
                    f"train.output_dir={out}")  # fmt: skip
    return os.path.join(out, "model_final.pth"), results


def _student_opts(out, n=2):
    """The tiny student of the LazyConfig Distiller (model.student) on the tiny dataset."""
    student = [o.replace("model.", "model.student.", 1) for o in R18_TINY]
    return [*LAZY_DATA, *student, *_schedule(n), f"train.output_dir={out}"]


def _teacher_opts(weights):
    return [f"model.teacher.weights={weights}", f"model.teacher.opts={VIT_TINY!r}"]


def test_a_plain_lazy_model_trains_and_evaluates(vit_teacher):
    weights, results = vit_teacher
    assert os.path.isfile(weights)
    assert {"AP", "AP50"} <= set(results["bbox"]) and "segm" in results


def test_a_lazy_distiller_trains_from_a_lazy_vitdet_teacher(vit_teacher, tmp_path):
    weights, _ = vit_teacher
    out = str(tmp_path / "run")
    results = _lazy("--config-file", LAZY_DISTILL, *_student_opts(out), *_teacher_opts(weights))
    assert {"bbox", "segm"} <= set(results)
    with open(os.path.join(out, "metrics.json")) as f:
        train = [json.loads(line) for line in f if "total_loss" in line]
    assert train and all("loss_distill_dist" in r and "loss_distill_dist_feature" in r
                         for r in train)  # fmt: skip
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["model"]
    assert any(k.startswith("backbone.") for k in state)  # the student's, named as its own
    assert not any(k.startswith(("student.", "teacher")) for k in state)

    # --eval-only evaluates the student alone: the teacher's files may be gone.
    again = _lazy("--config-file", LAZY_DISTILL, "--eval-only", *_student_opts(out),
                  "model.teacher.weights=/nowhere.pth", "model.teacher.config_file=/nowhere.py",
                  f"train.init_checkpoint={out}/model_final.pth")  # fmt: skip
    assert again["bbox"] == pytest.approx(results["bbox"], nan_ok=True)

    # The exported student is a plain LazyConfig model with the same weights.
    export = load_tool("export_student")
    assert export.main(["--run-dir", out]) == 0
    scfg = LazyConfig.load(os.path.join(out, "student.yaml"))
    model = instantiate(scfg.model)
    exported = torch.load(os.path.join(out, "student.pth"), weights_only=False)["model"]
    model.load_state_dict(exported, strict=True)
    assert scfg.train.init_checkpoint.endswith("student.pth")
    assert not os.path.isabs(scfg.train.init_checkpoint)


def test_a_yacs_student_distils_from_a_lazy_teacher(vit_teacher, tmp_path):
    weights, _ = vit_teacher
    out = str(tmp_path / "yacs")
    main = load_tool("train_net").main
    results = main(argument_parser().parse_args([
        "--config-file", YACS_DISTILL, *SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY,
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "8", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)",
        "MODEL.DISTILL.TEACHER.WEIGHTS", weights, "MODEL.DISTILL.TEACHER.OPTS", str(VIT_TINY),
        "OUTPUT_DIR", out,
    ]))  # fmt: skip
    assert {"bbox", "segm"} <= set(results)
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "Teacher: GeneralizedRCNN from LazyConfig" in log

    # Its exported student is plain Detectron2: loaded where d2dist cannot be imported, it
    # predicts (boxes and masks) as the distillation run's student.
    assert load_tool("export_student").main(["--run-dir", out]) == 0
    plain = plain_predictions(os.path.join(out, "student.yaml"), tmp_path)
    assert_same_predictions(plain, run_predictions(out))


def test_a_killed_lazy_run_resumes(vit_teacher, tmp_path):
    weights, _ = vit_teacher
    out = str(tmp_path / "run")
    cmd = [sys.executable, os.path.join(REPO, "tools", "lazyconfig_train_net.py"), "--config-file",
           LAZY_DISTILL, *_student_opts(out, n=40), *_teacher_opts(weights)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    tag = os.path.join(out, "last_checkpoint")
    deadline = time.time() + 180
    while not os.path.isfile(tag) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert os.path.isfile(tag), "no checkpoint before the deadline"
    with open(tag) as f:
        saved = int(f.read().strip().split("_")[1].split(".")[0])  # model_0000001.pth -> 1
    with pytest.raises(ConfigError, match="holds checkpoints of an earlier run"):
        _lazy("--config-file", LAZY_DISTILL, *_student_opts(out, n=6), *_teacher_opts(weights))
    _lazy("--config-file", LAZY_DISTILL, "--resume", *_student_opts(out, n=6),
          *_teacher_opts(weights))  # fmt: skip
    with open(os.path.join(out, "metrics.json")) as f:
        iters = [json.loads(line)["iteration"] for line in f if "total_loss" in line]
    assert max(iters) == 5 and min(i for i in iters if i > saved) == saved + 1
    final = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    assert final["iteration"] == 5


def test_lazy_config_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a LazyConfig .py file"):
        _lazy("--config-file", YACS_DISTILL)
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match=r"defines no \['model', 'train'"):
        _lazy("--config-file", str(bad))
    with pytest.raises(ConfigError, match="could not load"):
        _lazy("--config-file", LAZY_STUDENT, "train.max_iter.deeper=1")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device=cuda was given on the command line"):
            _lazy("--config-file", LAZY_STUDENT, "train.device=cuda")


def test_the_training_mapper_is_checked_and_the_config_left_as_it_was(monkeypatch):
    """The training loader's mapper names an unusable image (CheckedMapper), without moving the
    mapper in the config: the test loader's image_format refers to its place."""
    import d2dist.engine.lazy as lazy
    from d2dist.engine.faults import CheckedMapper

    made = []

    class Recording(CheckedMapper):
        def __init__(self, mapper, datasets):
            super().__init__(mapper, datasets)
            made.append(self)

    monkeypatch.setattr(lazy, "CheckedMapper", Recording)
    cfg = LazyConfig.load(LAZY_STUDENT)
    cfg = LazyConfig.apply_overrides(cfg, LAZY_DATA)
    lazy._checked_train_loader(cfg)
    assert len(made) == 1 and made[0].datasets == ["d2dist_shapes_tiny_train"]
    assert type(made[0].mapper).__name__ == "DatasetMapper"
    assert cfg.dataloader.train.mapper._target_.__name__ == "DatasetMapper"
    assert cfg.dataloader.test.mapper.image_format == cfg.dataloader.train.mapper.image_format
    instantiate(cfg.dataloader.test)


def test_a_lazy_distiller_labels_unlabeled_images_and_mixes_them(vit_teacher, tmp_path):
    """TeacherLabels and Mixup as LazyConfig nodes of the Distiller, an --image-folder dataset as
    the training set: the ViTDet teacher's boxes and masks train the Mask R-CNN student."""
    from PIL import Image

    from d2dist.engine.lazy import lazy_argument_parser
    from d2dist.modeling import TeacherLabels

    weights, _ = vit_teacher
    folder = tmp_path / "images"
    folder.mkdir()
    for r in DatasetCatalog.get("d2dist_shapes_tiny_train")[:4]:
        Image.open(r["file_name"]).save(folder / os.path.basename(r["file_name"]))
    config = tmp_path / "unlabeled.py"
    config.write_text(
        "from detectron2.config import LazyCall as L, LazyConfig\n"
        "from d2dist.modeling import Mixup, TeacherLabels\n"
        f"_base = LazyConfig.load({LAZY_DISTILL!r})\n"
        "dataloader, optimizer = _base.dataloader, _base.optimizer\n"
        "lr_multiplier, train, model = _base.lr_multiplier, _base.train, _base.model\n"
        "model.teacher_labels = L(TeacherLabels)(score_threshold=0.0)\n"
        "model.mixup = L(Mixup)(prob=1.0)\n"
    )
    seen = []
    original = TeacherLabels.label

    def spy(self, *args, **kwargs):
        seen.append(original(self, *args, **kwargs))
        return seen[-1]

    out = str(tmp_path / "run")
    argv = ["--config-file", str(config), "--image-folder", "unl_lazy", str(folder),
            *_student_opts(out), *_teacher_opts(weights),
            "dataloader.train.dataset.names=unl_lazy"]  # fmt: skip
    TeacherLabels.label = spy
    try:
        load_tool("lazyconfig_train_net").lazy_main(lazy_argument_parser().parse_args(argv))
    finally:
        TeacherLabels.label = original
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert seen and all("mixed_with" in x and x["instances"].has("gt_masks") for x in seen[0])
    assert len(seen) == 2

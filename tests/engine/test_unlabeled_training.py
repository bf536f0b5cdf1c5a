"""Training on unlabeled images end to end: tools/train_net.py with --image-folder (unlabeled
only, mixed batches at a set share, mixup), and a user's own trainer."""

import os

import numpy as np
import pytest
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA, save_random_weights
from _tools import load_tool
from detectron2.engine import DefaultTrainer
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from d2dist.config import get_cfg
from d2dist.data import is_unlabeled, register_image_folder, repeat_factors_for_fraction
from d2dist.engine import DistillationMixin, argument_parser
from d2dist.engine.loaders import train_loader
from d2dist.errors import ConfigError
from d2dist.modeling import Mixup, TeacherLabels

pytestmark = pytest.mark.slow  # training runs through train_net and trainers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs", "Shapes-Detection")
TEACHER_CFG = os.path.join(CONFIGS, "faster_rcnn_R50_FPN_3x.yaml")
ONLINE_CFG = os.path.join(CONFIGS, "pkd_faster_rcnn_R18_from_R50_FPN_online_labels_1x.yaml")
STUDENT_CFG = os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x.yaml")
SCHEDULE = ["SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "(1,)", "SOLVER.WARMUP_ITERS", "1",
            "SOLVER.CHECKPOINT_PERIOD", "10", "TEST.EVAL_PERIOD", "0", "SEED", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Eight images of the tiny dataset's generator, without their labels."""
    from detectron2.data import DatasetCatalog

    d = tmp_path_factory.mktemp("unlabeled")
    for r in DatasetCatalog.get("d2dist_shapes_tiny_train")[:8]:
        Image.open(r["file_name"]).save(d / os.path.basename(r["file_name"]))
    return str(d)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    return save_random_weights(TEACHER_CFG, SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY, path)


def _opts(teacher, out, *train):
    return [
        *SHAPES_TINY_DATA, *SHAPES_STUDENT_TINY, *SCHEDULE, "OUTPUT_DIR", out,
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher,
        "MODEL.DISTILL.TEACHER.OPTS", str(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY),
        "MODEL.DISTILL.TEACHER_LABELS.SCORE_THRESHOLD", "0.0",
        "DATASETS.TRAIN", str(tuple(train)),
    ]  # fmt: skip


def _main(*argv):
    return load_tool("train_net").main(argument_parser().parse_args(list(argv)))


def _spy(monkeypatch, cls, name):
    seen = []
    original = getattr(cls, name)

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(cls, name, spy)
    return seen


def test_a_student_trains_on_unlabeled_images_alone(folder, teacher, tmp_path, monkeypatch):
    labelled = _spy(monkeypatch, TeacherLabels, "label")
    out = str(tmp_path / "run")
    _main("--config-file", ONLINE_CFG, "--image-folder", "unl_only", folder,
          *_opts(teacher, out, "unl_only"), "DATASETS.TRAIN_REPEAT_FACTOR", "[]",
          "DATALOADER.SAMPLER_TRAIN", "TrainingSampler")  # fmt: skip
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert len(labelled) == 2  # every step's images labelled by the teacher
    assert all(len(x["instances"]) > 0 for batch in labelled for x in batch)


def test_mixed_batches_have_the_share_of_unlabeled_images_that_was_set(folder):
    register_image_folder("unl_share", folder)
    sizes = [("d2dist_shapes_tiny_train", 16, False), ("unl_share", 8, True)]
    for fraction in (0.5, 0.25):
        cfg = get_cfg()
        cfg.merge_from_file(STUDENT_CFG)
        cfg.merge_from_list(SHAPES_TINY_DATA + ["DATASETS.TRAIN", str(tuple(n for n, _, _ in sizes)),
                            "DATALOADER.SAMPLER_TRAIN", "WeightedTrainingSampler"])  # fmt: skip
        cfg.DATASETS.TRAIN_REPEAT_FACTOR = [
            list(p) for p in repeat_factors_for_fraction(sizes, fraction)
        ]
        loader = iter(train_loader(cfg))
        images = [x for _ in range(150) for x in next(loader)]
        share = np.mean(["instances" not in x for x in images])
        assert share == pytest.approx(fraction, abs=0.06), fraction


def test_mixup_teacher_labels_and_a_saved_example(folder, teacher, tmp_path, monkeypatch):
    """Mixed batches of labeled and unlabeled images, mixup on every image: the run trains, and
    a mixed view with the labels the student trained on is saved as a picture."""
    mixed = _spy(monkeypatch, Mixup, "__call__")
    labelled = _spy(monkeypatch, TeacherLabels, "label")
    out = str(tmp_path / "run")
    _main("--config-file", ONLINE_CFG, "--image-folder", "unl_mix", folder,
          *_opts(teacher, out, "d2dist_shapes_tiny_train", "unl_mix"),
          "DATASETS.TRAIN_REPEAT_FACTOR", "[['d2dist_shapes_tiny_train', 1.0], ['unl_mix', 2.0]]",
          "MODEL.DISTILL.MIXUP.PROB", "1.0")  # fmt: skip
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert len(mixed) == 2 and all("mixed_with" in x for batch in mixed for x in batch)
    x = labelled[0][0]
    assert x["image"] is mixed[0][0]["image"]  # the student trained on the mixed view
    image = x["image"].permute(1, 2, 0).numpy()[:, :, ::-1]  # BGR -> RGB
    v = Visualizer(image.clip(0, 255).astype(np.uint8)).overlay_instances(
        boxes=x["instances"].gt_boxes.tensor.numpy()
    )
    path = tmp_path / "mixup_example.png"
    v.save(str(path))
    saved = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    a = np.asarray(Image.open(x["file_name"]).convert("RGB"), dtype=np.float32)
    assert saved.shape[:2] == image.shape[:2]
    assert np.abs(saved - a).mean() > 5  # not the first image alone: another one is mixed in


class OwnTrainer(DistillationMixin, DefaultTrainer):  # keeps Detectron2's build_train_loader
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return None


class OwnTrainerWithD2distLoader(OwnTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        return train_loader(cfg)


def _own_cfg(teacher, out, *train):
    cfg = get_cfg()
    cfg.merge_from_file(ONLINE_CFG)
    cfg.merge_from_list(
        _opts(teacher, out, *train)
        + ["DATASETS.TRAIN_REPEAT_FACTOR", "[]", "DATALOADER.SAMPLER_TRAIN", "TrainingSampler"]
    )
    return cfg


def test_a_users_own_trainer_with_unlabeled_images(folder, teacher, tmp_path):
    register_image_folder("unl_own", folder)
    mixed = ("d2dist_shapes_tiny_train", "unl_own")
    with pytest.raises(ConfigError, match=r"mixes labeled .* build_detection_train_loader"):
        OwnTrainer(_own_cfg(teacher, str(tmp_path / "a"), *mixed))
    trainer = OwnTrainerWithD2distLoader(_own_cfg(teacher, str(tmp_path / "b"), *mixed))
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert os.path.isfile(tmp_path / "b" / "model_final.pth")
    trainer = OwnTrainer(_own_cfg(teacher, str(tmp_path / "c"), "unl_own"))  # unlabeled alone:
    trainer.resume_or_load(resume=False)  # Detectron2's loader reads them
    trainer.train()
    assert is_unlabeled("unl_own")

    plain = get_cfg()
    plain.merge_from_file(STUDENT_CFG)
    plain.merge_from_list(
        SHAPES_TINY_DATA
        + SHAPES_STUDENT_TINY
        + SCHEDULE
        + ["DATASETS.TRAIN", "('unl_own',)", "OUTPUT_DIR", str(tmp_path / "d")]
    )
    with pytest.raises(ConfigError, match="not a d2dist Distiller"):
        OwnTrainer(plain)


def test_a_teacher_that_cannot_label_is_refused_before_training(folder, tmp_path):
    register_image_folder("unl_refused", folder)
    weights = save_random_weights(TEACHER_CFG, SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY,
                                  str(tmp_path / "t.pth"))  # fmt: skip
    cfg = get_cfg()
    cfg.merge_from_file(ONLINE_CFG)
    cfg.merge_from_list(_opts(weights, str(tmp_path / "r"), "unl_refused") + [
        "DATASETS.TRAIN_REPEAT_FACTOR", "[]", "DATALOADER.SAMPLER_TRAIN", "TrainingSampler",
        "MODEL.MASK_ON", "True"])  # a Mask R-CNN student, a box-only teacher  # fmt: skip
    with pytest.raises(ConfigError, match=r"missing \['masks'\]"):
        OwnTrainerWithD2distLoader(cfg)

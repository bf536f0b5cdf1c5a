"""Pictures of predictions (d2dist.study.pictures; d2dist-visualize / tools/visualize.py): tiny
models of the Shapes-Detection configs, as run directories, drawn side by side on the tiny
built-in dataset into PNGs of the expected size, titled with the AP the runs stored."""

import json
import os

import matplotlib.image
import pytest
import torch
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA, shapes_distill_opts

from d2dist.cli.visualize import main as visualize_cli
from d2dist.engine import Trainer, for_evaluation, load_config
from d2dist.errors import ConfigError
from d2dist.study import PictureModel, draw_predictions, run_model
from d2dist.study.pictures import DPI, PANEL_INCHES, TITLE_INCHES
from d2dist.study.runs import store_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs", "Shapes-Detection")
DATASET = "d2dist_shapes_tiny_val"


def _fake_run(out, config: str, opts, seed: int) -> str:
    """A run directory as training leaves it: config.yaml, model_final.pth (random weights of the
    model an evaluation builds: a Distiller config's student) and last_checkpoint."""
    cfg = load_config(config, list(opts), training=False)
    os.makedirs(out)
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    torch.manual_seed(seed)
    model = Trainer.build_model(for_evaluation(cfg))
    torch.save({"model": model.state_dict()}, os.path.join(out, "model_final.pth"))
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_final.pth")
    return str(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny teacher, a tiny student baseline and a tiny distilled (DIST) student."""
    root = tmp_path_factory.mktemp("runs")
    teacher = _fake_run(root / "teacher", os.path.join(CONFIGS, "faster_rcnn_R50_FPN_3x.yaml"),
                        SHAPES_TINY_DATA + SHAPES_TEACHER_TINY, 1)  # fmt: skip
    baseline = _fake_run(root / "baseline" / "seed1",
                         os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x.yaml"),
                         SHAPES_TINY_DATA + SHAPES_STUDENT_TINY, 2)  # fmt: skip
    dist = _fake_run(root / "dist" / "seed1",
                     os.path.join(CONFIGS, "dist_faster_rcnn_R18_from_R50_FPN_1x.yaml"),
                     shapes_distill_opts(os.path.join(teacher, "model_final.pth")), 3)  # fmt: skip
    return teacher, baseline, dist


def _size(path: str):
    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


def _expected(panels: int):
    return round(panels * PANEL_INCHES * DPI), round((PANEL_INCHES + TITLE_INCHES) * DPI)


def test_runs_side_by_side_into_one_png_per_image(runs, tmp_path):
    teacher, baseline, dist = runs
    store_results(teacher, "any", {"bbox/AP": 12.5})  # the study's stored results
    with open(os.path.join(baseline, "metrics.json"), "w") as f:  # a run's own last evaluation
        f.write(json.dumps({"iteration": 1, "loss_cls": 1.0}) + "\n")
        f.write(json.dumps({"bbox/AP": 3.25}) + "\n")
    models = [run_model(teacher, "teacher"), run_model(baseline), run_model(dist, "DIST", ap=4.0)]
    assert [(m.label, m.ap) for m in models] == [
        ("teacher", 12.5),
        ("baseline/seed1", 3.25),  # the default label: the run's last two folders
        ("DIST", 4.0),
    ]
    paths = draw_predictions(models, DATASET, str(tmp_path / "pictures"), num_images=2,
                             score_threshold=0.0)  # fmt: skip
    assert paths == [str(tmp_path / "pictures" / f"predictions_{k}.png") for k in (1, 2)]
    for path in paths:
        assert _size(path) == _expected(4)  # ground truth + three models
    # Without the ground truth: one panel per model.
    (path,) = draw_predictions(models[:2], DATASET, str(tmp_path / "two"), num_images=1,
                               ground_truth=False, prefix="x")  # fmt: skip
    assert os.path.basename(path) == "x_1.png" and _size(path) == _expected(2)


def test_a_changed_checkpoint_no_longer_shows_the_stored_ap(runs, tmp_path):
    teacher = runs[0]
    store_results(teacher, "any", {"bbox/AP": 12.5})
    assert run_model(teacher).ap == 12.5
    checkpoint = os.path.join(teacher, "model_final.pth")
    saved = open(checkpoint, "rb").read()
    try:
        with open(checkpoint, "ab") as f:
            f.write(b"\0")  # other bytes: the stored results no longer belong to it
        assert run_model(teacher).ap is None  # no metrics.json either: unknown
    finally:
        with open(checkpoint, "wb") as f:
            f.write(saved)


def test_the_tool_draws_run_dirs_and_config_weights_pairs(runs, tmp_path, capsys):
    teacher, baseline, _ = runs
    out = tmp_path / "tool"
    status = visualize_cli(["--run-dir", teacher, "--model", os.path.join(baseline, "config.yaml"),
                            os.path.join(baseline, "model_final.pth"), "--label", "T", "--ap", "1",
                            "--num-images", "1", "--output-dir", str(out)])  # fmt: skip
    assert status == 0
    assert capsys.readouterr().out.strip() == str(out / "predictions_1.png")
    assert _size(out / "predictions_1.png") == _expected(3)  # the dataset: the runs' own


def test_the_tool_explains_what_it_cannot_draw(runs, tmp_path, capsys):
    teacher = runs[0]
    cases = [
        ([], "give the models to draw"),
        (["--run-dir", str(tmp_path)], "holds no config.yaml"),
        (["--run-dir", teacher, "--label", "a", "--label", "b"], "2 --label for 1 models"),
        (["--run-dir", teacher, "--dataset", "nope"], "dataset 'nope' is not registered"),
        (["--model", "missing.yaml", "w.pth"], "'missing.yaml' does not exist"),
    ]
    for argv, message in cases:
        assert visualize_cli(argv + ["--output-dir", str(tmp_path / "x")]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    with pytest.raises(ConfigError, match="no models to draw"):
        draw_predictions([], DATASET, str(tmp_path))
    with pytest.raises(ConfigError, match="number of images is 0"):
        draw_predictions([PictureModel("x", "c", "w")], DATASET, str(tmp_path), num_images=0)


def test_a_mixup_example_shows_the_mix_and_the_teachers_labels_on_it(runs, tmp_path, capsys):
    """--mixup-example: a labeled image, an unlabeled one and their mix with the teacher's labels
    on the mixed image; the mixed panel is neither input image."""
    teacher = runs[0]
    path = str(tmp_path / "mixup.png")
    assert visualize_cli(["--mixup-example", path, "--run-dir", teacher,
                          "--score-threshold", "0.0"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == path
    assert _size(path) == _expected(3)
    picture = matplotlib.image.imread(path)
    w = picture.shape[1] // 3
    panels = [picture[:, i * w : (i + 1) * w] for i in range(3)]
    assert abs(panels[2] - panels[0]).mean() > 0.02 and abs(panels[2] - panels[1]).mean() > 0.02

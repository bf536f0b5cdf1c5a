"""tools/loss_scale.py and d2dist.engine.loss_scale: each term's unweighted and weighted value next
to the student's own losses over a recipe's first iterations, on tiny CPU models."""

import json
import os
import subprocess
import sys

import pytest
import torch
from _tiny import (
    LAZY_TINY_DATA,
    SHAPES_STUDENT_TINY,
    SHAPES_TEACHER_TINY,
    SHAPES_TINY_DATA,
    save_random_weights,
    shapes_distill_opts,
)
from _tools import load_tool

from d2dist.engine.defaults import load_config
from d2dist.engine.loss_scale import measure_loss_scale

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs", "Shapes-Detection")
DATA, TEACHER_TINY, STUDENT_TINY = SHAPES_TINY_DATA, SHAPES_TEACHER_TINY, SHAPES_STUDENT_TINY


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    teacher = os.path.join(CONFIGS, "faster_rcnn_R50_FPN_3x.yaml")
    return save_random_weights(teacher, DATA[:2] + TEACHER_TINY, path)


def _opts(teacher_weights, *extra):
    return shapes_distill_opts(teacher_weights) + list(extra)


def test_weighted_is_weight_times_unweighted_and_the_ratio_is_to_the_student(teacher_weights):
    config = os.path.join(CONFIGS, "mgd_faster_rcnn_R18_from_R50_FPN_1x.yaml")
    opts = _opts(teacher_weights, "MODEL.DISTILL.MGD.WEIGHT", "3e-5",
                 "MODEL.DISTILL.WEIGHT_SCHEDULE.WARMUP_ITERS", "4")  # fmt: skip
    cfg = load_config(config, opts)
    torch.manual_seed(0)
    result = measure_loss_scale(cfg, iters=2)  # the teacher's weights loaded, as a run does
    assert result.factors == [0.25, 0.5]  # the loss-weight warm-up, as the trainer applies it
    (key,) = result.weighted
    assert key == "loss_distill_mgd" and result.weights[key] == pytest.approx(3e-5)
    for u, w, f in zip(result.unweighted[key], result.weighted[key], result.factors):
        assert u > 0 and w == pytest.approx(3e-5 * f * u, rel=1e-5)
    assert set(result.student) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    summary = result.summary()
    total = sum(summary["student"].values())
    assert summary["student_total"] == pytest.approx(total)
    term = summary["terms"][key]
    assert term["ratio_to_student"] == pytest.approx(term["weighted"] / total)
    levels = {k for k in summary["parts"] if k.startswith("distill/mgd/")}
    assert levels == {"distill/mgd/p2", "distill/mgd/p3", "distill/mgd/p4", "distill/mgd/p5"}
    assert result.degenerate() == []


def test_random_weights_report_every_term_of_a_recipe(teacher_weights):
    """DIST+ (two terms) with random weights: one row per configured term, one value each."""
    config = os.path.join(CONFIGS, "distplus_faster_rcnn_R18_from_R50_FPN_1x.yaml")
    cfg = load_config(config, _opts(teacher_weights))
    result = measure_loss_scale(cfg, iters=1, random_weights=True)
    assert result.random_weights
    assert set(result.weighted) == {f"loss_distill_{n.lower()}" for n in cfg.MODEL.DISTILL.LOSSES}
    assert all(len(v) == 1 for v in result.unweighted.values())


def test_the_tool_prints_json_and_a_table(teacher_weights, capsys):
    tool = load_tool("loss_scale")
    config = os.path.join(CONFIGS, "dist_faster_rcnn_R18_from_R50_FPN_1x.yaml")
    assert tool.main(["--config-file", config, "--iters", "1", "--json",
                      *_opts(teacher_weights)]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == {"iterations", "random_weights", "student", "student_total", "terms",
                        "parts", "weight_factor"}  # fmt: skip
    assert set(out["terms"]["loss_distill_dist"]) == {
        "weight", "unweighted", "weighted", "ratio_to_student"
    }  # fmt: skip
    assert tool.main(["--config-file", config, "--iters", "1", *_opts(teacher_weights)]) == 0
    text = capsys.readouterr().out
    assert "| loss_distill_dist |" in text and "weighted / student" in text
    assert "student losses: total" in text


def test_a_plain_config_or_no_iteration_is_a_clear_error(teacher_weights, capsys):
    tool = load_tool("loss_scale")
    plain = os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x.yaml")
    assert tool.main(["--config-file", plain, *DATA, *STUDENT_TINY]) == 2
    err = capsys.readouterr().err
    assert "loss-scale check measures distillation" in err and "'GeneralizedRCNN'" in err
    config = os.path.join(CONFIGS, "dist_faster_rcnn_R18_from_R50_FPN_1x.yaml")
    assert tool.main(["--config-file", config, "--iters", "0", *_opts(teacher_weights)]) == 2
    assert "--iters must be >= 1; got 0" in capsys.readouterr().err


def test_a_lazyconfig_recipe_runs_through_its_own_optimizer(capsys):
    """A LazyConfig Distiller (key=value overrides): its optimizer and LR multiplier."""
    tool = load_tool("loss_scale")
    config = os.path.join(CONFIGS, "distplus_mask_rcnn_R18_from_ViTDet_tiny_1x.py")
    opts = LAZY_TINY_DATA
    assert tool.main(["--config-file", config, "--iters", "1", "--random-weights", "--json",
                      *opts]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["terms"]) == {"loss_distill_dist", "loss_distill_dist_feature"}
    assert out["student_total"] > 0 and out["random_weights"] is True
    plain = os.path.join(CONFIGS, "mask_rcnn_R18_FPN_1x.py")
    assert tool.main(["--config-file", plain, *opts]) == 2
    assert "the LazyConfig's model is a GeneralizedRCNN" in capsys.readouterr().err


def test_tiny_datasets_after_detectron2_registered_elsewhere_is_a_clear_error(capsys):
    """In this process Detectron2 registered its datasets under the tests' root already: the
    tool stops instead of reading other files than the ones it writes."""
    tool = load_tool("loss_scale")
    config = os.path.join(
        REPO, "configs", "COCO-Detection", "dist_faster_rcnn_R50_from_R101_FPN_2x.yaml"
    )
    assert tool.main(["--config-file", config, "--tiny-datasets", "--random-weights"]) == 2
    err = capsys.readouterr().err
    assert "Detectron2 was imported before $DETECTRON2_DATASETS was set" in err


@pytest.mark.slow  # a subprocess that builds a COCO recipe (at tiny widths)
def test_tiny_datasets_run_a_coco_recipe_unchanged(tmp_path):
    """As a script, --tiny-datasets writes tiny COCO / Cityscapes and the recipe's own dataset
    names (coco_2017_train) read them."""
    config = os.path.join(
        REPO, "configs", "COCO-Detection", "dist_faster_rcnn_R50_from_R101_FPN_2x.yaml"
    )
    tiny = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.FPN.OUT_CHANNELS", "32",
            "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.RESNETS.NORM", "BN"]  # fmt: skip
    teacher_tiny = tiny + ["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                           "MODEL.RESNETS.WIDTH_PER_GROUP", "16"]  # fmt: skip
    cmd = [sys.executable, os.path.join(REPO, "tools", "loss_scale.py"), "--config-file", config,
           "--tiny-datasets", "--random-weights", "--iters", "1", "--json", "MODEL.DEVICE", "cpu",
           "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN",
           "(128,)", "INPUT.MAX_SIZE_TRAIN", "256", *tiny,
           "MODEL.DISTILL.TEACHER.OPTS", str(["MODEL.DEVICE", "cpu"] + teacher_tiny)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DETECTRON2_DATASETS", None)  # the tool sets it
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])  # cityscapesscripts' lines: stderr
    assert out["terms"]["loss_distill_dist"]["unweighted"] > 0
    assert set(out["student"]) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}

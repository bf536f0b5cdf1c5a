"""tools/benchmark.py and d2dist.engine.benchmark: the step-cost benchmark on tiny CPU models."""

import json
import os

import pytest
import torch
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA
from _tools import load_tool
from detectron2.modeling import build_model

from d2dist.config import get_cfg
from d2dist.engine.benchmark import PHASES, PeakMemory, benchmark

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs", "Shapes-Detection")
TEACHER_CFG = os.path.join(CONFIGS, "faster_rcnn_R50_FPN_3x.yaml")

DATA, TEACHER_TINY, STUDENT_TINY = SHAPES_TINY_DATA, SHAPES_TEACHER_TINY, SHAPES_STUDENT_TINY
KEYS = {
    "student_step_s", "teacher_forward_s", "method_step_s", "distill_step_s", "overhead_ratio",
    "distill_over_student", "peak_memory_mib", "term_step_s", "slowest_s",
    "flush_subnormals", "random_weights", "clock",
}  # fmt: skip


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    """A tiny teacher of the demo teacher's config, with random weights."""
    cfg = get_cfg()
    cfg.merge_from_file(TEACHER_CFG)
    cfg.merge_from_list(DATA[:2] + TEACHER_TINY)
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def _opts(teacher_weights, *extra):
    return [
        *DATA, *STUDENT_TINY,
        "MODEL.DISTILL.TEACHER.WEIGHTS", teacher_weights,
        "MODEL.DISTILL.TEACHER.OPTS", str(DATA[:2] + TEACHER_TINY),
        *extra,
    ]  # fmt: skip


def _tool():
    return load_tool("benchmark")


def test_json_has_every_key_and_the_ratios_come_from_the_parts(teacher_weights, capsys):
    config = os.path.join(CONFIGS, "reviewkd_faster_rcnn_R18_from_R50_FPN_1x.yaml")
    opts = _opts(teacher_weights, "MODEL.DISTILL.REVIEWKD.MID_CHANNELS", "16")
    status = _tool().main(
        ["--config-file", config, "--iters", "2", "--warmup", "0", "--json", *opts]
    )
    assert status == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) == KEYS
    for phase in PHASES:
        assert out[f"{phase}_s"] > 0
        assert out["peak_memory_mib"][phase] > 0
    assert set(out["peak_memory_mib"]) == set(PHASES) == set(out["slowest_s"])
    assert all(out["slowest_s"][p] >= out[f"{p}_s"] for p in PHASES)
    floor = out["student_step_s"] + out["teacher_forward_s"] + out["method_step_s"]
    assert out["overhead_ratio"] == pytest.approx(out["distill_step_s"] / floor)
    assert out["distill_over_student"] == pytest.approx(
        out["distill_step_s"] / out["student_step_s"]
    )
    assert set(out["term_step_s"]) == {"REVIEWKD"}
    assert out["flush_subnormals"] is True  # a CPU run, flushed by default
    assert out["clock"] == "perf_counter"
    assert 0 < out["term_step_s"]["REVIEWKD"] <= out["method_step_s"]


def test_table_names_every_part_and_both_ratios(teacher_weights, capsys):
    config = os.path.join(CONFIGS, "dist_faster_rcnn_R18_from_R50_FPN_1x.yaml")
    status = _tool().main(
        ["--config-file", config, "--iters", "1", "--warmup", "0", *_opts(teacher_weights)]
    )
    assert status == 0
    text = capsys.readouterr().out
    assert "subnormal floats: flushed to zero" in text
    names = (*PHASES, "term DIST", "overhead_ratio", "distill_over_student", "slowest s")
    for name in (*names, "peak MiB"):
        assert name in text


def test_every_term_is_timed_and_parameterless_terms_need_no_optimizer(teacher_weights):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, "distplus_faster_rcnn_R18_from_R50_FPN_1x.yaml"))
    cfg.merge_from_list(_opts(teacher_weights))
    result = benchmark(cfg, iters=3, warmup=1)
    assert all(len(result.times[p]) == 3 for p in PHASES)  # warm-up iterations not recorded
    assert set(result.term_times) == {"DIST", "DIST_FEATURE"}
    assert all(len(v) == 3 for v in result.term_times.values())
    summary = result.summary()
    assert summary["method_step_s"] >= summary["term_step_s"]["DIST"]


def test_a_plain_config_or_no_measured_step_is_refused(teacher_weights, capsys):
    student = os.path.join(CONFIGS, "faster_rcnn_R18_FPN_1x.yaml")
    assert _tool().main(["--config-file", student, "--iters", "1", *DATA]) == 2
    assert "META_ARCHITECTURE is 'GeneralizedRCNN'" in capsys.readouterr().err
    config = os.path.join(CONFIGS, "dist_faster_rcnn_R18_from_R50_FPN_1x.yaml")
    assert _tool().main(["--config-file", config, "--iters", "0", *_opts(teacher_weights)]) == 2
    assert "--iters must be >= 1" in capsys.readouterr().err
    stopped = _opts(teacher_weights, "MODEL.DISTILL.WEIGHT_SCHEDULE.STOP_ITER", "0")
    assert _tool().main(["--config-file", config, "--iters", "1", *stopped]) == 2
    assert "the terms would never act at full weight" in capsys.readouterr().err


def test_peak_memory_is_per_region():
    memory = PeakMemory(torch.device("cpu"))
    assert memory.per_region  # Linux: /proc/self/clear_refs resets the peak RSS
    memory.reset()
    big = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, touched
    with_big = memory.peak_mib()
    del big
    memory.reset()
    without = memory.peak_mib()
    assert with_big - without > 200


@pytest.mark.parametrize(
    "config,extra",
    [
        ("fgd_faster_rcnn_R18_from_R50_FPN_1x.yaml", []),  # features + ground truth kinds
        ("mgd_faster_rcnn_R18_from_R50_FPN_1x.yaml", []),
        ("crosskd_retinanet_R18_from_R50_FPN_1x.yaml",  # the cross-head kind
         ["MODEL.RETINANET.NUM_CONVS", "1", "MODEL.RETINANET.NORM", "",
          "MODEL.DISTILL.CROSSKD.DEPTH", "1",
          "MODEL.DISTILL.TEACHER.OPTS", str(DATA[:2] + TEACHER_TINY[:6] + [
              "MODEL.RETINANET.NUM_CONVS", "1", "MODEL.RETINANET.NORM", "",
              "MODEL.FPN.OUT_CHANNELS", "16"])]),
    ],
)  # fmt: skip
def test_the_method_step_is_timed_for_every_target_kind(config, extra):
    """The terms run on leaves of the targets (each kind makes its own), with random weights."""
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, config))
    opts = [*DATA, *STUDENT_TINY, "MODEL.DISTILL.TEACHER.OPTS", str(DATA[:2] + TEACHER_TINY),
            *extra]  # fmt: skip
    cfg.merge_from_list(opts)
    result = benchmark(cfg, iters=1, warmup=0, random_weights=True)
    name = config.split("_")[0].upper()
    assert set(result.term_times) == {name} and result.term_times[name][0] > 0
    assert result.summary()["method_step_s"] >= result.term_times[name][0]

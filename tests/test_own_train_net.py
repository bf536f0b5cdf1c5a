"""The README's three-line diffs, applied to a user's own train_net scripts (tests/projects/,
shaped like Detectron2's tools/train_net.py and projects/PointRend/train_net.py): the patched
scripts train teachers, baselines and distilled students, with MODEL.WEIGHTS, --resume and
--eval-only working for both kinds."""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA
from detectron2.engine import default_argument_parser

pytestmark = pytest.mark.slow  # users' own train_net scripts run as processes of their own

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECTS = os.path.join(REPO, "tests", "projects")
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
SCRIPTS = {"tools/train_net.py": "train_net.py",
           "projects/PointRend/train_net.py": "point_rend_train_net.py"}  # fmt: skip
POINT_REND_YAML = f"""\
_BASE_: "{SHAPES}/mask_rcnn_R18_FPN_1x.yaml"
MODEL:
  ROI_MASK_HEAD: {{NAME: "PointRendMaskHead", POOLER_TYPE: "", FC_DIM: 32, NUM_FC: 1,
                  OUTPUT_SIDE_RESOLUTION: 7, IN_FEATURES: ["p2"], POINT_HEAD_ON: True, CONV_DIM: 8}}
  POINT_HEAD: {{NUM_CLASSES: 8, FC_DIM: 16, NUM_FC: 1, IN_FEATURES: ["p2"], TRAIN_NUM_POINTS: 49,
               SUBDIVISION_STEPS: 1, SUBDIVISION_NUM_POINTS: 49}}
INPUT: {{MASK_FORMAT: "bitmask"}}
"""
STEPS = ["SOLVER.STEPS", "(1,)", "SOLVER.BASE_LR", "0.002"]


def readme_diffs():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text[text.index("### Using d2dist in your project") :]
    diffs = re.findall(r"```diff\n(.*?)```", section, flags=re.S)
    return {re.search(r"^--- (\S+)", d, flags=re.M).group(1): d for d in diffs}


def test_the_readme_has_a_diff_for_each_script():
    diffs = readme_diffs()
    assert set(diffs) == set(SCRIPTS)
    for diff in diffs.values():  # three lines each: two added, one changed
        assert len(re.findall(r"^\+(?!\+)", diff, flags=re.M)) == 3
        assert len(re.findall(r"^-(?!-)", diff, flags=re.M)) == 1


def _patched(label, tmp_path):
    original = os.path.join(PROJECTS, SCRIPTS[label])
    out = tmp_path / SCRIPTS[label]
    diff = tmp_path / "readme.diff"
    diff.write_text(readme_diffs()[label])
    subprocess.run(["patch", "--quiet", "-o", str(out), original, str(diff)], check=True)
    spec = importlib.util.spec_from_file_location(f"user_{out.stem}", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(script, config, out, *opts, flags=()):
    args = default_argument_parser().parse_args(
        [*flags, "--config-file", config, *SHAPES_TINY_DATA, *opts, "OUTPUT_DIR", out]
    )
    return script.main(args)


def _iterations(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line)["iteration"] for line in f if "total_loss" in line]


@pytest.mark.parametrize("label", sorted(SCRIPTS))
def test_a_user_train_net_with_the_three_lines(label, tmp_path, monkeypatch):
    script = _patched(label, tmp_path)
    if "PointRend" in label:
        student = str(tmp_path / "point_rend.yaml")
        with open(student, "w") as f:
            f.write(POINT_REND_YAML)
    else:
        student = os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml")
    teacher_cfg = os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml")
    tiny_s = [*SHAPES_STUDENT_TINY, *STEPS]

    # A plain teacher and a plain baseline, then the baseline initialised from MODEL.WEIGHTS.
    teacher = str(tmp_path / "teacher")
    _run(script, teacher_cfg, teacher, *SHAPES_TEACHER_TINY, *STEPS, "SOLVER.MAX_ITER", "2")
    base = str(tmp_path / "base")
    _run(script, student, base, *tiny_s, "SOLVER.MAX_ITER", "2")
    again = str(tmp_path / "again")
    base_weights = os.path.join(base, "model_final.pth")
    trainer = script.Trainer(script.setup(default_argument_parser().parse_args(
        ["--config-file", student, *SHAPES_TINY_DATA, *tiny_s, "MODEL.WEIGHTS", base_weights,
         "OUTPUT_DIR", again])))  # fmt: skip
    trainer.resume_or_load(resume=False)
    saved = torch.load(base_weights, weights_only=False)["model"]
    state = trainer.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    plain_eval = _run(script, student, str(tmp_path / "e1"), *tiny_s, "MODEL.WEIGHTS",
                      base_weights, flags=["--eval-only"])  # fmt: skip
    assert "bbox" in plain_eval

    # The distilled student: MODEL.WEIGHTS (the plain baseline) initialises its student.
    distill = [
        *tiny_s, "MODEL.META_ARCHITECTURE", "Distiller",
        "MODEL.DISTILL.TEACHER.CONFIG_FILE", teacher_cfg,
        "MODEL.DISTILL.TEACHER.WEIGHTS", os.path.join(teacher, "model_final.pth"),
        "MODEL.DISTILL.TEACHER.OPTS", str(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY),
        "MODEL.DISTILL.LOSSES", "['MIMIC', 'KD']", "MODEL.DISTILL.MIMIC.WEIGHT", "0.01",
        "MODEL.WEIGHTS", base_weights,
    ]  # fmt: skip
    out = str(tmp_path / "distill")
    trainer = script.Trainer(script.setup(default_argument_parser().parse_args(
        ["--config-file", student, *SHAPES_TINY_DATA, *distill, "OUTPUT_DIR", out])))  # fmt: skip
    trainer.resume_or_load(resume=False)
    student_state = trainer.model.student.state_dict()
    assert all(torch.equal(student_state[k], v) for k, v in saved.items())
    assert trainer.model.teacher_wrapper.loaded
    del trainer
    # Run as its user runs it: a process of its own, through its own launch().
    subprocess.run([sys.executable, script.__file__, "--config-file", student, *SHAPES_TINY_DATA,
                    *distill, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", out],
                   check=True, capture_output=True)  # fmt: skip
    with open(os.path.join(out, "metrics.json")) as f:
        assert all("loss_distill_kd" in json.loads(line) for line in f if "total_loss" in line)
    with open(os.path.join(out, "log.txt")) as f:
        assert "d2dist.modeling.teacher INFO: Teacher:" in f.read()  # d2dist's messages

    # --eval-teacher in the user's script: the mixin's evaluate_teacher, scored by the script's
    # own build_evaluator.
    seen = []
    own = script.Trainer.build_evaluator.__func__

    def spy(cls, cfg, dataset_name, output_folder=None):
        seen.append((cfg.OUTPUT_DIR, dataset_name))
        return own(cls, cfg, dataset_name, output_folder)

    monkeypatch.setattr(script.Trainer, "build_evaluator", classmethod(spy))
    teval = str(tmp_path / "teval")
    cfg = script.setup(default_argument_parser().parse_args(
        ["--config-file", student, *SHAPES_TINY_DATA, *distill, "OUTPUT_DIR", teval]))  # fmt: skip
    assert "bbox" in script.Trainer.evaluate_teacher(cfg)
    assert seen == [(os.path.join(teval, "teacher_eval"), "d2dist_shapes_tiny_val")]
    with open(os.path.join(teval, "teacher_eval", "results.json")) as f:
        assert "bbox" in json.load(f)

    # --resume continues the distillation run; --eval-only evaluates its checkpoint.
    _run(script, student, out, *distill, "SOLVER.MAX_ITER", "3", flags=["--resume"])
    assert max(_iterations(out)) == 2
    final = os.path.join(out, "model_final.pth")
    assert torch.load(final, weights_only=False)["iteration"] == 2
    results = _run(script, student, str(tmp_path / "e2"), *distill, "MODEL.WEIGHTS", final,
                   flags=["--eval-only"])  # fmt: skip
    assert "bbox" in results

"""The README's three-line diffs, applied to a user's own DefaultTrainer scripts (tests/projects/,
shaped like Detectron2's tools/train_net.py, projects/PointRend/train_net.py and
projects/DeepLab/train_net.py, with the lines the diffs touch identical to upstream's): the
patched scripts train teachers, baselines and distilled students, with MODEL.WEIGHTS, --resume,
--eval-only and TEST.AUG working for both kinds; a distilled checkpoint and a plain one load into
either kind of config; a project's train loader sees the student's meta-architecture; a run with a
poly, cosine or step schedule is extended with a larger SOLVER.MAX_ITER."""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from _tiny import (
    SHAPES_STUDENT_TINY,
    SHAPES_TEACHER_TINY,
    SHAPES_TINY_DATA,
    save_random_weights,
    tiny_cfg,
)
from detectron2.config import get_cfg as d2_get_cfg
from detectron2.engine import HookBase, default_argument_parser
from detectron2.modeling import build_model
from detectron2.projects.deeplab import add_deeplab_config

from d2dist.config import add_distill_config
from d2dist.errors import ConfigError

pytestmark = pytest.mark.slow  # users' own train_net scripts run as processes of their own

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECTS = os.path.join(REPO, "tests", "projects")
SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
# The upstream file each test script is shaped like -> the test script.
SCRIPTS = {"tools/train_net.py": "train_net.py",
           "projects/PointRend/train_net.py": "point_rend_train_net.py",
           "projects/DeepLab/train_net.py": "deeplab_train_net.py",
           "tools/lazyconfig_train_net.py": "lazyconfig_train_net.py",
           "train_net.py": "centernet_train_net.py"}  # fmt: skip
THREE_LINES = ("tools/train_net.py", "projects/PointRend/train_net.py",
               "projects/DeepLab/train_net.py")  # fmt: skip
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
    """The diffs of docs/own_project.md ("Using d2dist in your project"), by the upstream path they
    patch."""
    with open(os.path.join(REPO, "docs", "own_project.md")) as f:
        text = f.read()
    section = text[text.index("# Using d2dist in your project") :]
    diffs = re.findall(r"```diff\n(.*?)```", section, flags=re.S)
    return {re.search(r"^--- a/(\S+)", d, flags=re.M).group(1): d for d in diffs}


def patched(label, tmp_path):
    """The test script shaped like upstream's ``label``, patched with the README's diff by
    ``git apply`` (as a user would patch upstream's file), imported as a module."""
    root = tmp_path / "upstream"
    target = root / label
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(PROJECTS, SCRIPTS[label]), target)
    diff = tmp_path / f"{SCRIPTS[label]}.diff"
    diff.write_text(readme_diffs()[label])
    for check in (["--check"], []):
        done = subprocess.run(["git", "apply", *check, str(diff)], cwd=root,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
    spec = importlib.util.spec_from_file_location(f"user_{target.stem}_{len(label)}", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(config, out, *opts, flags=()):
    return default_argument_parser().parse_args(
        [*flags, "--config-file", config, *opts, "OUTPUT_DIR", out]
    )


def _run(script, config, out, *opts, flags=()):
    return script.main(_args(config, out, *SHAPES_TINY_DATA, *opts, flags=flags))


def _iterations(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line)["iteration"] for line in f if "total_loss" in line]


def _student_entries(checkpoint):
    """The student's entries of a Distiller checkpoint (all but the terms')."""
    state = torch.load(checkpoint, weights_only=False)["model"]
    return {k: v for k, v in state.items() if not k.startswith("terms.")}


def _assert_holds(model, expected):
    state = model.state_dict()
    assert set(expected) <= set(state)
    for k, v in expected.items():
        assert torch.equal(state[k], v), k


class _Evaluated:
    """Records the model each ``Trainer.test`` of a script evaluates."""

    def __init__(self, script, monkeypatch):
        self.models = []
        test = script.Trainer.test.__func__

        def spy(cls, cfg, model, evaluators=None):
            self.models.append(model)
            return test(cls, cfg, model, evaluators)

        monkeypatch.setattr(script.Trainer, "test", classmethod(spy))


def test_the_readme_has_a_diff_for_each_script():
    diffs = readme_diffs()
    assert set(diffs) == set(SCRIPTS)
    for label in THREE_LINES:  # three lines each: two added, one changed
        assert len(re.findall(r"^\+(?!\+)", diffs[label], flags=re.M)) == 3
        assert len(re.findall(r"^-(?!-)", diffs[label], flags=re.M)) == 1


@pytest.mark.parametrize("label", sorted(SCRIPTS))
def test_the_readme_diffs_apply_with_git_apply(label, tmp_path):
    module = patched(label, tmp_path)
    assert "d2dist.engine" in sys.modules and hasattr(module, "main")


@pytest.mark.parametrize("label", ["tools/train_net.py", "projects/PointRend/train_net.py"])
def test_a_user_train_net_with_the_three_lines(label, tmp_path, monkeypatch):
    script = patched(label, tmp_path)
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
    trainer = script.Trainer(script.setup(_args(
        student, again, *SHAPES_TINY_DATA, *tiny_s, "MODEL.WEIGHTS", base_weights)))  # fmt: skip
    trainer.resume_or_load(resume=False)
    saved = torch.load(base_weights, weights_only=False)["model"]
    _assert_holds(trainer.model, saved)
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
    trainer = script.Trainer(script.setup(_args(student, out, *SHAPES_TINY_DATA, *distill)))
    trainer.resume_or_load(resume=False)
    _assert_holds(trainer.model.student, saved)
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
    cfg = script.setup(_args(student, teval, *SHAPES_TINY_DATA, *distill))
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


def test_distilled_and_plain_checkpoints_load_into_either_config_in_a_user_script(
    tmp_path, monkeypatch
):
    """The script's own --eval-only (Detectron2's DetectionCheckpointer) and MODEL.WEIGHTS of a
    plain config evaluate and fine-tune the weights given, never a random model: a Distiller
    checkpoint under the student's plain config, a plain or exported student checkpoint under
    the Distiller config (whose teacher's files are then not needed at all)."""
    script = patched("tools/train_net.py", tmp_path)
    student = os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml")
    teacher_cfg = os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml")
    tiny_s = [*SHAPES_STUDENT_TINY, *STEPS]
    teacher = save_random_weights(
        teacher_cfg, SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY, str(tmp_path / "teacher.pth")
    )
    distill = [
        *tiny_s, "MODEL.META_ARCHITECTURE", "Distiller",
        "MODEL.DISTILL.TEACHER.CONFIG_FILE", teacher_cfg, "MODEL.DISTILL.TEACHER.WEIGHTS", teacher,
        "MODEL.DISTILL.TEACHER.OPTS", str(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY),
        "MODEL.DISTILL.LOSSES", "['MIMIC', 'KD']",
    ]  # fmt: skip
    out = str(tmp_path / "distill")
    _run(script, student, out, *distill, "SOLVER.MAX_ITER", "2")
    final = os.path.join(out, "model_final.pth")
    distilled = _student_entries(final)
    assert any(k.startswith("terms.") for k in torch.load(final, weights_only=False)["model"])

    evaluated = _Evaluated(script, monkeypatch)
    # The plain student config, MODEL.WEIGHTS the Distiller's checkpoint.
    _run(script, student, str(tmp_path / "e1"), *tiny_s, "MODEL.WEIGHTS", final,
         flags=["--eval-only"])  # fmt: skip
    _assert_holds(evaluated.models[-1], distilled)

    # The Distiller config, MODEL.WEIGHTS a plain student checkpoint, then the exported student;
    # the teacher's files are gone: evaluation builds the student alone.
    plain = str(tmp_path / "plain.pth")
    torch.save({"model": {k: v + 1 if v.is_floating_point() else v for k, v in distilled.items()}},
               plain)  # fmt: skip
    assert load_tool_export().main(["--run-dir", out]) == 0
    gone = ["MODEL.DISTILL.TEACHER.CONFIG_FILE", str(tmp_path / "nowhere.yaml"),
            "MODEL.DISTILL.TEACHER.WEIGHTS", str(tmp_path / "nowhere.pth")]  # fmt: skip
    for weights in (plain, os.path.join(out, "student.pth")):
        _run(script, student, str(tmp_path / "e2"), *distill, *gone, "MODEL.WEIGHTS", weights,
             flags=["--eval-only"])  # fmt: skip
        model = evaluated.models[-1]
        assert type(model).__name__ == "GeneralizedRCNN"  # the student alone
        _assert_holds(model, torch.load(weights, weights_only=False)["model"])

    # Fine-tuning the plain config from the Distiller checkpoint (MODEL.WEIGHTS).
    trainer = script.Trainer(
        script.setup(
            _args(
                student, str(tmp_path / "tune"), *SHAPES_TINY_DATA, *tiny_s, "MODEL.WEIGHTS", final
            )
        )
    )
    trainer.resume_or_load(resume=False)  # fmt: skip
    _assert_holds(trainer.model, distilled)


def load_tool_export():
    from _tools import load_tool

    return load_tool("export_student")


# ---- a project's data pipeline, TTA and extended schedules: semantic segmentation ----------------
def _diff_yaml(cfg, base, path):
    """Write the keys of ``cfg`` that ``base`` has and that differ from it, as a config file."""

    def walk(node, ref):
        out = {}
        for k, v in node.items():
            if k not in ref:
                continue
            if isinstance(v, dict):
                sub = walk(v, ref[k])
                if sub:
                    out[k] = sub
            elif v != ref[k]:
                out[k] = v
        return out

    tree = walk(yaml.safe_load(cfg.dump()), yaml.safe_load(base.dump()))
    with open(path, "w") as f:
        yaml.safe_dump(tree, f)
    return path


def _base(arch):
    base = d2_get_cfg()
    if arch.startswith("deeplab"):
        add_deeplab_config(base)
    return base


SEMANTIC = {"MODEL.SEM_SEG_HEAD.NUM_CLASSES": 9,  # the built-in dataset: background + 8 shapes
            "DATASETS.TRAIN": ("d2dist_shapes_tiny_train_sem_seg",),
            "DATASETS.TEST": ("d2dist_shapes_tiny_val_sem_seg",),
            "INPUT.MIN_SIZE_TRAIN": (64, 96), "INPUT.MAX_SIZE_TRAIN": 192,
            "INPUT.MIN_SIZE_TEST": 64, "INPUT.MAX_SIZE_TEST": 64,
            "INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute",
            "INPUT.CROP.SIZE": (64, 64), "DATALOADER.NUM_WORKERS": 0, "SOLVER.IMS_PER_BATCH": 2,
            "SOLVER.BASE_LR": 0.01, "SOLVER.STEPS": (1,), "SOLVER.WARMUP_ITERS": 1,
            "SOLVER.CHECKPOINT_PERIOD": 1000}  # fmt: skip


def _set(cfg, values):
    for key, value in values.items():
        node, *path = key.split(".")
        target = cfg[node]
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return cfg


def semantic_distiller(directory: str, arch: str, **settings) -> str:
    """The config file of a tiny semantic Distiller (``arch``: deeplab_v3 or semantic_fpn) on the
    built-in dataset, KD on pixel logits from a teacher of the same kind whose (random) weights
    are saved beside it; ``settings`` (``SOLVER__LR_SCHEDULER_NAME="..."``) are set in it. The
    DeepLab teacher pools with a kernel fixed by its training crop (64 x 64), so it can teach
    only on images of that size. The files hold only what differs from the defaults of the
    student's project (Detectron2's, DeepLab's keys for deeplab_v3), as a user's would."""
    teacher = _set(tiny_cfg(arch, role="teacher"), SEMANTIC)
    t_yaml = _diff_yaml(teacher, _base(arch), os.path.join(directory, f"{arch}_teacher.yaml"))
    torch.manual_seed(0)
    t_weights = os.path.join(directory, f"{arch}_teacher.pth")
    torch.save({"model": build_model(teacher).state_dict()}, t_weights)
    student = _set(tiny_cfg(arch), SEMANTIC)
    _set(student, {k.replace("__", "."): v for k, v in settings.items()})
    student.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "SemanticSegmentor"
    student.MODEL.META_ARCHITECTURE = "Distiller"
    d = student.MODEL.DISTILL
    d.TEACHER.CONFIG_FILE, d.TEACHER.WEIGHTS = t_yaml, t_weights
    d.LOSSES = ["KD"]
    d.KD.TARGET = "pixel"
    base = _base(arch)
    add_distill_config(base)
    return _diff_yaml(student, base, os.path.join(directory, f"{arch}_distill.yaml"))


@pytest.fixture(scope="module")
def semantic(tmp_path_factory):
    """The config files of :func:`semantic_distiller`, by architecture."""
    tmp = str(tmp_path_factory.mktemp("semantic"))
    return {arch: semantic_distiller(tmp, arch) for arch in ("deeplab_v3", "semantic_fpn")}


@pytest.mark.parametrize(
    "label, arch",
    [("projects/DeepLab/train_net.py", "deeplab_v3"),
     ("projects/PointRend/train_net.py", "semantic_fpn")],
)  # fmt: skip
def test_a_project_s_train_loader_sees_the_student_s_meta_architecture(
    label, arch, semantic, tmp_path, monkeypatch
):
    """The project picks its mapper from MODEL.META_ARCHITECTURE ("SemanticSegmentor" in it): a
    Distiller config trains on the project's augmentations, as its student alone would (for
    DeepLab's: resized, then cropped to the teacher's crop size, which its pooling needs)."""
    script = patched(label, tmp_path)
    seen = []
    own = script.build_sem_seg_train_aug

    def spy(cfg):
        seen.append(cfg.MODEL.META_ARCHITECTURE)
        return own(cfg)

    monkeypatch.setattr(script, "build_sem_seg_train_aug", spy)
    loaders = []
    test_loader = script.Trainer.build_test_loader.__func__

    def spy_test(cls, cfg, dataset_name):
        loaders.append(cfg.MODEL.META_ARCHITECTURE)
        return test_loader(cls, cfg, dataset_name)

    monkeypatch.setattr(script.Trainer, "build_test_loader", classmethod(spy_test))
    out = str(tmp_path / "run")
    script.main(_args(semantic[arch], out, "SOLVER.MAX_ITER", "2"))
    assert seen == ["SemanticSegmentor"]
    assert loaders == ["SemanticSegmentor"]  # the final evaluation's
    assert os.path.isfile(os.path.join(out, "inference", "sem_seg_evaluation.pth"))
    with open(os.path.join(out, "metrics.json")) as f:
        assert all("loss_distill_kd" in json.loads(line) for line in f if "total_loss" in line)


class _LRs(HookBase):
    """Records the learning rate each iteration trains with."""

    def __init__(self, seen):
        self.seen = seen

    def before_step(self):
        self.seen[self.trainer.iter] = self.trainer.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("scheduler", ["WarmupPolyLR", "WarmupCosineLR", "WarmupMultiStepLR"])
def test_a_run_is_extended_with_a_larger_max_iter_under_every_schedule(
    scheduler, semantic, tmp_path, monkeypatch
):
    """--resume with a larger SOLVER.MAX_ITER follows the longer schedule from where the run
    stopped (the DeepLab project's poly schedule kept its old length and failed with "math domain
    error" past it)."""
    script = patched("projects/DeepLab/train_net.py", tmp_path)
    seen = {}
    hooks = script.Trainer.build_hooks
    monkeypatch.setattr(script.Trainer, "build_hooks", lambda self: hooks(self) + [_LRs(seen)])
    out = str(tmp_path / "run")
    opts = ["SOLVER.LR_SCHEDULER_NAME", scheduler, "SOLVER.WARMUP_ITERS", "0"]
    script.main(_args(semantic["deeplab_v3"], out, *opts, "SOLVER.MAX_ITER", "2"))
    script.main(
        _args(semantic["deeplab_v3"], out, *opts, "SOLVER.MAX_ITER", "5", flags=["--resume"])
    )
    assert sorted(seen) == [0, 1, 2, 3, 4]
    base = SEMANTIC["SOLVER.BASE_LR"]
    expected = {  # the LR of each iteration under the 5-iteration schedule (STEPS (1,))
        "WarmupPolyLR": [base * (1 - i / 5) ** 0.9 for i in range(5)],
        "WarmupCosineLR": [base * 0.5 * (1 + math.cos(math.pi * i / 5)) for i in range(5)],
        "WarmupMultiStepLR": [base if i < 1 else base * 0.1 for i in range(5)],
    }[scheduler]
    for i in (2, 3, 4):  # the resumed iterations
        assert seen[i] == pytest.approx(expected[i], rel=1e-6), (i, seen)
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["iteration"] == 4


def test_test_time_augmentation_of_a_distilled_student_in_a_user_script(tmp_path):
    """--eval-only with TEST.AUG.ENABLED augments the student (the script's own test_with_TTA
    is given the student); training with it, the script's test_with_TTA would be given the
    Distiller at the end of the run, so it is refused before training, with the fix."""
    script = patched("tools/train_net.py", tmp_path)
    student = os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml")
    teacher_cfg = os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml")
    teacher = save_random_weights(
        teacher_cfg, SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY, str(tmp_path / "teacher.pth")
    )
    distill = [
        *SHAPES_STUDENT_TINY, *STEPS, "MODEL.META_ARCHITECTURE", "Distiller",
        "MODEL.DISTILL.TEACHER.CONFIG_FILE", teacher_cfg, "MODEL.DISTILL.TEACHER.WEIGHTS", teacher,
        "MODEL.DISTILL.TEACHER.OPTS", str(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY),
        "MODEL.DISTILL.LOSSES", "['KD']", "TEST.AUG.MIN_SIZES", "(56, 64)",
        "TEST.AUG.MAX_SIZE", "100",
    ]  # fmt: skip
    out = str(tmp_path / "distill")
    with pytest.raises(ConfigError, match="has a test_with_TTA of its own"):
        _run(script, student, out, *distill, "TEST.AUG.ENABLED", "True", "SOLVER.MAX_ITER", "2")
    assert not os.path.exists(os.path.join(out, "last_checkpoint"))  # refused before training
    _run(script, student, out, *distill, "SOLVER.MAX_ITER", "2")
    results = _run(script, student, str(tmp_path / "eval"), *distill, "TEST.AUG.ENABLED", "True",
                   "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
                   flags=["--eval-only"])  # fmt: skip
    assert {"bbox", "bbox_TTA"} <= set(results)

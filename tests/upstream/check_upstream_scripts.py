#!/usr/bin/env python
"""Run upstream's own scripts, patched with the README's diffs, with d2dist on tiny models of the
built-in dataset (a manual check: upstream's files are not part of d2dist and cannot be fetched in
CI; tests/test_own_*.py run scripts written in their shape in `make test`).

    python tests/upstream/check_upstream_scripts.py --detectron2 DETECTRON2_CHECKOUT \\
        --centernet2 CENTERNET2_CHECKOUT [--work DIR]

DETECTRON2_CHECKOUT is a checkout of facebookresearch/detectron2 (its tools/ and projects/ are
used, not its package: the installed Detectron2 runs), CENTERNET2_CHECKOUT one of
xingyizhou/CenterNet2. The scripts are copied into DIR (a new temporary directory by default),
patched with `git apply` of the README's diffs, and run as their users run them; each step says
what it checks and stops at the first that fails. Exit status 0 when all hold.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

from _tiny import (  # noqa: E402
    SHAPES_STUDENT_TINY,
    SHAPES_TEACHER_TINY,
    SHAPES_TINY_DATA,
    save_random_weights,
)
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from test_own_loops import LAZY_DATA, LAZY_DISTILL, LAZY_STUDENT, STUDENT, TEACHER  # noqa: E402
from test_own_train_net import semantic_distiller  # noqa: E402

SHAPES = os.path.join(REPO, "configs", "Shapes-Detection")
UPSTREAM = {  # README diff path -> (checkout, files to copy)
    "detectron2": ["tools/train_net.py", "tools/lazyconfig_train_net.py",
                   "projects/PointRend/train_net.py", "projects/DeepLab/train_net.py",
                   "projects/MViTv2/configs"],
    "centernet2": ["train_net.py", "centernet"],
}  # fmt: skip


def readme_diffs():
    with open(os.path.join(REPO, "docs", "own_project.md")) as f:
        text = f.read()
    section = text[text.index("# Using d2dist in your project") :]
    return re.findall(r"```diff\n(.*?)```", section, flags=re.S)


def run(cwd, *args, ok=True, what=""):
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)
    print(f"  {'ok ' if (done.returncode == 0) == ok else 'BAD'} exit {done.returncode}: {what}")
    if (done.returncode == 0) != ok:
        print("\n".join((done.stdout + done.stderr).splitlines()[-15:]))
        raise SystemExit(1)
    return done.stdout + done.stderr


def check(condition, what):
    print(f"  {'ok ' if condition else 'BAD'} {what}")
    if not condition:
        raise SystemExit(1)


def params(path):
    state = torch.load(path, weights_only=False)["model"]
    return {k: v for k, v in state.items() if v.is_floating_point() and "running_" not in k}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detectron2", required=True, help="a checkout of detectron2")
    parser.add_argument("--centernet2", required=True, help="a checkout of CenterNet2")
    parser.add_argument("--work", default="", help="working directory (default: a new one)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="d2dist-upstream-")
    d2, cn2, w = (os.path.join(work, n) for n in ("detectron2", "centernet2", "runs"))
    os.makedirs(w, exist_ok=True)
    for name, root in (("detectron2", d2), ("centernet2", cn2)):
        for path in UPSTREAM[name]:
            src, dst = os.path.join(getattr(args, name), path), os.path.join(root, path)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
    print(f"The README's diffs, applied with git apply (in {work}):")
    for diff in readme_diffs():
        path = re.search(r"^--- a/(\S+)", diff, flags=re.M).group(1)
        root = cn2 if path == "train_net.py" else d2
        done = subprocess.run(["git", "apply", "-"], input=diff, cwd=root, text=True,
                              capture_output=True)  # fmt: skip
        check(done.returncode == 0, f"{path} {done.stderr.strip()}")

    teacher_yaml = os.path.join(SHAPES, "faster_rcnn_R50_FPN_3x.yaml")
    student_yaml = os.path.join(SHAPES, "faster_rcnn_R18_FPN_1x.yaml")
    t_opts = SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY
    teacher = save_random_weights(teacher_yaml, t_opts, os.path.join(w, "teacher.pth"))
    distill = [
        *SHAPES_TINY_DATA,
        *SHAPES_STUDENT_TINY,
        "SOLVER.STEPS",
        "(1,)",
        "SOLVER.BASE_LR",
        "0.002",
        "MODEL.META_ARCHITECTURE",
        "Distiller",
        "MODEL.DISTILL.TEACHER.CONFIG_FILE",
        teacher_yaml,
        "MODEL.DISTILL.TEACHER.WEIGHTS",
        teacher,
        "MODEL.DISTILL.TEACHER.OPTS",
        str(t_opts),
        "MODEL.DISTILL.LOSSES",
        "['MIMIC', 'KD']",
        "MODEL.DISTILL.MIMIC.WEIGHT",
        "0.01",
    ]
    gone = ["MODEL.DISTILL.TEACHER.CONFIG_FILE", "/nowhere.yaml",
            "MODEL.DISTILL.TEACHER.WEIGHTS", "/nowhere.pth"]  # fmt: skip

    print("detectron2's tools/train_net.py with the three lines:")
    out = os.path.join(w, "train_net")
    run(d2, "tools/train_net.py", "--config-file", student_yaml, *distill, "SOLVER.MAX_ITER",
        "2", "OUTPUT_DIR", out, what="trains a Distiller")  # fmt: skip
    final = os.path.join(out, "model_final.pth")
    log = run(
        d2,
        "tools/train_net.py",
        "--eval-only",
        "--config-file",
        student_yaml,
        *SHAPES_TINY_DATA,
        *SHAPES_STUDENT_TINY,
        "MODEL.WEIGHTS",
        final,
        "OUTPUT_DIR",
        os.path.join(w, "e1"),
        what="--eval-only: the plain config, the Distiller's checkpoint",
    )
    check(
        "not found in the checkpoint" not in log and "not used by the model" in log,
        "  ... every student weight loaded (only the terms' entries unused)",
    )
    run(REPO, "tools/export_student.py", "--run-dir", out, what="export")
    log = run(
        d2,
        "tools/train_net.py",
        "--eval-only",
        "--config-file",
        student_yaml,
        *distill,
        *gone,
        "MODEL.WEIGHTS",
        os.path.join(out, "student.pth"),
        "TEST.AUG.ENABLED",
        "True",
        "OUTPUT_DIR",
        os.path.join(w, "e2"),
        what="--eval-only TEST.AUG: the Distiller config, the exported student, no teacher",
    )
    check(log.count("copypaste: Task: bbox") == 2, "  ... evaluated, then with TTA")
    log = run(
        d2,
        "tools/train_net.py",
        "--config-file",
        student_yaml,
        *distill,
        "SOLVER.MAX_ITER",
        "2",
        "TEST.AUG.ENABLED",
        "True",
        "OUTPUT_DIR",
        os.path.join(w, "tta"),
        ok=False,
        what="training with TEST.AUG: refused",
    )
    check(
        "ConfigError: TEST.AUG.ENABLED" in log
        and not os.path.exists(os.path.join(w, "tta", "model_final.pth")),
        "  ... before training, with the fix",
    )
    run(
        d2,
        "tools/train_net.py",
        "--resume",
        "--config-file",
        student_yaml,
        *distill,
        "SOLVER.MAX_ITER",
        "4",
        "OUTPUT_DIR",
        out,
        what="--resume to 4 iterations",
    )
    check(torch.load(final, weights_only=False)["iteration"] == 3, "  ... trained to iteration 3")

    print("detectron2's projects/DeepLab/train_net.py with the three lines:")
    config = semantic_distiller(w, "deeplab_v3", SOLVER__LR_SCHEDULER_NAME="WarmupPolyLR")
    out = os.path.join(w, "deeplab")
    run(
        d2,
        "projects/DeepLab/train_net.py",
        "--config-file",
        config,
        "SOLVER.MAX_ITER",
        "2",
        "OUTPUT_DIR",
        out,
        what="trains a DeepLab-V3 Distiller (crop-bound teacher pooling)",
    )
    log = run(
        d2,
        "projects/DeepLab/train_net.py",
        "--resume",
        "--config-file",
        config,
        "SOLVER.MAX_ITER",
        "4",
        "OUTPUT_DIR",
        out,
        what="--resume to 4 iterations, poly LR",
    )
    check("max_iters 2 -> 4" in log, "  ... the poly schedule follows the longer run")
    print("detectron2's projects/PointRend/train_net.py with the three lines:")
    run(
        d2,
        "projects/PointRend/train_net.py",
        "--config-file",
        semantic_distiller(w, "semantic_fpn"),
        "SOLVER.MAX_ITER",
        "2",
        "OUTPUT_DIR",
        os.path.join(w, "point_rend"),
        what="trains a semantic FPN Distiller on the project's semantic mapper",
    )

    print("detectron2's tools/lazyconfig_train_net.py with the README's lines:")
    t_lazy = LazyConfig.apply_overrides(LazyConfig.load(LAZY_STUDENT), TEACHER)
    torch.save({"model": instantiate(t_lazy.model).state_dict()}, os.path.join(w, "lazy_t.pth"))
    s_lazy = LazyConfig.apply_overrides(LazyConfig.load(LAZY_STUDENT), STUDENT)
    torch.manual_seed(3)
    init = os.path.join(w, "lazy_s.pth")
    torch.save({"model": instantiate(s_lazy.model).state_dict()}, init)
    lazy = [*LAZY_DATA, *[o.replace("model.", "model.student.", 1) for o in STUDENT],
            f"model.teacher.config_file={LAZY_STUDENT}",
            f"model.teacher.weights={os.path.join(w, 'lazy_t.pth')}",
            f"model.teacher.opts={TEACHER!r}", "optimizer.lr=0.0", "train.eval_period=0",
            "lr_multiplier.scheduler.milestones=[10, 20]",
            "lr_multiplier.scheduler.num_updates=30"]  # fmt: skip
    out = os.path.join(w, "lazy")
    run(d2, "tools/lazyconfig_train_net.py", "--config-file", LAZY_DISTILL, *lazy,
        "train.max_iter=2", f"train.init_checkpoint={init}", f"train.output_dir={out}",
        what="trains a LazyConfig Distiller at LR 0")  # fmt: skip
    a, b = params(init), params(os.path.join(out, "model_final.pth"))
    check(all(torch.equal(a[k], b[k]) for k in a), "  ... its student is train.init_checkpoint")
    run(d2, "tools/lazyconfig_train_net.py", "--eval-only", "--config-file", LAZY_DISTILL, *lazy,
        "model.teacher.config_file=/nowhere.py", f"train.output_dir={out}_eval",
        f"train.init_checkpoint={os.path.join(out, 'model_final.pth')}",
        what="--eval-only, the teacher's files gone")  # fmt: skip

    print("projects/MViTv2's config file as a LazyConfig teacher (tiny overrides):")
    mvit = os.path.join(d2, "projects", "MViTv2", "configs", "mask_rcnn_mvitv2_t_3x.py")
    m_opts = ["model.backbone.bottom_up.embed_dim=16", "model.backbone.bottom_up.depth=4",
              "model.backbone.bottom_up.num_heads=1",
              "model.backbone.bottom_up.last_block_indexes=[0,1,2,3]",
              "model.backbone.out_channels=32", "model.roi_heads.num_classes=8",
              "model.proposal_generator.head.in_channels=32",
              "model.roi_heads.box_head.input_shape.channels=32",
              "model.roi_heads.box_head.conv_dims=[32]", "model.roi_heads.box_head.fc_dims=[32]",
              "model.roi_heads.box_predictor.input_shape.channels=32",
              "model.roi_heads.mask_head.input_shape.channels=32",
              "model.roi_heads.mask_head.conv_dims=[8]"]  # fmt: skip
    m = instantiate(LazyConfig.apply_overrides(LazyConfig.load(mvit), m_opts).model)
    torch.save({"model": m.state_dict()}, os.path.join(w, "mvit.pth"))
    run(REPO, "tools/train_net.py", "--config-file", student_yaml, *distill,
        "MODEL.DISTILL.TEACHER.CONFIG_FILE", mvit, "MODEL.DISTILL.TEACHER.WEIGHTS",
        os.path.join(w, "mvit.pth"), "MODEL.DISTILL.TEACHER.OPTS", str(m_opts),
        "MODEL.DISTILL.LOSSES", "['MIMIC', 'KD', 'DIST_FEATURE']",
        "MODEL.DISTILL.MIMIC.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']",
        "MODEL.DISTILL.DIST_FEATURE.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']",
        "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", os.path.join(w, "mvit_run"),
        what="a yacs Faster R-CNN distilled from the MViTv2 teacher")  # fmt: skip

    print("CenterNet2's train_net.py (its own loop) with the README's lines:")
    out = os.path.join(w, "centernet2")
    loop = [*distill, "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", out]
    run(
        cn2,
        "train_net.py",
        "--config-file",
        student_yaml,
        *loop,
        "SOLVER.MAX_ITER",
        "2",
        what="trains a Distiller in its loop",
    )
    run(
        cn2,
        "train_net.py",
        "--resume",
        "--config-file",
        student_yaml,
        *loop,
        "SOLVER.MAX_ITER",
        "4",
        what="--resume to 4 iterations",
    )
    check(
        torch.load(os.path.join(out, "model_final.pth"), weights_only=False)["iteration"] == 4,
        "  ... continued to the end (its loop counts iterations from 1)",
    )
    run(
        cn2,
        "train_net.py",
        "--eval-only",
        "--config-file",
        student_yaml,
        *distill,
        *gone,
        "MODEL.WEIGHTS",
        os.path.join(out, "model_final.pth"),
        "OUTPUT_DIR",
        os.path.join(w, "centernet2_eval"),
        what="--eval-only, the teacher's files gone",
    )
    print("All checks hold.")


if __name__ == "__main__":
    main()

"""d2dist as a user installs it: the wheel setup.py builds holds the package, its configs and its
console scripts; installed into a fresh virtual environment, it trains a tiny teacher and a tiny
distilled student with ``d2dist-train`` and exports the student with ``d2dist-export``, from a
folder outside the checkout, naming the shipped configs ``d2dist://configs/...``.

No network: the wheel is built with the test environment's setuptools (``--no-build-isolation``)
and installed without its dependencies (``--no-deps --no-index``). The new environment sees the
test environment's packages (PyTorch, Detectron2, ...) through a ``.pth`` file that lists their
folder, *after* its own: ``python -m venv --system-site-packages`` would give the base Python's
packages instead (the test environment is itself a venv), and its editable d2dist could shadow the
wheel. The test checks that the wheel's d2dist is the one imported.
"""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from _tiny import SHAPES_STUDENT_TINY, SHAPES_TEACHER_TINY, SHAPES_TINY_DATA

pytestmark = pytest.mark.slow  # builds and installs a wheel, then three tool processes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a source distribution holds (MANIFEST.in): the build sees nothing else of the checkout.
SOURCES = ("setup.py", "MANIFEST.in", "README.md", "requirements.txt", "pyproject.toml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
SMALL = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
]  # fmt: skip
TEACHER = "d2dist://configs/Shapes-Detection/faster_rcnn_R50_FPN_3x.yaml"
STUDENT = "d2dist://configs/Shapes-Detection/dist_faster_rcnn_R18_from_R50_FPN_1x.yaml"
# Third-party warnings the tools filter (d2dist/cli/_warnings.py).
NOISE = ("torch.jit.script", "torch.meshgrid", "is_fx_tracing", "pkg_resources is deprecated")


def _run(cmd, cwd, env, timeout=600):
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of a copy of the checkout's sources (built there, not in the checkout)."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    for name in ("d2dist", "configs"):
        shutil.copytree(os.path.join(REPO, name), src / name, ignore=IGNORED)
    for name in SOURCES:
        shutil.copy(os.path.join(REPO, name), src / name)
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "--no-index", "-w", str(tmp / "wheels"), str(src)]  # fmt: skip
    _run(pip_wheel, tmp, env)
    (built,) = (tmp / "wheels").glob("d2dist-*.whl")
    return built


def test_the_wheel_holds_the_package_its_configs_and_console_scripts(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for name in ("d2dist/__init__.py", "d2dist/cli/train_net.py", "d2dist/cli/_warnings.py",
                 "d2dist/configs/Base-RCNN-FPN.yaml",
                 "d2dist/configs/Shapes-Detection/dist_faster_rcnn_R18_from_R50_FPN_1x.yaml",
                 "d2dist/configs/Shapes-Detection/mask_rcnn_ViTDet_tiny_3x.py"):  # fmt: skip
        assert name in names, name
    shipped = {n for n in names if n.startswith("d2dist/configs/")}
    in_checkout = {
        "d2dist/" + os.path.relpath(os.path.join(folder, f), REPO).replace(os.sep, "/")
        for folder, _, files in os.walk(os.path.join(REPO, "configs"))
        for f in files
        if not f.endswith(".pyc")
    }
    assert shipped == in_checkout  # every config, nothing else
    for script in ("d2dist-train", "d2dist-train-lazy", "d2dist-export", "d2dist-benchmark",
                   "d2dist-loss-scale", "d2dist-convert-torchvision", "d2dist-demo",
                   "d2dist-study", "d2dist-visualize", "d2dist-label"):  # fmt: skip
        assert f"{script} = d2dist.cli." in entry_points, script


def test_an_installed_d2dist_trains_and_exports_a_distilled_student_from_anywhere(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python, bin_dir = str(venv / "bin" / "python"), venv / "bin"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   tmp_path, os.environ).stdout.strip()  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DETECTRON2_DATASETS")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", OMP_NUM_THREADS="1",
               XDG_CACHE_HOME=str(tmp_path / "cache"), PATH=f"{bin_dir}:{env['PATH']}")  # fmt: skip
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
               "--no-index", str(wheel)]  # fmt: skip
    _run(install, tmp_path, env)
    # Then (so that pip saw only the new environment) the test environment's packages, after the
    # venv's own site-packages on sys.path.
    ours = [p for p in site.getsitepackages() if os.path.isdir(p)]
    assert sysconfig.get_paths()["purelib"] in ours
    with open(os.path.join(purelib, "test_environment.pth"), "w") as f:
        f.write("\n".join(ours) + "\n")

    work = tmp_path / "project"  # a user's folder, outside the checkout
    work.mkdir()
    where = _run([python, "-c", "import d2dist, d2dist.file_io as f; "
                  "print(d2dist.__file__); print(f.checkout())"], work, env)  # fmt: skip
    file, checkout = where.stdout.split()
    assert file == os.path.join(purelib, "d2dist", "__init__.py") and checkout == "None"

    # The teacher, where the shipped distillation configs look for it from here:
    # d2dist://output/study/faster_rcnn/teacher/model_final.pth (the working directory's).
    teacher_dir = os.path.join("output", "study", "faster_rcnn", "teacher")
    data = SHAPES_TINY_DATA[:4] + ["DATASETS.TEST", "()"] + SHAPES_TINY_DATA[6:]
    _run([str(bin_dir / "d2dist-train"), "--config-file", TEACHER, *data, *SMALL,
          *SHAPES_TEACHER_TINY, "OUTPUT_DIR", teacher_dir], work, env)  # fmt: skip
    assert os.path.isfile(work / teacher_dir / "model_final.pth")
    # The built-in dataset went to the user's cache, not to a new ./datasets here.
    cache = tmp_path / "cache" / "d2dist" / "datasets" / "d2dist_shapes_tiny"
    assert (cache / "annotations" / "instances_train.json").is_file()
    assert not (work / "datasets").exists()

    teacher_opts = str(SHAPES_TINY_DATA[:2] + SHAPES_TEACHER_TINY)
    student = _run([str(bin_dir / "d2dist-train"), "--config-file", STUDENT, *SHAPES_TINY_DATA,
                    *SMALL, *SHAPES_STUDENT_TINY, "MODEL.DISTILL.TEACHER.OPTS", teacher_opts,
                    "SOLVER.BASE_LR", "0.002", "OUTPUT_DIR", "student"], work, env)  # fmt: skip
    output = student.stdout + student.stderr
    assert "loss_distill_dist" in output and "bbox" in output
    assert os.path.join(work, teacher_dir, "model_final.pth") in output  # the teacher it loaded
    assert not [n for n in NOISE if n in output], [n for n in NOISE if n in output]

    exported = _run([str(bin_dir / "d2dist-export"), "--run-dir", "student"], work, env)
    assert "student weights: student/student.pth" in exported.stdout
    check = (
        "from detectron2.checkpoint import DetectionCheckpointer; "
        "from detectron2.config import get_cfg; from detectron2.modeling import build_model; "
        "c = get_cfg(); c.merge_from_file('student/student.yaml'); c.MODEL.DEVICE = 'cpu'; "
        "m = build_model(c); r = DetectionCheckpointer(m).resume_or_load(c.MODEL.WEIGHTS); "
        "print(type(m).__name__, c.MODEL.WEIGHTS)"
    )
    plain = _run([python, "-c", check], work, env)  # plain Detectron2 reads the student
    assert plain.stdout.split()[-2:] == ["GeneralizedRCNN", "student/student.pth"]

"""d2dist: knowledge distillation for Detectron2 dense-prediction models.

Installing (a fresh virtual environment needs only Python >= 3.10):

    pip install ".[detectron2]"   # in this folder: d2dist, its dependencies and Detectron2
    pip install .                 # the same without Detectron2: yours is kept
    make env                      # .venv/ with all of it and the tests' tools, d2dist editable

(From elsewhere: the folder's path instead of ``.``, or ``"d2dist[detectron2] @ git+<url>"``.)
This file is the one place that declares d2dist's dependencies, with the reason of each pin;
requirements.txt installs this checkout with them (``pip install -r requirements.txt``), as
tools/install_env.sh (``make env``) does after PyTorch and Detectron2.

Detectron2 is not on PyPI, and a user's own build (with its compiled ops) must never be replaced:
so it is no dependency, only the extra ``detectron2``. That extra installs ``sal-detectron2`` 0.7.2,
a wheel of upstream Detectron2's Python code (commit a59f0563, with the DeepLab, Panoptic-DeepLab
and PointRend projects) that pip takes on Python 3.10 only: the wheel is tagged ``cp310``. On
another Python, ``make env`` (tools/install_env.sh) installs the same wheel under a
``py3-none-any`` name, which works there (its compiled ``_C`` does not load, and Detectron2 works
without it; tools/install_env.sh says how); or install Detectron2 the upstream way first.

The package ships the checkout's ``configs/`` as ``d2dist/configs`` (copied at build time, as
Detectron2 ships its model-zoo configs), so ``d2dist://configs/...`` works from an install; an
editable install reads the checkout's ``configs/`` (see d2dist/file_io.py). The tools are console
scripts (``d2dist-train``, ``d2dist-export``, ...: d2dist/cli/).
"""

import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "d2dist" / "__init__.py").read_text(), re.M
).group(1)

INSTALL_REQUIRES = [
    # Detectron2 deliberately absent: see the module docstring (the extra "detectron2").
    "torch>=2.0",
    "torchvision>=0.15",
    # The PyPI Detectron2 build needs numpy<2 (`sal-detectron2 0.7.2 requires numpy<2`).
    "numpy<2",
    # detectron2.model_zoo imports pkg_resources, which setuptools 81 removed.
    "setuptools<81",
    # opencv 4.11+ wheels need numpy>=2 (see numpy above).
    "opencv-python-headless>=4.5,<4.11",
    # Detectron2's LazyConfig requires omegaconf>=2.1,<2.4 (and hydra-core).
    "omegaconf>=2.1,<2.4",
    "hydra-core>=1.1",
    "fvcore>=0.1.5",
    "iopath>=0.1.7",
    "pycocotools>=2.0.2",
    # Detectron2's Cityscapes instance loader reads the polygons JSON with shapely.
    "shapely>=2.0",
    # The official Cityscapes label definitions and evaluation.
    "cityscapesscripts>=2.2",
    # Detectron2's ViT backbone (ViTDet teachers) imports timm's DropPath and Mlp.
    "timm>=0.9",
    "tqdm>=4.29",
    "tabulate",
    "matplotlib>=3.5",
]
EXTRAS_REQUIRE = {
    # Detectron2 from PyPI (Python 3.10; see the module docstring).
    "detectron2": ["sal-detectron2==0.7.2; python_version == '3.10'"],
    # The tests; `make test-fast` runs them on every core with pytest-xdist.
    "test": ["pytest>=7", "pytest-xdist>=3.0"],
}
CONSOLE_SCRIPTS = [
    "d2dist-train = d2dist.cli.train_net:console_main",
    "d2dist-train-lazy = d2dist.cli.lazyconfig_train_net:console_main",
    "d2dist-export = d2dist.cli.export_student:console_main",
    "d2dist-label = d2dist.cli.label_images:console_main",
    "d2dist-benchmark = d2dist.cli.benchmark:console_main",
    "d2dist-loss-scale = d2dist.cli.loss_scale:console_main",
    "d2dist-convert-torchvision = d2dist.cli.convert_torchvision_to_d2:console_main",
    "d2dist-demo = d2dist.cli.demo:main",
    "d2dist-study = d2dist.cli.study:main",
    "d2dist-visualize = d2dist.cli.visualize:main",
]


class BuildPyWithConfigs(build_py):
    """``build_py`` that also copies the checkout's ``configs/`` into the built package as
    ``d2dist/configs`` (not for an editable install, which reads the checkout's own)."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        source = HERE / "configs"
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: d2dist's configs, which the package ships")
        target = Path(self.build_lib) / "d2dist" / "configs"
        if target.exists():
            shutil.rmtree(target)  # a stale copy of an earlier build
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(
    name="d2dist",
    version=VERSION,
    description="Knowledge distillation for Detectron2 detection and segmentation models",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["d2dist", "d2dist.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": CONSOLE_SCRIPTS},
    cmdclass={"build_py": BuildPyWithConfigs},
)

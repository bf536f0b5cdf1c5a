"""d2dist: knowledge distillation for Detectron2 dense-prediction models.

Detectron2 is a prerequisite, not a dependency pip resolves: it is not on PyPI, and a user's own
build (with its compiled ops) must never be replaced. `make env` (tools/install_env.sh) installs
one when none is importable.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "d2dist" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="d2dist",
    version=VERSION,
    description="Knowledge distillation for Detectron2 detection and segmentation models",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["d2dist", "d2dist.*"]),
    python_requires=">=3.10",
    install_requires=[
        # detectron2 deliberately absent: see the module docstring.
        "torch>=2.0",
        "torchvision>=0.15",
        "fvcore>=0.1.5",
        "iopath>=0.1.7",
        "pycocotools>=2.0.2",
        "opencv-python-headless>=4.5",
        "cityscapesscripts>=2.2",
        "tqdm>=4.29",
        "matplotlib>=3.5",
    ],
    extras_require={"test": ["pytest>=7"]},
)

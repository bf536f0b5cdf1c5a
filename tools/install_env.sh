#!/usr/bin/env bash
# Create (or complete) d2dist's project-local virtual environment and install everything into it.
#
#   bash tools/install_env.sh [VENV_DIR]        (default: .venv; `make` calls this)
#
# Environment:
#   PYTHON=python3.11                 interpreter that creates the venv (default: python3)
#   D2DIST_SYSTEM_SITE_PACKAGES=1     let the venv see the system's packages, so a Detectron2 and
#                                     PyTorch you built yourself are kept instead of installed
#
# Any failure stops the script with the reason; `make` then leaves no "installed" stamp, so the
# next run picks up where this one stopped.
set -euo pipefail

VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
# PyTorch pair: these exact releases lie on the project's machines' disk (no multi-GB download)
# and are the versions the test suite and benchmarks were run with.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
# Detectron2 is not published on PyPI. sal-detectron2 0.7.2 carries upstream Detectron2's Python
# code (commit a59f0563, plus the deeplab / panoptic_deeplab / point_rend projects). Its wheel is
# tagged cp310 although it is pure Python for our purposes (its compiled _C does not load on 3.11
# and Detectron2 works without it), so it is installed under a py3-none-any file name.
D2_DIST=sal-detectron2==0.7.2
D2_PINS=("numpy<2")  # that build's own requirement

die() { echo "install_env: $*" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    command -v "$PYTHON" >/dev/null || die "no '$PYTHON' on PATH; set PYTHON=/path/to/python3.10+"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$PYTHON is $("$PYTHON" --version 2>&1); d2dist needs Python >= 3.10"
    venv_args=()
    [ "${D2DIST_SYSTEM_SITE_PACKAGES:-0}" = 1 ] && venv_args+=(--system-site-packages)
    echo "install_env: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "${venv_args[@]}" "$VENV" || die "could not create the virtual environment $VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check --no-input)

packages=()
if "$VPY" -c 'import torch, torchvision' 2>/dev/null; then
    echo "install_env: keeping $("$VPY" -c 'import torch; print("torch", torch.__version__)')"
else
    packages+=("${TORCH_PINS[@]}")
fi

if "$VPY" -c 'import detectron2' 2>/dev/null; then
    echo "install_env: keeping $("$VPY" -c 'import detectron2 as d; print("detectron2", d.__version__, "from", d.__path__[0])')"
else
    wheels="$VENV/.d2dist-wheels"
    mkdir -p "$wheels"
    echo "install_env: Detectron2 is not importable; fetching $D2_DIST from PyPI"
    "$VPY" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.10 -d "$wheels" "$D2_DIST" \
        || die "could not download $D2_DIST; install Detectron2 yourself (see README) and rerun"
    src=$(ls "$wheels"/sal_detectron2-*-cp310-none-any.whl | head -n 1)
    [ -f "$src" ] || die "downloaded $D2_DIST but found no wheel in $wheels"
    dst="${src%-cp310-none-any.whl}-py3-none-any.whl"
    cp "$src" "$dst"
    packages+=("$dst" "${D2_PINS[@]}")
fi

# setuptools<81 first: setup.py builds with the venv's own setuptools (no isolated build, which
# would fetch one), and Detectron2's model_zoo needs pkg_resources (see setup.py).
echo "install_env: installing ${packages[*]:-} setuptools<81"
"${PIP[@]}" "${packages[@]}" "setuptools<81" || die "pip could not install ${packages[*]:-} setuptools<81 (see above)"
# d2dist, editable, with the dependencies setup.py declares and the tests' (requirements.txt).
echo "install_env: installing requirements.txt (d2dist and its dependencies, from setup.py)"
"${PIP[@]}" --no-build-isolation -r requirements.txt || die "pip could not install d2dist and its dependencies (see above)"

"$VPY" - <<'PY' || die "the environment was installed but does not import; see the error above"
import cv2, cityscapesscripts, detectron2, fvcore, matplotlib, pycocotools, pytest, torch, torchvision, tqdm
import d2dist
print(f"install_env: ready: d2dist {d2dist.__version__}, detectron2 {detectron2.__version__}, "
      f"torch {torch.__version__}, torchvision {torchvision.__version__}, cuda {torch.cuda.is_available()}")
PY

#!/usr/bin/env bash
# Wheels for the GPU machine's image, made here where PyPI is reachable: that image holds Python
# 3.12 with its own PyTorch, NumPy, OpenCV, Pillow, matplotlib, pytest, timm and more, but not
# Detectron2 and a few of its needs. tools/gpu_check.sh installs what lies in the folder there
# (with --no-index --no-deps, into a scratch folder, never over the image's own packages).
#
#   bash tools/gpu_wheels.sh [DIR]      (default: .whl, which .gitignore ignores; the device
#                                        tool's `carry` takes it along: about 9 MiB)
#
# Environment: PYTHON_VERSION (default 3.12), the GPU image's Python.
set -euo pipefail

DIR=${1:-.whl}
PYVER=${PYTHON_VERSION:-3.12}
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
PIP=("$PY" -m pip --disable-pip-version-check --no-input)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
# What the image lacks, pinned: Detectron2's needs that are not in the image, and setuptools<81
# (detectron2.model_zoo imports pkg_resources).
BINARY=(pycocotools==2.0.11 iopath==0.1.9 yacs==0.1.8 omegaconf==2.3.0 hydra-core==1.3.2
        termcolor==3.3.0 setuptools==80.10.2)
# Published as source only; pure Python, so a wheel built here serves any Python 3.
SOURCE=(fvcore==0.1.5.post20221221 antlr4-python3-runtime==4.9.3)
# Detectron2's Python code; see tools/install_env.sh for why its cp310 tag is renamed.
D2=sal-detectron2==0.7.2

die() { echo "gpu_wheels: $*" >&2; exit 1; }
mkdir -p "$DIR"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLATFORMS[@]}" -d "$DIR" "${BINARY[@]}" \
    || die "could not download ${BINARY[*]}"
"${PIP[@]}" wheel -q --no-deps -w "$DIR" "${SOURCE[@]}" || die "could not build ${SOURCE[*]}"
tmp=$(mktemp -d)
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$tmp" "$D2" \
    || die "could not download $D2"
for src in "$tmp"/sal_detectron2-*-cp310-none-any.whl; do
    name=$(basename "$src")
    cp "$src" "$DIR/${name%-cp310-none-any.whl}-py3-none-any.whl"
done
rm -rf "$tmp"
echo "gpu_wheels: $(ls "$DIR" | wc -l) wheels, $(du -sh "$DIR" | cut -f1), in $DIR:"
ls "$DIR"

#!/usr/bin/env bash
# The one GPU check: CUDA tests, step costs at COCO scale, a 300-iteration AMP run of the demo
# pair and a markdown summary for docs/benchmarks.md, as files directly under OUT.
#
#   bash tools/gpu_check.sh OUT [--cpu] [--budget-s SECONDS] [--work DIR]
#
# Sized for one H200 within eight minutes, this install included. On a bare GPU machine whose
# Python lacks Detectron2 it first installs the wheels of .whl/ (made beforehand where PyPI is
# reachable, by `bash tools/gpu_wheels.sh`) into a scratch folder, not over the machine's own
# packages (D2DIST_GPU_WHEELS names another folder of wheels). Without CUDA it runs its CPU-safe
# parts (tests/test_gpu_check.py runs it so).
# What each part does: tools/gpu_check.py. Exit status: 0 all ran and passed; 1 a part
# failed (named in OUT/summary.md and OUT/gpu_check.log); 2 the check could not start.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "usage: bash tools/gpu_check.sh OUT [--cpu] [--budget-s SECONDS] [--work DIR]" >&2
    exit 2
fi
OUT=$1
shift
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS=${D2DIST_GPU_WHEELS:-.whl}
if ! "$PY" -c 'import detectron2, fvcore, pycocotools' 2>/dev/null; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "gpu_check: $PY cannot import Detectron2, fvcore and pycocotools, and there are no" \
             "wheels in $WHEELS/: run 'bash tools/gpu_wheels.sh $WHEELS' where PyPI is reachable" \
             "and bring that folder along, or run 'make env' and rerun" >&2
        exit 2
    fi
    SITE=${D2DIST_GPU_SITE:-/tmp/d2dist-gpu-site}
    echo "gpu_check: installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS/ into $SITE"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # d2dist from this checkout
exec "$PY" tools/gpu_check.py "$OUT" "$@"

# d2dist: the two commands are `make demo` and `make test`. Both create .venv/ on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.d2dist-installed
PYTEST_ARGS ?=

.PHONY: demo study patience test test-fast gpu-check env clean-env
.DELETE_ON_ERROR:

# The stamp is remade (and pip re-run) only when the dependency files change.
$(STAMP): tools/install_env.sh requirements.txt setup.py
	bash tools/install_env.sh $(VENV)
	touch $@

env: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

# The seeded accuracy study (2 tasks, 71 runs: about 1.5 hours on 2 cores, see the README): writes
# docs/results.md and its charts.
study: $(STAMP)
	$(PY) tools/study.py

# The study of patience and consistency (unlabeled images with offline / online teacher labels,
# mixup; 1x, 2x, 4x schedules; seed 1, and seeds 2 and 3 at 1x and 2x): writes its section of
# docs/results.md. About two hours on 2 cores; `$(PY) tools/patience_study.py --seeds 1` for one.
patience: $(STAMP)
	$(PY) tools/patience_study.py $(PATIENCE_ARGS)

# Everything (CI runs this through .ci/run): two workers with one thread each, each test file on
# one worker (its module-scoped fixtures, e.g. a trained tiny teacher, made once; the DDP tests of
# a file, which share Detectron2's default port, never side by side).
test: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# The inner loop: all but the tests marked slow (training runs, subprocesses, several processes,
# kill and resume, the study, full-size configs), on every core with one thread per process.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -m "not slow" -n auto $(PYTEST_ARGS)

# The one GPU check (see docs/benchmarks.md); its results go to $(OUT).
OUT ?= output/gpu_check
gpu-check: $(STAMP)
	bash tools/gpu_check.sh $(OUT)

clean-env:
	rm -rf $(VENV)

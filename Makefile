# d2dist: the two commands are `make demo` and `make test`. Both create .venv/ on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.d2dist-installed
PYTEST_ARGS ?=

.PHONY: demo study test env clean-env
.DELETE_ON_ERROR:

# The stamp is remade (and pip re-run) only when the dependency files change.
$(STAMP): tools/install_env.sh requirements.txt setup.py
	bash tools/install_env.sh $(VENV)
	touch $@

env: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

# The seeded accuracy study (about an hour on 2 cores): writes docs/results.md and its charts.
study: $(STAMP)
	$(PY) tools/study.py

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean-env:
	rm -rf $(VENV)

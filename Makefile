# `make run`: run the local target end to end.  `make test`: the test suite.
# Both create (or reuse) the virtual environment in .venv and install what the project needs.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WHEELHOUSE := $(VENV)/wheelhouse

.PHONY: install run test bench build check screens stack-up stack-down engine engine-down clean

install: $(STAMP)

# Reinstalled only when the requirements or the package metadata change.
$(STAMP): requirements.txt pyproject.toml tests/series/hub-kernel.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	# The hub stand-in kernel's packages as wheels: its test installs them without a package index.
	$(PY) -m pip wheel --quiet --wheel-dir $(WHEELHOUSE) -r tests/series/hub-kernel.txt
	touch $@

run: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m chi_helpers run --target local

test: $(STAMP)
	$(PY) -m pytest

build: $(STAMP)
	$(PY) -m chi_helpers build

check: $(STAMP)
	$(PY) -m chi_helpers build --check

# The lesson's figures (docs/screens/): Chromium walks the MLflow UI as the notebooks say, on the history
# of the last `make run` (it runs the series first when there is none), and saves a screenshot per step.
screens: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m chi_helpers screens

bench: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m chi_helpers bench tracking

stack-up: $(STAMP)
	$(PY) -m chi_helpers stack up

stack-down: $(STAMP)
	$(PY) -m chi_helpers stack down

# A Docker engine for the container tests (`make test` runs them whenever one answers): installs what is
# missing (Debian, as root), starts dockerd, makes the base image and builds the stack's images (the only
# step that reaches the package registries: the tests' own builds find every step cached). An engine
# already running is used as is.
engine: $(STAMP)
	$(PY) -m chi_helpers engine up

engine-down: $(STAMP)
	$(PY) -m chi_helpers engine down

# Removes what the local target made (data, stack, outputs) and the virtual environment.
clean:
	-test -x $(PY) && $(PY) -m chi_helpers stack down
	rm -rf .local-target $(VENV) *.egg-info

# make test | make lab | make train | make experiment DATA=DIR: each creates .venv on first use, then reuses it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint lab train experiment bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

# Library tests, then every notebook through nbval in smoke mode (EFFV2_SMOKE=1
# shrinks each heavy step; the variable reaches the notebook kernels).
test: $(STAMP)
	EFFV2_SMOKE=1 MPLBACKEND=Agg $(PY) -m pytest -q tests notebooks --nbval-lax --nbval-current-env

# The edit-test loop: the library tests alone, without the notebooks and the browser (about a minute).
test-fast: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q tests -m "not browser and not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

train: $(STAMP)
	$(PY) -m effv2_lib.train --auto

# The CPU CIFAR-10 experiment (effv2_lib.experiments): five runs on the full data set, one after
# the other, about 2.2 hours on 2 quiet cores; rerun to resume. DATA: a directory with train.npz/test.npz.
DATA ?= $(EFFV2_DATA)
experiment: $(STAMP)
	@test -n "$(DATA)" || { echo "make experiment needs DATA=DIR (a directory with CIFAR-10's train.npz and test.npz)"; exit 2; }
	$(PY) -m effv2_lib.experiments cpu-cifar10 --data "$(DATA)" --out results/cpu-cifar10

bench: $(STAMP)
	$(PY) -m effv2_lib.bench

clean-venv:
	rm -rf $(VENV)

# make test | make lab | make train: each creates .venv on first use, then reuses it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lab train bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

# Library tests, then every notebook through nbval in smoke mode (EFFV2_SMOKE=1
# shrinks each heavy step; the variable reaches the notebook kernels).
test: $(STAMP)
	EFFV2_SMOKE=1 MPLBACKEND=Agg $(PY) -m pytest -q tests notebooks --nbval-lax --nbval-current-env

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

train: $(STAMP)
	$(PY) -m effv2_lib.train --auto

bench: $(STAMP)
	$(PY) -m effv2_lib.bench

clean-venv:
	rm -rf $(VENV)

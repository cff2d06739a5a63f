# Each target sets up its own environment: .venv with the pinned requirements.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Offline data: where the four MNIST .gz files are (see README, "Offline use").
# Defaults to ../shared/datasets/mnist when that folder exists.
SHARED_MNIST := $(wildcard ../shared/datasets/mnist)
ifneq ($(SHARED_MNIST),)
export DIGITS_MANUAL_DIR ?= $(abspath $(SHARED_MNIST))
endif

.PHONY: venv sweep sweep-full sweep-ensemble test lint format lock benchmark speedrun clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

## The default sweep (quick preset: every registered model, 1 seed).
sweep: venv
	$(PY) -m experiments.sweep $(ARGS)

## The full table: every model at its source's settings, three seeds.
sweep-full: venv
	$(PY) -m experiments.sweep --preset=source --seeds=0,1,2 $(ARGS)

## The ensemble preset: the three strongest networks with stronger augmentation for 20
## epochs (better on validation than their recipes), three seeds each; the sweep's
## compare.md gives their ensemble (one network of each per seed, and all nine runs).
sweep-ensemble: venv
	$(PY) -m experiments.sweep --preset=source --models=bn_conv3_wide,vgg_small,resnet8 \
	  --epochs=20 --rotation=15 --shift=2.8 --zoom=0.15 --seeds=0,1,2 \
	  --workdir=runs/sweep-ensemble $(ARGS)

test: venv
	$(PY) -m pytest -q -n auto --dist loadfile tests $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .

benchmark: venv
	$(PY) -m benchmarks.frameworks $(ARGS)

## Time to 99%: the speedrun recipe for 10 seeds, side by side with PyTorch.
speedrun: venv
	$(PY) -m experiments.speedrun $(ARGS)

lock:
	rm -rf /tmp/digits-lock && $(PYTHON) -m venv /tmp/digits-lock
	/tmp/digits-lock/bin/pip install --quiet -r requirements.in
	( echo "# Generated from requirements.in by 'make lock' (pip freeze of a fresh venv, Python 3.11)."; \
	  /tmp/digits-lock/bin/pip freeze ) > requirements.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

## Device check: device, epoch seconds, speedrun over 5 seeds, vmapped group vs runs in a row (JSON).
device-check: venv
	$(PY) -m benchmarks.device_check $(ARGS)

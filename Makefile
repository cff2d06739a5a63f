# Each target sets up its own environment: .venv with the pinned locks in requirements/.
# make sweep (and train, evaluate, ...) installs the runtime lock only; make test and make lint
# add the test, tfds and bench layers to the same .venv.
# Python: the first of python3.12, python3.11, python3, python3.13 that is 3.11 or newer (the
# locks are tested on 3.11 and 3.12);
# override with make PYTHON=/path/to/python3.12 sweep.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach p,python3.12 python3.11 python3 python3.13,\
  $(if $(shell $(p) -c 'import sys; print(sys.version_info >= (3, 11))' 2>/dev/null | grep -x True),$(p))))
endif
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet
REQ := requirements
# Offline data: where the four MNIST .gz files are (see README, "Offline use").
# Defaults to ../shared/datasets/mnist when that folder exists.
SHARED_MNIST := $(wildcard ../shared/datasets/mnist)
ifneq ($(SHARED_MNIST),)
export DIGITS_MANUAL_DIR ?= $(abspath $(SHARED_MNIST))
endif

.PHONY: venv venv-test sweep sweep-full sweep-ensemble test lint format lock benchmark speedrun clean \
  fashion-mnist

$(VENV)/.python:
	@test -n "$(PYTHON)" || { echo "No Python 3.11 or newer found (tried python3.12, python3.11, python3, python3.13); install one or run make PYTHON=/path/to/python3.12 $(MAKECMDGOALS)" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "$(PYTHON) is older than 3.11: run make PYTHON=/path/to/python3.11-or-newer $(MAKECMDGOALS)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	touch $@

$(VENV)/.installed: $(VENV)/.python $(REQ)/runtime.txt
	$(PIP) -r $(REQ)/runtime.txt
	$(PIP) --no-deps -e .
	touch $@

# The bench layer's torch from PyPI brings CUDA libraries (several GB); on a machine without
# an NVIDIA GPU, make test BENCH_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# takes the CPU-only wheel (about 190 MB) of the same version instead.
$(VENV)/.installed-test: $(VENV)/.installed $(REQ)/test.txt $(REQ)/tfds.txt $(REQ)/bench.txt
	$(PIP) -r $(REQ)/test.txt -r $(REQ)/tfds.txt -r $(REQ)/bench.txt $(BENCH_PIP_ARGS)
	touch $@

# The runtime: what make sweep needs.
venv: $(VENV)/.installed

# The runtime plus what the tests, lint and benchmarks need.
venv-test: $(VENV)/.installed-test

## The default sweep (quick preset: every registered model, 1 seed).
sweep: venv
	$(PY) -m experiments.sweep --config=configs/sweep_quick.py $(ARGS)

## The full table: every model at its source's settings, three seeds.
sweep-full: venv
	$(PY) -m experiments.sweep --config=configs/sweep_source.py $(ARGS)

## The ensemble preset: the three strongest networks with stronger augmentation for 20
## epochs (better on validation than their recipes), three seeds each; the sweep's
## compare.md gives their ensemble (one network of each per seed, and all nine runs).
sweep-ensemble: venv
	$(PY) -m experiments.sweep --config=configs/sweep_ensemble.py $(ARGS)

test: venv-test
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder tests $(ARGS)

lint: venv-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv-test
	$(VENV)/bin/ruff format .

benchmark: venv-test
	$(PY) -m benchmarks.frameworks $(ARGS)

## Time to 99%: the speedrun recipe for 10 seeds, side by side with PyTorch.
speedrun: venv-test
	$(PY) -m experiments.speedrun --config=configs/speedrun.py $(ARGS)

# Regenerates every lock in requirements/ from its .in file, resolved on the public index
# with the Python found above (the locks are made with 3.11, the oldest supported).
LOCK_PIP_ARGS ?= --isolated --index-url https://pypi.org/simple
lock:
	rm -rf /tmp/digits-lock && $(PYTHON) -m venv /tmp/digits-lock
	/tmp/digits-lock/bin/python -m pip install --quiet $(LOCK_PIP_ARGS) --upgrade pip
	/tmp/digits-lock/bin/python scripts/lock.py $(addprefix --pip-arg=,$(LOCK_PIP_ARGS))

## Fashion-MNIST without its host: the four .gz files of Debian's dataset-fashion-mnist package
## (apt-get download, no root needed; Debian or Ubuntu) copied into DIR, the manual dir of
## --dataset=fashion_mnist (their IDX data is checked against the recorded SHA-256 digests).
DIR ?= data/fashion-mnist
fashion-mnist:
	@command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || { echo "make fashion-mnist needs apt-get and dpkg-deb (Debian or Ubuntu); elsewhere download the four files from http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ into $(DIR)" >&2; exit 1; }
	@tmp=$$(mktemp -d) && chmod 755 "$$tmp" && trap 'rm -rf "$$tmp"' EXIT && \
	  (cd "$$tmp" && apt-get download dataset-fashion-mnist) && \
	  dpkg-deb -x "$$tmp"/dataset-fashion-mnist_*.deb "$$tmp/x" && \
	  mkdir -p "$(DIR)" && \
	  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do \
	    src=$$(find "$$tmp/x" -name "$$f.gz" | head -n 1); \
	    test -n "$$src" || { echo "$$f.gz not found in the package" >&2; exit 1; }; \
	    cp "$$src" "$(DIR)/$$f.gz"; \
	  done && \
	  echo "Fashion-MNIST in $(DIR): train with --dataset=fashion_mnist --manual_dir=$(DIR)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

## Device check: device, epoch seconds, speedrun over 5 seeds, vmapped group vs runs in a row (JSON).
device-check: venv
	$(PY) -m benchmarks.device_check $(ARGS)

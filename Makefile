# napari-sscce: `make demo` and `make test` work on a fresh clone with nothing installed by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# this machine's CPU build of PyTorch (a bare `torch` would pull several GB of CUDA wheels)
TORCH_PIN ?= torch==2.13.0

.PHONY: install sysdeps test lint demo models benchmark clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) sysdeps

sysdeps:
	@bash scripts/install_system_deps.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: install
	bash scripts/with_display.sh $(VENV)/bin/python -m pytest -q -p no:cacheprovider tests
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/npe2 validate napari_sscce

demo: install
	bash scripts/with_display.sh $(PY) -m napari_sscce.demo

# the packaged models (src/napari_sscce/data/models): train with the recorded recipes on ../shared/data,
# evaluate on the validation cases, store in fp16 with their model cards, print the figures (hours on a CPU)
models: install
	$(PY) scripts/train_models.py

# the CPU recipes of the README (hours on 2 cores; on a GPU see benchmarks/ssl_parallel.sh)
benchmark: install
	$(PY) benchmarks/inference.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/semi_supervised.py --methods supervised cce supervised_all ugmcl --seeds 0 1 \
		--iterations 1000 --base-filters 8 --no-dropout --device cpu

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache

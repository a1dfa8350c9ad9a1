# Two commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := constraints-cpu.txt
DEMO_OUT ?= medseg_demo_output

.PHONY: env demo test test-all lint bench clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned to the CPU build, so nothing below can pull a CUDA wheel.
	$(PIP) install -q -c $(CONSTRAINTS) "torch==2.13.0"
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

env: $(VENV)/.installed

demo: env
	$(VENV)/bin/medseg demo --output $(DEMO_OUT)

test: env
	$(PY) -m pytest

test-all: env
	$(PY) -m pytest -m ""

lint: env
	$(VENV)/bin/ruff check src tests benchmarks

bench: env
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[bench]"
	$(PY) benchmarks/bench_unet.py
	$(PY) benchmarks/bench_dataloading.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache

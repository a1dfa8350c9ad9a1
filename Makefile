# Two commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONSTRAINTS := constraints-cpu.txt
DEMO_OUT ?= medseg_demo_output

.PHONY: env browser demo test test-all lint bench clean

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

# Headless Chromium + chromedriver for tests/reports/test_report_browser.py (Debian packages),
# installed when missing and apt is usable (as root, or through password-less sudo); without
# them that test is skipped and says why.
BROWSER_PKGS := chromium chromium-driver
browser:
	@if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || \
	    command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1; }; \
	then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "browser: no apt-get; install Chromium and chromedriver to run the browser test"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PKGS) \
	    || echo "browser: apt-get install $(BROWSER_PKGS) failed; the browser test will skip"; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    $(BROWSER_PKGS) || echo "browser: installing $(BROWSER_PKGS) failed; the test will skip"; \
	else \
	  echo "browser: not root and no password-less sudo; the browser test will skip"; \
	fi

test: env browser
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

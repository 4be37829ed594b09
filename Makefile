# Everything a fresh machine needs is installed by these targets themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

# The real Prometheus the integration tests start (Debian package; no service is started),
# and the headless chromium the dashboard's browser test drives.
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  ( $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends prometheus )
	@command -v chromium >/dev/null || \
	  ( $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium )

demo: install
	$(BIN)/mesh-canary demo

test: install system-deps
	$(PY) -m pytest -q

lint: install
	$(BIN)/ruff check mesh_canary tests bench
	$(BIN)/ruff format --check mesh_canary tests bench
	$(BIN)/mypy

# The benchmarks' own extra (matplotlib, for bench/controller_scale.py's plot).
$(VENV)/.bench-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

bench: install $(VENV)/.bench-installed
	@command -v wrk >/dev/null || \
	  ( $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends wrk )
	$(PY) bench/run_all.py $(if $(filter-out 0,$(BENCH_QUICK)),--quick)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

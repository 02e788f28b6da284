# Nebula Command: `make run` starts the dashboard, `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENDOR := src/nebula/web/static/vendor
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test lint typecheck pytest assets clean

run: $(VENV)/.installed assets
	$(BIN)/nebula db upgrade
	$(BIN)/nebula serve --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-dev assets lint typecheck pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests migrations bench
	$(BIN)/ruff format --check src tests migrations bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev assets
	$(BIN)/pytest $(PYTEST_ARGS)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "Nebula Command needs Python 3.11 or newer (found $$($(PYTHON) --version))." >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "Installing python3-venv (needed to create $(VENV))..."; \
	  $(SUDO) apt-get install -y python3-venv >/dev/null && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

# htmx and Swagger UI come from the npm registry at build time; they are never committed.
assets: $(VENDOR)/.stamp

$(VENDOR)/.stamp: assets/package.json assets/package-lock.json
	@command -v npm >/dev/null || { \
	  echo "Installing npm (needed once, to fetch htmx and Swagger UI)..."; \
	  $(SUDO) apt-get install -y npm >/dev/null; }
	npm ci --prefix assets --ignore-scripts --no-audit --no-fund --loglevel=error
	mkdir -p $(VENDOR)
	cp assets/node_modules/htmx.org/dist/htmx.min.js $(VENDOR)/
	cp assets/node_modules/swagger-ui-dist/swagger-ui-bundle.js $(VENDOR)/
	cp assets/node_modules/swagger-ui-dist/swagger-ui.css $(VENDOR)/
	@touch $@

clean:
	rm -rf $(VENV) $(VENDOR) assets/node_modules .mypy_cache .ruff_cache .pytest_cache

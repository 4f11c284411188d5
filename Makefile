# Everything a developer runs, and exactly what CI runs (`.ci/run` calls `make test`).
# Works on a fresh clone: the virtualenv and installs are made on demand, and stamp
# files inside .venv make re-runs quick until pyproject.toml changes.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CODE := src tests benchmarks

INSTALL_STAMP := $(VENV)/install.stamp
DEV_STAMP := $(VENV)/dev.stamp

.PHONY: install dev run redis compose browser lint typecheck test bench fmt clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALL_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e .
	touch $@

# The dev extras are a superset of the runtime install, so they satisfy `install` too.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev]'
	touch $@ $(INSTALL_STAMP)

install: $(INSTALL_STAMP)

dev: $(DEV_STAMP)

run: install
	$(BIN)/pitchey-cache serve

# Integration tests and benchmarks start their own redis-server processes on free
# ports; they only need the binary. Debian's package may start a system service on
# 6379 when installed; it is stopped again so that nothing answers on 6379 unless the
# developer runs a Redis there on purpose.
redis:
	@if command -v redis-server >/dev/null 2>&1; then \
		echo "redis-server: $$(command -v redis-server)"; \
	elif [ "$$(id -u)" -eq 0 ]; then \
		echo "redis-server not found; installing Debian's redis-server and redis-tools"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update; \
		apt-get install -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
			redis-server redis-tools; \
		service redis-server stop >/dev/null 2>&1 || true; \
		if [ -f /run/redis/redis-server.pid ]; then \
			kill "$$(cat /run/redis/redis-server.pid)" 2>/dev/null || true; \
		fi; \
		redis-server --version; \
	else \
		echo "error: redis-server is not on PATH. Install Debian's package with" >&2; \
		echo "  sudo apt-get install -y redis-server redis-tools" >&2; \
		echo "(or run 'make redis' as root), then re-run make." >&2; \
		exit 1; \
	fi

# The compose file's test only parses it (`config`); no Docker engine is needed,
# only a client. Without one, and without root to install Debian's, the test skips.
compose:
	@if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then \
		echo "docker compose client: present"; \
	elif [ "$$(id -u)" -eq 0 ]; then \
		echo "no docker compose client; installing Debian's docker-compose (client only)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose >/dev/null \
			|| { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose >/dev/null; } \
			|| echo "could not install docker-compose; the compose file test will skip"; \
	else \
		echo "no docker compose client; the compose file test will skip"; \
	fi

# The dashboard's browser test drives Debian's chromium at /usr/bin/chromium through
# Playwright; Playwright's own browser download needs the network and is never run.
# Without the browser, and without root to install it, that test skips.
browser:
	@if [ -x /usr/bin/chromium ]; then \
		echo "chromium: /usr/bin/chromium"; \
	elif [ "$$(id -u)" -eq 0 ]; then \
		echo "chromium not found; installing Debian's chromium"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y chromium >/dev/null \
			|| { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; } \
			|| true; \
		if [ ! -x /usr/bin/chromium ]; then \
			echo "error: could not install Debian's chromium (see apt-get's messages above)" >&2; \
			exit 1; \
		fi; \
		echo "chromium: installed at /usr/bin/chromium"; \
	else \
		echo "chromium not found; the dashboard test will skip. Install Debian's package with"; \
		echo "  sudo apt-get install -y chromium"; \
		echo "(or run 'make browser' as root)."; \
	fi

lint: dev
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)

typecheck: dev
	$(BIN)/mypy

# Lint and typecheck first: they fail in seconds. pytest then runs unit tests before
# integration tests (tests/conftest.py orders them) in one run, so one summary line
# covers everything and any failure makes the target fail.
test: dev redis compose browser lint typecheck
	$(BIN)/pytest

bench: dev redis
	$(BIN)/python -m benchmarks

fmt: dev
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis artifacts build dist
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -prune \
		-exec rm -rf {} +

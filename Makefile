# memoryd: two commands for a newcomer.
#
#   make run    create .venv, install, run the daemon in the foreground (local store, ./.run/)
#   make test   create .venv with the test tools, then lint, typecheck and the whole test suite
#
# Other targets: lint, typecheck, pytest (tests only), drill, soak, demo, bench, install,
# install-test, clean, help.
# pip uses the machine's own index configuration; nothing here overrides it.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

# A Unix socket path must fit in about 100 bytes: override RUN_DIR if the
# checkout lives deep down, e.g. `make run RUN_DIR=/tmp/memoryd-dev`.
RUN_DIR ?= $(CURDIR)/.run
SOCKET := $(RUN_DIR)/memoryd.sock
DATA_DIR := $(RUN_DIR)/data
DEV_CONFIG := config/dev.toml
# Extra flags for `memoryd run`, e.g. make run ARGS="--redis-url redis://localhost:6379/0"
ARGS ?=

LINT_PATHS := memoryd libclient tests bench
TYPED_PATHS := memoryd libclient/memoryd_client libclient/examples bench tests

PYPROJECTS := pyproject.toml libclient/pyproject.toml
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
STAMP_BENCH := $(VENV)/.installed-bench

.PHONY: help run test lint typecheck pytest drill soak demo bench bench-quick install install-test install-bench redis-server clean

help:
	@echo "make run        install into .venv and run memoryd in the foreground (socket under $(RUN_DIR))"
	@echo "make test       install the test tools, then lint, typecheck and run the test suite"
	@echo "make lint       ruff check + ruff format --check"
	@echo "make typecheck  mypy --strict"
	@echo "make pytest     the test suite only, with its coverage floor"
	@echo "make drill      a minute of writes through a Redis outage and a kill -9; nothing may be lost"
	@echo "make soak       DURATION=24h: traffic and periodic faults for that long (default 10m); fails on"
	@echo "                a lost write, an error outside a fault window or a leak; soak-results/<timestamp>/"
	@echo "make demo       a scripted round table: six agents, several meetings at once, on a private memoryd"
	@echo "make bench      memoryd against the baselines; results in bench/results/<timestamp>/"
	@echo "make bench-quick the same with small iteration counts (under a minute)"
	@echo "make clean      remove .venv, .run and caches"

# ---------------------------------------------------------------- environment

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: apt-get install python3 python3-venv" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "memoryd needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) -V 2>&1)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) \
		|| { rm -rf $(VENV); echo "could not create $(VENV): apt-get install python3-venv" >&2; exit 1; }

# Re-installs when a pyproject.toml changes; the sources are installed editable.
$(STAMP_RUN): $(PYPROJECTS) | $(BIN)/python
	$(PIP) install --quiet -e libclient -e .
	@touch $@

$(STAMP_TEST): $(PYPROJECTS) | $(BIN)/python
	$(PIP) install --quiet -e libclient -e '.[test]'
	@touch $@ $(STAMP_RUN)

$(STAMP_BENCH): $(PYPROJECTS) | $(BIN)/python
	$(PIP) install --quiet -e libclient -e '.[bench]'
	@touch $@ $(STAMP_RUN)

install: $(STAMP_RUN)
install-test: $(STAMP_TEST)
install-bench: $(STAMP_BENCH)

# The tests start their own redis-server processes (never the machine's shared one).
redis-server:
	@if ! command -v redis-server >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "redis-server not found: installing it with apt-get"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -q; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; \
		else \
			echo "redis-server is needed by the tests; install it with:" >&2; \
			echo "    sudo apt-get update && sudo apt-get install -y redis-server" >&2; \
			exit 1; \
		fi; \
	fi

# ---------------------------------------------------------------- run

define CLIENT_SNIPPET
export MEMORYD_SOCKET_PATH=$(SOCKET)
$(BIN)/python - <<'EOF'
from memoryd_client import Client
with Client() as client:
    client.add("craftsman_1", "discussion", "Oak for the frame, walnut for the top.")
    for record in client.recent("craftsman_1", limit=5):
        print(record["type"], record["content"])
EOF
endef
export CLIENT_SNIPPET

run: $(STAMP_RUN)
	@mkdir -p $(RUN_DIR)
	@echo "memoryd socket: $(SOCKET)"
	@echo "data:           $(DATA_DIR)"
	@echo
	@echo "Try it from another terminal:"
	@echo
	@printf '%s\n' "$$CLIENT_SNIPPET"
	@echo
	@echo "Status: $(BIN)/memoryd status --socket $(SOCKET)    Stop: Ctrl-C"
	@echo
	exec $(BIN)/memoryd run --config $(DEV_CONFIG) --socket-path $(SOCKET) --data-dir $(DATA_DIR) $(ARGS)

# ---------------------------------------------------------------- checks

test: lint typecheck pytest

lint: $(STAMP_TEST)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP_TEST)
	$(BIN)/mypy --strict $(TYPED_PATHS)

# Three workers on two cores: most tests wait on real servers and daemons,
# not on the CPU (serial: 7m37s; -n 3: 3m10s, 4m37s with coverage).
PYTEST_WORKERS ?= 3

pytest: $(STAMP_TEST) redis-server
	rm -rf .coverage-data && mkdir -p .coverage-data
	$(BIN)/python -m coverage run -m pytest -n $(PYTEST_WORKERS)
	@# A daemon killed by a test while it wrote its coverage data leaves an
	@# unreadable file behind; combine skips it, and its warning is noise.
	$(BIN)/python -m coverage combine -q 2>&1 | sed -e "/Couldn't use data file/,+1d"
	$(BIN)/python -m coverage report

# The fault drill: real Redis and daemon, Redis killed for 20 s, then the daemon killed -9.
# TOPOLOGY=sentinel: a master, two replicas and three sentinels; the master is killed instead.
# TOPOLOGY=cluster: a Redis Cluster of three masters with a replica each; one master is killed.
TOPOLOGY ?= standalone

drill: $(STAMP_TEST) redis-server
	$(BIN)/python -m tests.drill --topology $(TOPOLOGY) $(ARGS)

# The soak (docs/soak.md): meetings and direct clients on a private Redis and daemon, a fault every
# few minutes, for DURATION (60s, 90m, 2h, 24h); summary.json and soak.png in soak-results/<timestamp>/.
DURATION ?= 10m
soak: $(STAMP_TEST) redis-server
	$(BIN)/python -m tests.soak --duration $(DURATION) $(ARGS)

# ---------------------------------------------------------------- benchmarks

# Starts its own redis-servers and daemons; extra flags via ARGS, e.g. ARGS="--scenario latency".
bench: $(STAMP_BENCH) redis-server
	$(BIN)/python -m bench.run $(ARGS)

demo: $(STAMP_RUN)
	$(BIN)/python libclient/examples/roundtable.py $(ARGS)

bench-quick: $(STAMP_BENCH) redis-server
	$(BIN)/python -m bench.run --quick $(ARGS)

clean:
	rm -rf $(VENV) $(RUN_DIR) .mypy_cache .ruff_cache .pytest_cache .hypothesis .coverage-data build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +

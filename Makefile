# edgeagent developer entry points. Everything is installed into .venv; the
# llama-cpp-python wheel is built once per CPU profile into ~/.cache/edgeagent.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/edgeagent
WHEELHOUSE ?= $(or $(EDGEAGENT_WHEELHOUSE),$(CACHE)/wheelhouse)
ARTIFACTS ?= $(or $(EDGEAGENT_TEST_ARTIFACTS),$(CACHE)/test-artifacts)
PROFILE ?= $(if $(filter aarch64,$(shell uname -m)),pi4,x86-64-v3)
# The llama-cpp-python version the wheelhouse is built for (scripts/build-wheelhouse.sh).
LLAMA_CPP_PYTHON_VERSION ?= 0.3.36

.PHONY: venv model models demo test test-unit test-fast lint typecheck system-deps prebuild clean bench pre-commit

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/build-wheelhouse.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel
	EDGEAGENT_WHEELHOUSE=$(WHEELHOUSE) LLAMA_CPP_PYTHON_VERSION=$(LLAMA_CPP_PYTHON_VERSION) \
		PYTHON=$(BIN)/python scripts/build-wheelhouse.sh $(PROFILE)
	$(BIN)/pip install --quiet --find-links $(WHEELHOUSE)/$(PROFILE) \
		"llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION)" -e '.[dev]'
	touch $@

model: venv
	$(BIN)/python scripts/fetch_model.py smollm2

# The production models by tier (docs/models.md), where the Ansible role copies them from:
# Qwen2.5-Coder-1.5B for boards with >= 4 GB, Qwen2.5-Coder-0.5B below.
models:
	$(PYTHON) scripts/fetch_model.py qwen-coder-1.5b
	$(PYTHON) scripts/fetch_model.py qwen-coder

# Installs what the tests and the demo start for real (mosquitto, container tools).
system-deps:
	scripts/install-system-deps.sh

# DEMO_MODEL=qwen-coder-1.5b: the 4 GB boards' model (1.1 GB download, slower answers).
DEMO_MODEL ?= $(or $(EDGEAGENT_DEMO_MODEL),qwen-coder)
demo: venv system-deps
	PATH="$(abspath $(BIN)):$$PATH" EDGEAGENT_DEMO_MODEL=$(DEMO_MODEL) scripts/demo.sh

lint: venv
	$(BIN)/ruff check edgeagent tests scripts eval
	$(BIN)/ruff format --check edgeagent tests scripts eval

typecheck: venv
	$(BIN)/mypy

# Two pytest sessions side by side: the fleet test (tests/integration/test_ansible.py: its
# builds, then one rollout after another, mostly waiting for the emulated Pi; its output is
# shown when it is done, and kept in ARTIFACTS/pytest-fleet.log) and every other test. Cold,
# `prebuild` has already started the fleet test's builds. Measured: docs/testing-hosts.md.
FLEET_TEST := tests/integration/test_ansible.py
test: system-deps prebuild venv lint typecheck
	@export EDGEAGENT_TEST_MODEL=$$($(BIN)/python scripts/fetch_model.py smollm2) || exit 1; \
	mkdir -p $(ARTIFACTS); \
	$(BIN)/pytest --durations=15 $(FLEET_TEST) >$(ARTIFACTS)/pytest-fleet.log 2>&1 & fleet=$$!; \
	trap 'kill $$fleet 2>/dev/null' INT TERM; \
	$(BIN)/pytest --durations=40 --ignore=$(FLEET_TEST); rest=$$?; \
	echo "waiting for the fleet test ($(ARTIFACTS)/pytest-fleet.log)"; \
	wait $$fleet; fleet_rc=$$?; cat $(ARTIFACTS)/pytest-fleet.log; \
	echo "pytest: fleet test exit $$fleet_rc, other tests exit $$rest"; \
	[ $$rest -eq 0 ] && [ $$fleet_rc -eq 0 ]

# The fleet test's builds not made with the venv (pi4 cross build, emulated Pi image, nspawn
# root, ansible venv, apt packages), started in the background before the venv's own
# llama.cpp build so the two overlap; the tests wait for them through their file locks.
# Stdlib Python only; nothing to do when they are cached, or where the fleet cannot run.
prebuild: system-deps
	mkdir -p $(ARTIFACTS) && rm -f $(ARTIFACTS)/ansible-timings.json
	PYTHONPATH=tests nohup $(PYTHON) -m support.prebuild prebuild >$(ARTIFACTS)/prebuild.log 2>&1 &

# tests/unit only: no model, no broker, no root, a few seconds. The few unit tests that
# need a real resource carry its marker (cgroup: root and a writable cgroup hierarchy) and
# stay next to the module they test; they are left to `make test`. (See README, Development.)
UNIT_MARKERS := not cgroup and not container and not model and not mqtt and not slow and not soak
test-unit: venv
	$(BIN)/pytest tests/unit -m "$(UNIT_MARKERS)"

# Unit and integration tests without the systemd containers, real cgroups and the
# long-document test (~3 min): the real model and a real mosquitto, nothing booted.
test-fast: venv system-deps
	EDGEAGENT_TEST_MODEL=$$($(BIN)/python scripts/fetch_model.py smollm2) \
		$(BIN)/pytest -m "not container and not cgroup and not slow"

# BENCH_MODELS="smollm2 qwen-coder qwen-coder-1.5b" adds the 1.5B tier (minutes more).
BENCH_MODELS ?= smollm2 qwen-coder
bench: venv
	$(BIN)/edgeagent bench --json bench.json $(foreach m,$(BENCH_MODELS),--model $$($(BIN)/python scripts/fetch_model.py $(m)))

# Installs the git hook of .pre-commit-config.yaml (ruff, mypy, unit tests from .venv).
pre-commit: venv
	$(BIN)/pre-commit install

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The README's contract: `make serve` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL := efficientnet_lite0
MAR := model_store/$(MODEL).mar
MAR_INPUTS := $(wildcard handler/*.py) $(wildcard config/$(MODEL)/*) \
	scripts/export.py scripts/package.py scripts/manifest.py scripts/reproducible.py \
	scripts/sample_images.py
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install java prometheus serve stop package test lint clean bench

help:
	@echo "make serve    install (into .venv), build $(MAR) if stale, start TorchServe, wait for READY"
	@echo "make stop     stop the server started by make serve (in-flight requests finish first)"
	@echo "make package  export, validate and archive the default model into $(MAR)"
	@echo "make test     install and run the test suite (unit + end-to-end on loopback)"
	@echo "make lint     ruff"
	@echo "make bench    load benchmark, ours vs stock TorchServe (about 20 min; BENCH_ARGS=--quick)"

# TorchServe's frontend needs Java 17+.
java:
	@command -v java >/dev/null 2>&1 || { echo "[make] installing openjdk-17-jre-headless"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q openjdk-17-jre-headless; }

# Prometheus and promtool (Debian's package), for tests/test_metrics_prometheus.py and local scraping.
prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { \
		echo "[make] installing prometheus"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q prometheus; }

$(STAMP): requirements.txt
	@echo "[make] creating $(VENV) and installing requirements.txt (first time: a few minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

install: java $(STAMP)

$(MAR): $(STAMP) $(MAR_INPUTS)
	$(PY) scripts/package.py --arch $(MODEL)

package: install
	$(PY) scripts/package.py --arch $(MODEL)

serve: install $(MAR)
	$(PY) scripts/serve.py start --model $(MODEL)

stop:
	@if [ -x $(PY) ]; then $(PY) scripts/serve.py stop; else echo "nothing to stop"; fi

test: install $(MAR)
	$(PY) -m ruff check .
	$(PY) -m pytest -v

lint: install
	$(PY) -m ruff check .

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PY) -m pip install -q -r requirements-bench.txt
	touch $@

# Writes BENCHMARKS.md and docs/latency_vs_rate.png; raw results in build/bench/.
bench: install $(MAR) $(BENCH_STAMP)
	$(PY) scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf build run model_store/*.mar

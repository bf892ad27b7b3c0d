# The README's contract: `make serve` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --progress-bar on
MODEL := efficientnet_lite0
MAR := model_store/$(MODEL).mar
# What `make serve` serves: MODELS=a,b serves model_store/a.mar and b.mar, each with its own workers.
MODELS := $(MODEL)
# What the default archive is built from: a change to any of these rebuilds it.
MAR_INPUTS := $(wildcard handler/*.py) $(wildcard config/$(MODEL)/*) $(wildcard scripts/packaging/*.py) \
	$(wildcard scripts/packaging/architectures/*.py)
, := ,
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# One stamp per requirements set: runtime < build < dev (each file includes the one before).
BUILD_STAMP := $(VENV)/.build-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: help install install-dev java prometheus haproxy serve stop package photos test lint clean bench gpu-kit grpc-stubs \
	engine image-base image

help:
	@echo "make serve    install (into .venv), build $(MAR) if stale, start TorchServe, wait for READY"
	@echo "              (MODELS=a,b: model_store/a.mar and b.mar on one server, each READY and warmed)"
	@echo "make photos   write sample photos to photos/ (something to send to the server)"
	@echo "make stop     stop the server started by make serve (in-flight requests finish first)"
	@echo "make package  export, validate and archive the default model into $(MAR)"
	@echo "make image    build the runtime image $(IMAGE) (podman or docker; installs podman if neither)"
	@echo "make kube-play  the Kubernetes overlay's pod under podman kube play: ready, predictions, uid 1000, read-only; removed"
	@echo "make test     install and run the test suite (unit + end-to-end on loopback, the image included)"
	@echo "make lint     ruff"
	@echo "make grpc-stubs  generate the gRPC client's stubs from TorchServe's jar into build/grpc/ (docs/grpc.md)"
	@echo "make gpu-kit  what the GPU benchmark needs on a machine without TorchServe (BENCHMARKS.md)"
	@echo "make bench    load benchmark: ours, the container, stock TorchServe, FastAPI, Triton, BentoML (BENCH_ARGS=--quick)"

# TorchServe's frontend needs Java 17+.
java:
	@command -v java >/dev/null 2>&1 || { echo "[make] installing openjdk-17-jre-headless"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q openjdk-17-jre-headless; }

# Prometheus and promtool (Debian's package), for tests/e2e/handler/test_metrics_prometheus.py and local scraping.
prometheus:
	@command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || { \
		echo "[make] installing prometheus"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q prometheus; }

# HAProxy (Debian's package), the load balancer of config/haproxy.cfg, for tests/e2e/ops/test_balancer.py.
# Debian puts it in /usr/sbin, which is not on a non-root user's PATH.
haproxy:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { \
		echo "[make] installing haproxy"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q haproxy; }

$(PY):
	@echo "[make] creating $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# The build set (runtime + export/package) and this project's packages: handler, scripts, and
# the client library (client/: its resend contract is the ops tools', its `classify` CLI the
# README's Operate block's; httpx, its one dependency, is in the runtime set).
# First time: torch and its CUDA libraries are about 5.6 GB, a few minutes.
$(BUILD_STAMP): requirements.txt requirements-serve.txt requirements-build.txt requirements-data.txt pyproject.toml \
		client/pyproject.toml | $(PY)
	@echo "[make] installing requirements-build.txt (runtime + build) into $(VENV)"
	$(PIP) -r requirements-build.txt
	$(PIP) --no-deps -r requirements-data.txt
	$(PIP) --no-deps --no-build-isolation -q -e . -e ./client
	touch $@

$(DEV_STAMP): $(BUILD_STAMP) requirements-dev.txt
	@echo "[make] installing requirements-dev.txt (tests, lint, bench) into $(VENV)"
	$(PIP) -r requirements-dev.txt
	touch $@

install: java $(BUILD_STAMP)

install-dev: install haproxy $(DEV_STAMP)

$(MAR): $(BUILD_STAMP) $(MAR_INPUTS)
	$(PY) -m scripts.packaging.package --arch $(MODEL)

package: install
	$(PY) -m scripts.packaging.package --arch $(MODEL)

serve: install $(MAR)
	$(PY) -m scripts.ops.serve start --model $(MODELS)

photos: install
	$(PY) -m scripts.packaging.sample_photos photos

stop:
	@if [ -x $(PY) ]; then $(PY) -m scripts.ops.serve stop; else echo "nothing to stop"; fi

# The tests that load the machine on purpose (marked alone) run by themselves first; the rest
# then run on TEST_WORKERS processes (tests/support/scheduling.py keeps what shares state on one). Both
# phases always run; either failing fails the target.
TEST_WORKERS ?= 2

test: install-dev $(MAR) image
	$(PY) -m ruff check .
	@rc=0; \
	$(PY) -m pytest -v --durations=15 -m alone || rc=1; \
	$(PY) -m pytest -v --durations=15 -m "not alone" -n $(TEST_WORKERS) --dist loadscope || rc=1; \
	exit $$rc

lint: install-dev
	$(PY) -m ruff check .

# Python stubs for TorchServe's gRPC APIs from the installed jar's protos (git-ignored; the client
# also generates them on first use).
grpc-stubs: install-dev
	$(PY) -m scripts.ops.grpc_stubs

# Writes BENCHMARKS.md and docs/latency_vs_rate.png; raw results in build/bench/. The image is a
# row of the table; the batching peers get their own venv (build/peers/venv, requirements-peers.txt).
bench: install-dev $(MAR) image
	$(PY) -m scripts.bench.peers.peer_env
	$(PY) -m scripts.bench.load.main $(BENCH_ARGS)

# The GPU benchmark (scripts/bench/micro/gpu.py) on a GPU machine that has torch but not TorchServe:
# TorchServe's Python package without its Java frontend (about 1 MB) in build/gpu-kit. Copy the
# repository with build/gpu-kit there and run, from its root:
#   PYTHONPATH=build/gpu-kit python3 -m scripts.bench.micro.gpu --out build/gpu-bench
gpu-kit: install
	rm -rf build/gpu-kit && mkdir -p build/gpu-kit
	$(PY) -c "import pathlib, shutil, ts; shutil.copytree(pathlib.Path(ts.__file__).parent, \
		'build/gpu-kit/ts', ignore=shutil.ignore_patterns('frontend', 'unit_tests', '__pycache__'))"
	@du -sh build/gpu-kit

# Refused while a server runs from run/ (make serve's, or a balancer's replicas): deleting its
# keys and its unpacked model under it would leave it running blind.
clean:
	@if [ -x $(PY) ]; then $(PY) -m scripts.ops.lifecycle idle run; else ! pgrep -f "scripts.ops.lifecycle supervise --workdir $(CURDIR)/run" >/dev/null || { echo "make clean: a server runs from run/; make stop first" >&2; exit 1; }; fi
	rm -rf build run photos model_store/*.mar

# ---- The container image (docs/container.md) ----
IMAGE_NAME := localhost/image-classifier-service
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE := $(IMAGE_NAME):$(VERSION)
# The base: local = built from Debian's packages by mmdebstrap (no registry needed), used by the
# digest podman recorded for it; or a registry image pinned by digest, e.g.
#   make image BASE_IMAGE=docker.io/library/debian:bookworm-slim@sha256:<digest>
# (a registry base without @sha256: is refused: a tag can move to other bytes).
BASE_IMAGE ?= local
LOCAL_BASE := localhost/image-classifier-base:bookworm
BASE_PACKAGES := python3,python3-venv,openjdk-17-jre-headless,ca-certificates
# The CA bundle pip uses inside the build (a build secret, never a layer); empty: none.
CA_BUNDLE ?= $(firstword $(wildcard $(PIP_CERT) /etc/ssl/certs/ca-certificates.crt))
TORCH_PIN := $(shell grep -o '^torch==[^ ]*' requirements-image.txt)
WHEELS := build/image/wheels
# The SBOM of the image make image builds (CycloneDX JSON, read from inside the image).
SBOM := build/sbom.cdx.json
# What the build's FROM names: the local base by its digest, or BASE_IMAGE (pinned by digest).
BASE_REF = $(if $(filter local,$(BASE_IMAGE)),$(firstword $(subst :, ,$(LOCAL_BASE)))@$(shell $(ENGINE_CMD) image inspect --format '{{.Digest}}' $(LOCAL_BASE)),$(BASE_IMAGE))
# podman, else a docker whose daemon answers (evaluated when a recipe runs, after `engine`).
ENGINE = $(shell command -v podman >/dev/null 2>&1 && echo podman || { docker info >/dev/null 2>&1 && echo docker; })
# podman on this kind of host: runc (crun refuses hybrid cgroup v1 layouts) and explicit ulimits
# (its defaults fail with "setrlimit RLIMIT_NPROC"). --format docker keeps the HEALTHCHECK.
ENGINE_CMD = $(if $(filter podman,$(ENGINE)),podman --runtime runc,DOCKER_BUILDKIT=1 docker)
ENGINE_BUILD_FLAGS = $(if $(filter podman,$(ENGINE)),--format docker --ulimit nofile=20000:20000 --ulimit nproc=4096:4096)

engine:
	@command -v podman >/dev/null 2>&1 || docker info >/dev/null 2>&1 || { \
		echo "[make] installing podman (no container engine found)"; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q podman runc; }

# Debian 12 with python3 and Java 17 from Debian's packages (about 1.5 min), imported once; docs
# and locales left out (not man pages: openjdk's postinst links one into /usr/share/man).
image-base: engine
	@if [ "$(BASE_IMAGE)" = local ] && ! $(ENGINE_CMD) image inspect $(LOCAL_BASE) >/dev/null 2>&1; then \
		command -v mmdebstrap >/dev/null 2>&1 || $(SUDO) apt-get install -y -q mmdebstrap; \
		mkdir -p build/image; \
		echo "[make] building the base $(LOCAL_BASE) with mmdebstrap"; \
		mmdebstrap --variant=minbase --include=$(BASE_PACKAGES) \
			--dpkgopt='path-exclude=/usr/share/doc/*' \
			--dpkgopt='path-exclude=/usr/share/locale/*' bookworm build/image/base.tar \
		&& $(ENGINE_CMD) import build/image/base.tar $(LOCAL_BASE) && rm build/image/base.tar; \
	fi

# The runtime image from the archive `make package` built (checked by its sha256 in the build).
# A torch wheel the host's pip finds locally goes in as the `wheels` build context; else the
# build fetches it from PyTorch's CPU index.
image: engine image-base $(MAR)
	@case "$(BASE_IMAGE)" in local|*@sha256:*) ;; *) echo "make image: BASE_IMAGE=$(BASE_IMAGE) is not pinned by digest; use NAME:TAG@sha256:DIGEST (podman pull NAME:TAG, then podman image inspect --format '{{.Digest}}' NAME:TAG)" >&2; exit 2;; esac
	@rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	@$(PY) -m pip download -q --no-deps --only-binary :all: -d $(WHEELS) "$(TORCH_PIN)" >/dev/null 2>&1 \
		&& echo "[make] $(TORCH_PIN) from the host's pip: $$(ls $(WHEELS))" || rm -f $(WHEELS)/*
	@echo "[make] building $(IMAGE) with $(ENGINE)"
	@echo "[make] base $(BASE_REF)"
	time $(ENGINE_CMD) build $(ENGINE_BUILD_FLAGS) --network host \
		--build-arg BASE=$(BASE_REF) \
		--build-arg MAR_SHA256=$$(sha256sum $(MAR) | cut -c1-64) \
		--build-arg VERSION=$(VERSION) --build-arg GIT_COMMIT=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
		--build-context wheels=$(WHEELS) $$([ -n "$$(ls $(WHEELS))" ] && echo --build-arg TORCH_INDEX=) \
		$(if $(CA_BUNDLE),--secret id=ca$(,)src=$(CA_BUNDLE)) \
		-t $(IMAGE) .
	@$(ENGINE_CMD) image inspect $(IMAGE) --format '[make] $(IMAGE): {{.Size}} bytes'
	$(PY) -m scripts.deploy.sbom --image $(IMAGE) --base $(BASE_REF) --engine "$(ENGINE_CMD)" \
		$(if $(filter podman,$(ENGINE)),--run-flags "--ulimit nofile=20000:20000 --ulimit nproc=4096:4096") \
		--lock requirements-image.lock -o $(SBOM)

# Regenerate requirements-image.lock (every package of the image pinned to one wheel by its
# sha256) after changing requirements-image.txt or requirements-serve.txt.
.PHONY: image-lock
image-lock: install
	$(PY) -m scripts.deploy.lock

# The Kubernetes overlay's Deployment run by `podman kube play` against the image: ready through
# its own probes, predictions, uid 1000, read-only root, then removed (docs/deployment.md).
.PHONY: kube-play
kube-play: install-dev image
	$(PY) -m scripts.deploy.kube_play --image $(IMAGE) $(KUBE_PLAY_ARGS)

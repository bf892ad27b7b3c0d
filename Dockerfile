# TorchServe image-classification service: a lean CPU runtime image with the built archive.
#
# `make image` builds it (podman or docker, whichever is installed) from the archive `make package`
# built, and tags it localhost/image-classifier-service:<version in pyproject.toml>. What it runs:
#   podman --runtime runc build --format docker --network host \
#     --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
#     --build-arg BASE=localhost/image-classifier-base@sha256:<its digest> \
#     --build-arg MAR_SHA256=$(sha256sum model_store/efficientnet_lite0.mar | cut -c1-64) \
#     --build-arg VERSION=1.0.0 --build-arg GIT_COMMIT=$(git rev-parse HEAD) \
#     --build-context wheels=build/image/wheels --build-arg TORCH_INDEX= \
#     --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt \
#     -t localhost/image-classifier-service:1.0.0 .
# BASE: pinned by digest (make image refuses a registry base without @sha256:...); the local one
# (make image-base, where no registry is reachable) by the digest podman recorded for it. The SBOM
# (build/sbom.cdx.json) is read from the built image by scripts/deploy/sbom.py. wheels +
# TORCH_INDEX=: a torch wheel the host's pip found on local disk (without them torch comes from
# PyTorch's CPU index; either way its sha256 is the lock's). The
# secret: a private CA for pip (a TLS-intercepting proxy), never in a layer. --format docker keeps
# the HEALTHCHECK (podman's OCI format drops it).
# Run it (docs/container.md): root filesystem read-only, a writable tmpfs for /tmp (run/ links
# there) only, ports published on loopback:
#   podman --runtime runc run -d --read-only --tmpfs /tmp \
#     --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
#     -p 127.0.0.1:8080:8080 -p 127.0.0.1:8081:8081 -p 127.0.0.1:8082:8082 IMAGE
# The bearer keys are made at start and renewed before they expire: read them with
#   podman exec CONTAINER cat /home/model-server/app/run/key_file.json
# (runc: crun refuses this machine's hybrid cgroup layout; the ulimits: podman's defaults fail with
# "setrlimit RLIMIT_NPROC". The Makefile and tests/support/container.py pass them.)
# deploy/overlays/* run it from your registry (kustomize `images:` there): push it as
#   podman tag localhost/image-classifier-service:VERSION registry.example.com/image-classifier-service:VERSION

# The base: Debian 12 with python3 (3.11) and Java 17. Default: the public image, completed below;
# `make image-base` builds one from Debian's packages (mmdebstrap) where no registry is reachable.
ARG BASE=docker.io/library/debian:bookworm-slim

# Local wheels (say, a CPU-only torch on local disk): a directory given as an extra build context,
# `--build-context wheels=DIR`. By default none, and torch comes from TORCH_INDEX.
FROM scratch AS wheels

FROM ${BASE} AS base
# Installed only where the base lacks them (the mmdebstrap base has them already).
RUN if ! command -v java >/dev/null || ! python3 -c "import ensurepip" 2>/dev/null; then \
        apt-get update && apt-get install -y --no-install-recommends \
            python3 python3-venv openjdk-17-jre-headless ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The runtime requirements in a venv (copied whole into the runtime stage), from the lock only:
# requirements-image.lock pins every package, dependencies included, to one wheel by its sha256
# (`python -m scripts.deploy.lock` regenerates it from requirements-image.txt); pip refuses any
# file whose hash differs and any package the lock does not name, whichever index served it. A
# private CA comes as the build secret `ca` and is used by pip only: it is never in a layer.
FROM base AS deps
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements-image.lock /tmp/req/
RUN --mount=type=secret,id=ca --mount=type=bind,from=wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && /opt/venv/bin/pip install --progress-bar off --require-hashes --only-binary :all: \
        --find-links /wheels ${TORCH_INDEX:+--extra-index-url $TORCH_INDEX} \
        -r /tmp/req/requirements-image.lock \
    # Not needed at run time (about 200 MB): pip, torch's C++ headers, test data and test
    # binaries (torch_shm_manager, which torch's multiprocessing may start, stays).
    && /opt/venv/bin/python -m pip uninstall -y -q pip \
    && cd /opt/venv/lib/python3.*/site-packages/torch \
    && rm -rf include test && find bin -type f ! -name torch_shm_manager -delete

# The archive `make package` built, checked against the sha256 given as a build argument, and
# its signature beside it where it was signed (`package --sign-key`: efficientnet_lite0.mar.sig;
# the glob copies it when present).
FROM base AS archive
ARG MAR_SHA256
COPY model_store/efficientnet_lite0.mar* /model_store/
RUN test -n "${MAR_SHA256}" || { echo "build argument MAR_SHA256 is required" >&2; exit 1; }; \
    echo "${MAR_SHA256}  /model_store/efficientnet_lite0.mar" | sha256sum -c - \
    # readable by the server's user (the build may write them owner-only)
    && chmod 0644 /model_store/*

FROM base AS runtime
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin model-server
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /home/model-server/app
# Server settings, metrics declarations, the ops package that starts, probes and manages it (and
# the handler package it reads the archive layout from), the archive. Owned by root: read-only
# to the server.
COPY config.properties ./
COPY config/metrics.yaml config/log4j2.xml config/
COPY handler handler
COPY scripts/__init__.py scripts/repo.py scripts/
COPY scripts/ops scripts/ops
# The client library's package, imported by the ops tools (the resend contract, the key refusal).
COPY client/src/image_classifier_client image_classifier_client
COPY --from=archive /model_store/ model_store/
# The operator's pin, from outside the archive (scripts/ops/pins.py): the entrypoint hashes every
# archive it serves before TorchServe starts and refuses one that is not pinned or not the
# pinned one; the workers hold their unpacked copy to it (handler/integrity.py). An archive
# mounted in place of this one (KServe's storage) needs its own ARCHIVE_SHA256 in the pod spec.
# Signatures (scripts/ops/signature.py): run with ARCHIVE_VERIFY_KEY=PATH of the public key,
# mounted read-only (-v ./archive.pub:/keys/archive.pub:ro -e ARCHIVE_VERIFY_KEY=/keys/archive.pub),
# and the entrypoint refuses an archive without a signature beside it that verifies with that key.
ARG MAR_SHA256
ENV ARCHIVE_PINS_REQUIRED=1 \
    ARCHIVE_SHA256=efficientnet_lite0.mar=${MAR_SHA256}
# `python -m scripts.ops...` run from this WORKDIR finds the packages (the repository's layout).
# No PYTHONPATH: TorchServe puts it ahead of the model directory in the worker, where the
# archive's own `handler` package must win. The root filesystem is read-only at run time; the
# one writable folder is /tmp (a tmpfs or volume), where serve start unpacks the verified archive, and run/
# (keys, logs, worker sockets, derived config) is a link into it: one mount, owned by whoever runs
# the server (podman 4.3 mounts a tmpfs elsewhere root-owned, 0755, whatever mode it is given).
RUN mkdir -p workflow_store && ln -s /tmp/run run

USER model-server
# inference, management, metrics (Prometheus)
EXPOSE 8080 8081 8082

# Ready = READY workers and a tiny prediction succeeds (/ping alone says Healthy while workers
# crash-loop). It reads the current key from run/key_file.json, which the key renewer started by
# serve keeps current: the check survives key expiry.
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["python", "-m", "scripts.ops.healthcheck", "ready", "--workdir", "run"]

# The same command as `make serve`, listening on all interfaces and staying in the foreground:
# `podman stop` / `docker stop` (SIGTERM) drains in-flight requests before TorchServe stops.
ENTRYPOINT ["python", "-m", "scripts.ops.serve", "start", "--model", "efficientnet_lite0", "--host", "0.0.0.0", "--foreground"]

# Last, so that a new commit changes metadata only.
ARG VERSION=unknown
ARG GIT_COMMIT=unknown
ARG MAR_SHA256
LABEL org.opencontainers.image.title="image-classifier-service" \
      org.opencontainers.image.description="EfficientNet-Lite0 image classifier on TorchServe 0.12 (ONNX Runtime, CPU)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      io.image-classifier.archive.sha256="${MAR_SHA256}"

# TorchServe image-classification service: the built archive and our server settings baked in.
# Build after `make package` (the .mar is a build output, not in git):
#   make package && docker build -t image-classifier .
#   docker run -p 8080:8080 -p 8081:8081 -p 8082:8082 image-classifier
# Token authorization stays on: read the keys with
#   docker exec CONTAINER cat /home/model-server/app/run/key_file.json
FROM python:3.11-slim-bookworm

# TorchServe's frontend is Java (17+).
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin model-server
WORKDIR /home/model-server/app

# The runtime requirements only (requirements.txt: no build, test or lint packages).
COPY requirements.txt ./
RUN pip install -r requirements.txt

# Server settings, metrics declarations, the ops package that starts, probes and manages it (and
# the handler package it reads the archive layout from), the archive.
COPY config.properties ./
COPY config/metrics.yaml config/log4j2.xml config/
COPY handler handler
COPY scripts/__init__.py scripts/repo.py scripts/
COPY scripts/ops scripts/ops
COPY model_store/efficientnet_lite0.mar model_store/
# `python -m scripts.ops...` run from this WORKDIR finds the packages (the repository's layout).
# No PYTHONPATH: TorchServe puts it ahead of the model directory in the worker, where the
# archive's own `handler` package must win.
RUN mkdir -p run workflow_store && chown -R model-server:model-server run workflow_store

USER model-server
# inference, management, metrics (Prometheus)
EXPOSE 8080 8081 8082

# Ready = READY workers and a tiny prediction succeeds (/ping alone says Healthy while workers crash-loop).
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["python", "-m", "scripts.ops.healthcheck", "ready", "--workdir", "run"]

# The same command as `make serve`, listening on all interfaces and staying in the foreground:
# `docker stop` (SIGTERM) drains in-flight requests before TorchServe stops.
ENTRYPOINT ["python", "-m", "scripts.ops.serve", "start", "--model", "efficientnet_lite0", "--host", "0.0.0.0", "--foreground"]

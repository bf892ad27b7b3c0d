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

# The pinned stack (TorchServe 0.12 needs pyyaml, which requirements.txt adds).
COPY requirements.txt ./
RUN pip install -r requirements.txt

# Server settings, metrics declarations, the scripts that start, probe and manage it, the archive.
COPY config.properties ./
COPY config/metrics.yaml config/log4j2.xml config/
COPY scripts/paths.py scripts/serve.py scripts/ts_client.py scripts/healthcheck.py scripts/manage.py scripts/
COPY model_store/efficientnet_lite0.mar model_store/
RUN mkdir -p run workflow_store && chown -R model-server:model-server run workflow_store

USER model-server
# inference, management, metrics (Prometheus)
EXPOSE 8080 8081 8082

# Ready = READY workers and a tiny prediction succeeds (/ping alone says Healthy while workers crash-loop).
HEALTHCHECK --interval=30s --timeout=15s --start-period=120s --retries=3 \
    CMD ["python", "scripts/healthcheck.py", "ready", "--workdir", "run"]

# The same command as `make serve`, listening on all interfaces and staying in the foreground:
# `docker stop` (SIGTERM) drains in-flight requests before TorchServe stops.
ENTRYPOINT ["python", "scripts/serve.py", "start", "--model", "efficientnet_lite0", "--host", "0.0.0.0", "--foreground"]

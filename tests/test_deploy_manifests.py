"""The container and the manifests, read: every field that ties them to our artifact (model name,
ports, probe commands, entrypoint, storage layout, resources) agrees with the repository."""

from __future__ import annotations

import concurrent.futures
import fnmatch
import importlib.util
import json
import re
import shlex
import signal
import subprocess
import sys
import time

import yaml

from scripts.build import kserve_storage
from scripts.ops import serve
from scripts.ops.server_config import read_properties
from tests.support.servers import MODEL, ROOT

PROPS = read_properties(ROOT / "config.properties")
KSERVE_PROPS = read_properties(ROOT / "config" / "kserve" / "config.properties")
MODEL_CONFIG = yaml.safe_load((ROOT / "config" / MODEL / "model-config.yaml").read_text())
PORTS = {name: int(PROPS[f"{name}_address"].rsplit(":", 1)[1])
         for name in ("inference", "management", "metrics")}
# Measured (tests/test_manage_scale.py, README "Operating it"): Java ~250 MB, worker ~550 MB PSS.
MIN_MEMORY_MI = 250 + 550 * MODEL_CONFIG["minWorkers"]
READY_PROBE = ["python", "-m", "scripts.ops.healthcheck", "ready", "--workdir", "run"]
LIVE_PROBE = ["python", "-m", "scripts.ops.healthcheck", "live", "--workdir", "run"]


def manifests() -> dict[tuple[str, str], dict]:
    docs = {}
    for path in sorted((ROOT / "deploy").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["metadata"]["name"], path
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


DOCS = manifests()


def dockerfile() -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def instructions(name: str) -> list[str]:
    return [args for ins, args in dockerfile() if ins == name]


def memory_mi(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    m = re.fullmatch(r"([\d.]+)(Mi|Gi|M|G)", quantity)
    assert m, quantity
    return float(m[1]) * units[m[2]]


def check_resources(resources: dict) -> None:
    cpus = MODEL_CONFIG["minWorkers"] * MODEL_CONFIG["handler"]["threads"]
    assert float(resources["requests"]["cpu"]) == cpus  # workers x torch threads = cores
    assert memory_mi(resources["requests"]["memory"]) >= MIN_MEMORY_MI
    assert memory_mi(resources["limits"]["memory"]) >= memory_mi(resources["requests"]["memory"])


def test_every_manifest_parses_and_is_known():
    assert set(DOCS) == {("Deployment", "image-classifier"), ("Service", "image-classifier"),
                         ("HorizontalPodAutoscaler", "image-classifier"),
                         ("InferenceService", "image-classifier")}


def test_dockerfile_base_user_ports_and_copies():
    # The base is a build argument: the public Debian 12 image by default (python3 is 3.11),
    # Java 17 and python3 installed where the base lacks them.
    assert re.fullmatch(r"BASE=docker\.io/library/debian:bookworm-slim", instructions("ARG")[0])
    assert any("openjdk-17-jre-headless" in run for run in instructions("RUN"))
    user = instructions("USER")[-1]
    assert user not in ("root", "0") and any("useradd" in r and user in r for r in instructions("RUN"))
    assert {int(p) for p in " ".join(instructions("EXPOSE")).split()} == set(PORTS.values())
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    # From the build context only (COPY --from=STAGE copies between stages).
    copied = [src for args in instructions("COPY") if not args.startswith("--from=")
              for src in shlex.split(args)[:-1]]
    assert f"model_store/{MODEL}.mar" in copied and "config.properties" in copied
    assert f"COPY --from=archive /model_store/{MODEL}.mar model_store/" in " ".join(
        f"{ins} {args}" for ins, args in dockerfile() if ins == "COPY")
    for src in copied:
        excluded = False
        for pattern in ignored:  # Docker's rule: the last matching line wins
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(src, pattern.lstrip("!")) or src.startswith(pattern.lstrip("!") + "/"):
                excluded = not negate
        assert not excluded, f"{src} is excluded by .dockerignore"
        if src.endswith(".mar"):  # a build output: `make package` writes it
            assert "MAR := model_store/$(MODEL).mar" in (ROOT / "Makefile").read_text()
        else:
            assert (ROOT / src).exists(), src
    # What serve.py reads at start must be in the image: the metrics config it points at and the
    # log config it hands to torchserve.
    assert PROPS["metrics_config"] in copied
    assert serve.LOG_CONFIG.relative_to(ROOT).as_posix() in copied


def test_entrypoint_is_make_serve_in_the_foreground():
    entry = json.loads(instructions("ENTRYPOINT")[0])
    recipe = (ROOT / "Makefile").read_text().split("\nserve:", 1)[1].split("\n")[1].split()
    assert recipe[0] == "$(PY)" and entry[0] == "python"
    make_args = [MODEL if a == "$(MODEL)" else a for a in recipe[1:]]
    assert entry[1:1 + len(make_args)] == make_args  # -m scripts.ops.serve start --model efficientnet_lite0
    assert entry[1 + len(make_args):] == ["--host", "0.0.0.0", "--foreground"]
    usage = subprocess.run([sys.executable, "-m", "scripts.ops.serve", "--help"],
                           capture_output=True, text=True, timeout=60).stdout
    assert "--host" in usage and "--foreground" in usage


def test_healthcheck_is_the_readiness_probe():
    check = instructions("HEALTHCHECK")[0]
    assert json.loads(check.split("CMD", 1)[1].strip()) == READY_PROBE
    assert importlib.util.find_spec(READY_PROBE[2]) is not None


def test_kubernetes_deployment_service_hpa():
    dep = DOCS[("Deployment", "image-classifier")]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert "command" not in container and "args" not in container  # the image's entrypoint
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == PORTS
    assert container["startupProbe"]["exec"]["command"] == READY_PROBE
    assert container["readinessProbe"]["exec"]["command"] == READY_PROBE
    assert container["livenessProbe"]["exec"]["command"] == LIVE_PROBE
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # Drain (serve.stop: up to 20 s) plus the preStop pause fit in the grace period.
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 20 + 5 + 10
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == PORTS["metrics"]
    check_resources(container["resources"])
    svc = DOCS[("Service", "image-classifier")]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    for port in svc["spec"]["ports"]:
        assert ports[port["targetPort"]] == port["port"]
    hpa = DOCS[("HorizontalPodAutoscaler", "image-classifier")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "image-classifier")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_kserve_inference_service_and_storage_layout(tmp_path):
    isvc = DOCS[("InferenceService", "image-classifier")]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    pred = isvc["spec"]["predictor"]
    assert pred["model"]["modelFormat"]["name"] == "pytorch"
    assert pred["model"]["protocolVersion"] == "v2"
    assert re.match(r"(gs|s3|pvc|https?)://", pred["model"]["storageUri"])
    assert pred["scaleMetric"] == "concurrency" and pred["scaleTarget"] >= 1
    assert pred["minReplicas"] <= pred["maxReplicas"]
    check_resources(pred["model"]["resources"])
    assert int(isvc["metadata"]["annotations"]["prometheus.kserve.io/port"]) == int(
        KSERVE_PROPS["metrics_address"].rsplit(":", 1)[1])
    # KServe mounts the storage at /mnt/models: config/config.properties + model-store/NAME.mar.
    assert KSERVE_PROPS["model_store"] == "/mnt/models/model-store"
    assert KSERVE_PROPS["load_models"] == f"{MODEL}={MODEL}.mar"
    assert KSERVE_PROPS["service_envelope"] == "kservev2"
    assert KSERVE_PROPS["enable_envvars_config"] == "true"
    mar = tmp_path / f"{MODEL}.mar"
    mar.write_bytes(b"archive")
    out = kserve_storage.stage(tmp_path / "storage", mar)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "config/config.properties", f"model-store/{MODEL}.mar"]
    staged = read_properties(out / "config" / "config.properties")
    assert staged == KSERVE_PROPS


def test_deployment_runs_the_image_the_dockerfile_builds():
    (container,) = DOCS[("Deployment", "image-classifier")]["spec"]["template"]["spec"]["containers"]
    # `make image` tags localhost/image-classifier-service:VERSION; the Dockerfile's header says
    # how it gets the name the Deployment runs.
    assert f"tag localhost/image-classifier-service:VERSION {container['image']}" in (
        ROOT / "Dockerfile").read_text()


FOREGROUND = """
import sys
from scripts.ops import serve
from tests.support.servers import start_server
server = start_server({workdir!r}, "{model}={model}.mar", {store!r}, min_ready=1)
print("READY", flush=True)
sys.exit(serve.run_foreground(server))
"""


def test_foreground_entrypoint_drains_on_sigterm(tmp_path, default_mar, photos):
    """The container's PID 1 (serve.py --foreground) on `docker stop`: in-flight requests finish,
    then it exits 0 and TorchServe is gone."""
    code = FOREGROUND.format(workdir=str(tmp_path), model=MODEL, store=str(default_mar.parent))
    # From the repository root, where `tests` is importable as a package.
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "READY"
        client = serve.TorchServeClient.from_workdir(tmp_path, timeout=60)
        pgid = int((tmp_path / "torchserve.pid").read_text())
        image = photos["astronaut.jpg"].read_bytes()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(client.predict, MODEL, image) for _ in range(6)]
            time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            statuses = [f.result().status_code for f in futures]
        assert proc.wait(60) == 0
        assert statuses == [200] * 6
        assert not serve._group(pgid)  # no live process of the server is left
    finally:
        if proc.poll() is None:
            proc.kill()
        serve.stop(tmp_path, grace=5)

"""The container and the manifests, read: every field that ties them to our artifact (model name,
ports, probe commands, entrypoint, storage layout, resources) agrees with the repository. Every
overlay renders and validates strictly (a misspelt field fails); its network and authorization
policies admit only the callers they name, over mutual TLS; the image and the KServe pod pin or
verify the archive they serve."""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from scripts import repo
from scripts.deploy import validate
from scripts.ops import serve
from scripts.ops.server_config import read_properties
from scripts.packaging import kserve_storage
from tests.support.servers import MODEL, ROOT

PROPS = read_properties(ROOT / "config.properties")
IMAGE = "image-classifier-service"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Requests per second per pod the autoscalers aim at: two thirds of one 2-core pod's measured
# capacity at p99 < 50 ms (60 rps, BENCHMARKS.md).
PER_POD_RPS = 40
KSERVE_PROPS = read_properties(ROOT / "config" / "kserve" / "config.properties")
MODEL_CONFIG = yaml.safe_load((ROOT / "config" / MODEL / "model-config.yaml").read_text())
PORTS = {name: int(PROPS[f"{name}_address"].rsplit(":", 1)[1])
         for name in ("inference", "management", "metrics")}
# Measured (tests/e2e/ops/test_manage_scale.py, README "Operating it"): Java ~250 MB, worker ~550 MB PSS.
MIN_MEMORY_MI = 250 + 550 * MODEL_CONFIG["minWorkers"]
APP = "/home/model-server/app"  # the image's WORKDIR
K8S_CONFIG = ROOT / "deploy" / "overlays" / "kubernetes" / "config.properties"
READY_PROBE = ["python", "-m", "scripts.ops.healthcheck", "ready", "--workdir", "run"]
LIVE_PROBE = ["python", "-m", "scripts.ops.healthcheck", "live", "--workdir", "run"]


def manifests() -> dict[str, dict[tuple[str, str], dict]]:
    """Every overlay as kustomize renders it: {overlay: {(kind, name): resource}}; generated names
    lose their hash."""
    docs = {}
    for overlay in validate.overlays():
        docs[overlay] = {}
        for doc in validate.render(overlay):
            name = doc["metadata"]["name"]
            if doc["kind"] == "ConfigMap":
                name = re.sub(r"-[a-z0-9]{10}$", "", name)  # configMapGenerator's content hash
            docs[overlay][(doc["kind"], name)] = doc
    return docs


@pytest.fixture(scope="module")
def docs() -> dict[str, dict[tuple[str, str], dict]]:
    """manifests(), rendered once, when a test first asks: kustomize runs as a subprocess, which
    importing (collecting) this module must not start."""
    return manifests()


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


def test_every_manifest_parses_and_is_known(docs):
    shared = {("PodDisruptionBudget", "image-classifier"), ("NetworkPolicy", "image-classifier"),
              ("PeerAuthentication", "image-classifier"), ("AuthorizationPolicy", "image-classifier")}
    assert set(docs) == {"kubernetes", "kserve"}
    assert set(docs["kubernetes"]) == shared | {
        ("Deployment", "image-classifier"), ("Service", "image-classifier"),
        ("HorizontalPodAutoscaler", "image-classifier"), ("ConfigMap", "image-classifier-config"),
        ("NetworkPolicy", "image-classifier-ingress")}
    assert set(docs["kserve"]) == shared | {
        ("InferenceService", "image-classifier"), ("NetworkPolicy", "image-classifier-knative"),
        ("NetworkPolicy", "image-classifier-storage-initializer"), ("Sidecar", "image-classifier"),
        ("ConfigMap", "image-classifier-archive-key")}


@pytest.mark.parametrize("overlay", validate.overlays())
def test_every_overlay_renders_and_validates_strictly(overlay):
    docs = validate.render(overlay)
    assert docs and [line for doc in docs for line in validate.errors(doc)] == []


@pytest.mark.parametrize("kind,path", [
    ("Deployment", ("spec", "template", "spec", "containers", 0)),
    ("NetworkPolicy", ("spec",)),
    ("InferenceService", ("spec", "predictor")),
    ("InferenceService", ("spec", "predictor", "containers", 0)),
    ("PeerAuthentication", ("spec", "mtls")),
    ("AuthorizationPolicy", ("spec", "rules", 0, "from", 0, "source")),
    ("Sidecar", ("spec",)),
])
def test_a_misspelt_field_fails_validation(kind, path, docs):
    doc = copy.deepcopy(next(d for overlay in docs.values() for d in overlay.values()
                             if d["kind"] == kind))
    node = doc
    for step in path:
        node = node[step]
    node["resourcez"] = {}
    (error,) = validate.errors(doc)
    assert "resourcez" in error and kind in error


def test_validate_cli_exits_nonzero_on_an_invalid_overlay(tmp_path):
    assert validate.main([]) == 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "kustomization.yaml").write_text("resources: [pdb.yaml]\n")
    (bad / "pdb.yaml").write_text("apiVersion: policy/v1\nkind: PodDisruptionBudget\n"
                                  "metadata: {name: x}\nspec: {maxUnavailabel: 1}\n")
    assert validate.main([str(bad)]) == 1


def pod_hardening(pod_spec: dict, container: dict) -> None:
    sec, csec = pod_spec["securityContext"], container["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0
    assert sec["seccompProfile"]["type"] == "RuntimeDefault"
    assert csec["allowPrivilegeEscalation"] is False and csec["readOnlyRootFilesystem"] is True
    assert csec["capabilities"]["drop"] == ["ALL"]
    assert pod_spec["automountServiceAccountToken"] is False
    # Writable only /tmp, as a volume: the image's run/ (working files, logs) links there.
    mounts = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert mounts == {"/tmp"}
    assert "ln -s /tmp/run run" in (ROOT / "Dockerfile").read_text()
    # Drain (serve.stop: up to 20 s) plus the preStop pause fit in the grace period.
    assert pod_spec["terminationGracePeriodSeconds"] >= 20 + 5 + 10


GATEWAY = {"kubernetes.io/metadata.name": "istio-system"}, {"istio": "ingressgateway"}
PROMETHEUS = {"kubernetes.io/metadata.name": "monitoring"}, {"app.kubernetes.io/name": "prometheus"}
ACTIVATOR = {"kubernetes.io/metadata.name": "knative-serving"}, {"app": "activator"}
KNATIVE = {"kubernetes.io/metadata.name": "knative-serving"}, None
GATEWAY_SA = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
KNATIVE_SA = "cluster.local/ns/knative-serving/sa/controller"  # the activator's and autoscaler's
# Knative's queue-proxy, in every KServe serverless pod (knative.dev/serving pkg/networking):
# 8012 HTTP and 8013 HTTPS (what the activator and the gateway send to), 8022 admin (drain),
# 9090 the autoscaler's metrics, 9091 the request metrics for Prometheus.
QUEUE_PORTS = {8012, 8013, 8022, 9090, 9091}


def pod_labels(overlay: dict) -> dict:
    if ("Deployment", "image-classifier") in overlay:
        return overlay[("Deployment", "image-classifier")]["spec"]["template"]["metadata"]["labels"]
    return overlay[("InferenceService", "image-classifier")]["spec"]["predictor"]["labels"]


def policies(overlay: dict, kind: str = "NetworkPolicy") -> list[dict]:
    """The resources of a kind that select the overlay's pods."""
    labels = pod_labels(overlay)
    found = []
    for (k, _), doc in overlay.items():
        if k != kind:
            continue
        selector = (doc["spec"].get("podSelector") or doc["spec"].get("selector")
                    or doc["spec"].get("workloadSelector"))
        selector = selector.get("matchLabels", selector.get("labels"))
        assert selector and selector.items() <= labels.items(), doc["metadata"]["name"]
        found.append(doc)
    return found


def peers(peer: dict) -> tuple[dict, dict | None]:
    """(namespace labels, pod labels) of one NetworkPolicy peer: both in one peer means AND."""
    return (peer["namespaceSelector"]["matchLabels"],
            peer.get("podSelector", {}).get("matchLabels"))


def ingress(overlay: dict) -> dict[int, list[tuple]]:
    """Port -> the peers the overlay's NetworkPolicies admit it from."""
    admitted: dict[int, list[tuple]] = {}
    for policy in policies(overlay):
        for rule in policy["spec"].get("ingress", []):
            assert rule["from"] and rule["ports"]  # never from everyone, never every port
            for port in rule["ports"]:
                assert port["protocol"] == "TCP"
                admitted.setdefault(port["port"], []).extend(peers(p) for p in rule["from"])
    return admitted


def egress(overlay: dict) -> list[dict]:
    return [rule for policy in policies(overlay) for rule in policy["spec"].get("egress", [])]


def principals(overlay: dict) -> dict[int, set[str] | None]:
    """Port -> the principals the AuthorizationPolicy admits on it (None: any, plain HTTP)."""
    (policy,) = policies(overlay, "AuthorizationPolicy")
    assert policy["spec"]["action"] == "ALLOW"
    found: dict[int, set[str] | None] = {}
    for rule in policy["spec"]["rules"]:
        names = ({p for f in rule["from"] for p in f["source"]["principals"]}
                 if "from" in rule else None)
        for port in (int(p) for t in rule["to"] for p in t["operation"]["ports"]):
            assert port not in found
            found[port] = names
    return found


def test_pdb_and_policies_select_the_pods_of_both_overlays(docs):
    for overlay in docs.values():
        pdb = overlay[("PodDisruptionBudget", "image-classifier")]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels(overlay).items()
        assert pdb["spec"]["maxUnavailable"] == 1
        for kind in ("NetworkPolicy", "PeerAuthentication", "AuthorizationPolicy"):
            assert policies(overlay, kind), kind
        # Closed both ways: every pod is selected by a policy of each direction.
        types = {t for p in policies(overlay) for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}


def base_egress_only(rules: list[dict]) -> None:
    dns, istiod = rules[:2]
    assert [p["port"] for p in dns["ports"]] == [53, 53]
    assert {p["protocol"] for p in dns["ports"]} == {"UDP", "TCP"}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert peers(istiod["to"][0]) == ({"kubernetes.io/metadata.name": "istio-system"},
                                      {"app": "istiod"})
    assert [p["port"] for p in istiod["ports"]] == [15012]  # xDS and certificates


def test_kubernetes_policy_admits_the_gateway_and_prometheus_only(docs):
    overlay = docs["kubernetes"]
    assert ingress(overlay) == {PORTS["inference"]: [GATEWAY], PORTS["metrics"]: [PROMETHEUS]}
    rules = egress(overlay)
    assert len(rules) == 2  # the pods call nothing but DNS and istiod
    base_egress_only(rules)


def test_kserve_policy_admits_knative_and_the_storage_initializer(docs):
    overlay = docs["kserve"]
    admitted = ingress(overlay)
    assert set(admitted) == QUEUE_PORTS | {PORTS["metrics"]}
    for port in (8012, 8013):  # the activator, and the gateway once the activator steps out
        assert admitted[port] == [ACTIVATOR, GATEWAY]
    for port in (8022, 9090):
        assert admitted[port] == [KNATIVE]
    for port in (9091, PORTS["metrics"]):
        assert admitted[port] == [PROMETHEUS]
    # The user container's port: the queue-proxy forwards to it over the pod's loopback (no
    # NetworkPolicy applies there); from outside the pod it would skip the queue-proxy.
    (container,) = overlay[("InferenceService", "image-classifier")]["spec"]["predictor"]["containers"]
    assert container["ports"] == [{"containerPort": PORTS["inference"], "protocol": "TCP"}]
    assert PORTS["inference"] not in admitted and PORTS["management"] not in admitted
    # Egress: the base's DNS and istiod, and the storage initializer's download over HTTPS from
    # the object store STORAGE_URI names (public endpoints: outside the private ranges).
    rules = egress(overlay)
    base_egress_only(rules)
    (storage,) = rules[2:]
    assert storage["ports"] == [{"protocol": "TCP", "port": 443}]
    (block,) = storage["to"]
    assert block["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(block["ipBlock"]["except"])
    env = {e["name"]: e["value"] for e in container["env"]}
    assert re.match(r"(gs|s3|https)://", env["STORAGE_URI"])  # fetched over 443
    predictor = overlay[("InferenceService", "image-classifier")]["spec"]["predictor"]
    # The storage initializer runs before the sidecar is up: as the sidecar's uid, which Istio
    # does not redirect, it reaches the store directly; the serving containers cannot (Sidecar).
    assert predictor["annotations"]["serving.kserve.io/storage-initializer-uid"] == "1337"
    (sidecar,) = policies(overlay, "Sidecar")
    assert sidecar["spec"]["outboundTrafficPolicy"]["mode"] == "REGISTRY_ONLY"


def test_both_overlays_require_mutual_tls_and_named_principals(docs):
    for name, overlay in docs.items():
        assert validate.access_problems(list(overlay.values())) == [], name
        (peer,) = policies(overlay, "PeerAuthentication")
        assert peer["spec"]["mtls"]["mode"] == "STRICT"
        plain = {int(p) for p in peer["spec"]["portLevelMtls"]}
        allowed = principals(overlay)
        # Only the metrics ports are plain HTTP (and admitted by the NetworkPolicy to Prometheus).
        assert {p for p, names in allowed.items() if names is None} == plain <= {8082, 9091}
        assert set(allowed) == set(ingress(overlay))
    k8s, kserve = principals(docs["kubernetes"]), principals(docs["kserve"])
    assert k8s[PORTS["inference"]] == {GATEWAY_SA}
    assert kserve[8012] == kserve[8013] == {KNATIVE_SA, GATEWAY_SA}
    assert kserve[8022] == kserve[9090] == {KNATIVE_SA}
    pod = docs["kubernetes"][("Deployment", "image-classifier")]["spec"]["template"]["metadata"]
    assert pod["labels"]["sidecar.istio.io/inject"] == "true"
    assert pod["annotations"]["prometheus.istio.io/merge-metrics"] == "false"
    predictor = docs["kserve"][("InferenceService", "image-classifier")]["spec"]["predictor"]
    assert predictor["annotations"]["sidecar.istio.io/inject"] == "true"
    # Token authorization is off in the pods: the mesh is what authenticates.
    assert read_properties(K8S_CONFIG)["disable_token_authorization"] == "true"


def _drop_peer_authentication(docs):
    return [d for d in docs if d["kind"] != "PeerAuthentication"]


def _permissive(docs):
    for d in docs:
        if d["kind"] == "PeerAuthentication":
            d["spec"]["mtls"]["mode"] = "PERMISSIVE"
    return docs


def _plain_inference(docs):
    for d in docs:
        if d["kind"] == "PeerAuthentication":
            d["spec"]["portLevelMtls"]["8080"] = {"mode": "PERMISSIVE"}
    return docs


def _no_sidecar(docs):
    for d in docs:
        if d["kind"] == "Deployment":
            del d["spec"]["template"]["metadata"]["labels"]["sidecar.istio.io/inject"]
    return docs


def _anyone_on_inference(docs):
    for d in docs:
        if d["kind"] == "AuthorizationPolicy":
            del d["spec"]["rules"][0]["from"]
    return docs


def _namespace_only(docs):
    for d in docs:
        if d["kind"] == "AuthorizationPolicy":
            d["spec"]["rules"][0]["from"] = [{"source": {"namespaces": ["istio-system"]}}]
    return docs


def _deny_policy(docs):
    for d in docs:
        if d["kind"] == "AuthorizationPolicy":
            d["spec"]["action"] = "DENY"
    return docs


def _open_network_rule(docs):
    for d in docs:
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "image-classifier-ingress":
            del d["spec"]["ingress"][0]["from"]
    return docs


def _management_admitted(docs):
    for d in docs:
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "image-classifier-ingress":
            d["spec"]["ingress"][0]["ports"].append({"protocol": "TCP", "port": 8081})
    return docs


@pytest.mark.parametrize("break_it", [
    _drop_peer_authentication, _permissive, _plain_inference, _no_sidecar, _anyone_on_inference,
    _namespace_only, _deny_policy, _open_network_rule, _management_admitted])
def test_validate_refuses_the_kubernetes_overlay_without_its_authentication(break_it, docs):
    broken = break_it(copy.deepcopy(list(docs["kubernetes"].values())))
    assert validate.access_problems(broken), break_it.__name__


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
    # the archive and, where it was signed, its signature (scripts/ops/signature.py)
    assert f"model_store/{MODEL}.mar*" in copied and "config.properties" in copied
    assert "COPY --from=archive /model_store/ model_store/" in " ".join(
        f"{ins} {args}" for ins, args in dockerfile() if ins == "COPY")
    archive_glob = f"model_store/{MODEL}.mar*"
    sources = [s for src in copied
               for s in ([f"model_store/{MODEL}.mar", f"model_store/{MODEL}.mar.sig"]
                         if src == archive_glob else [src])]
    for src in sources:
        excluded = False
        for pattern in ignored:  # Docker's rule: the last matching line wins
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(src, pattern.lstrip("!")) or src.startswith(pattern.lstrip("!") + "/"):
                excluded = not negate
        assert not excluded, f"{src} is excluded by .dockerignore"
        if src.startswith("model_store/"):  # build outputs: `make package` writes them
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
    make_args = [MODEL if a in ("$(MODEL)", "$(MODELS)") else a for a in recipe[1:]]  # MODELS=MODEL
    assert entry[1:1 + len(make_args)] == make_args  # -m scripts.ops.serve start --model efficientnet_lite0
    assert entry[1 + len(make_args):] == ["--host", "0.0.0.0", "--foreground"]
    usage = subprocess.run([sys.executable, "-m", "scripts.ops.serve", "--help"],
                           capture_output=True, text=True, timeout=60).stdout
    assert "--host" in usage and "--foreground" in usage


def test_healthcheck_is_the_readiness_probe():
    check = instructions("HEALTHCHECK")[0]
    assert json.loads(check.split("CMD", 1)[1].strip()) == READY_PROBE
    assert importlib.util.find_spec(READY_PROBE[2]) is not None


def image_path(path: str) -> Path:
    """Where a path inside the image comes from in the repository (the image's WORKDIR = ROOT)."""
    return ROOT / Path(path).relative_to(APP)


def test_kubernetes_deployment_service_hpa(docs):
    k8s = docs["kubernetes"]
    dep = k8s[("Deployment", "image-classifier")]
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert "command" not in container  # the image's entrypoint, with the cluster's config
    config_arg = container["args"][container["args"].index("--config") + 1]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert Path(config_arg).parent == Path(mount["mountPath"])
    config_map = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")["configMap"]["name"]
    rendered = k8s[("ConfigMap", "image-classifier-config")]
    assert rendered["metadata"]["name"] == config_map
    assert rendered["data"][Path(config_arg).name] == K8S_CONFIG.read_text()
    props = read_properties(K8S_CONFIG)
    for key in ("metrics_config", "workflow_store"):  # paths in the image exist in the repository
        assert image_path(props[key]).exists(), key
    assert image_path(props["model_store"]) == repo.MODEL_STORE
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"inference": PORTS["inference"], "metrics": PORTS["metrics"]}
    assert container["startupProbe"]["exec"]["command"] == READY_PROBE
    assert container["readinessProbe"]["exec"]["command"] == READY_PROBE
    assert container["livenessProbe"]["exec"]["command"] == LIVE_PROBE
    pod_hardening(pod["spec"], container)
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == PORTS["metrics"]
    check_resources(container["resources"])
    svc = k8s[("Service", "image-classifier")]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    for port in svc["spec"]["ports"]:
        assert ports[port["targetPort"]] == port["port"]
    hpa = k8s[("HorizontalPodAutoscaler", "image-classifier")]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "image-classifier")
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "ts_inference_requests_per_second"
    assert float(metric["pods"]["target"]["averageValue"]) == PER_POD_RPS
    rules = yaml.safe_load((ROOT / "deploy" / "overlays" / "kubernetes" / "prometheus-adapter-rules.yaml")
                           .read_text())["rules"]
    assert any(r["name"]["as"] == "ts_inference_requests_per_second"
               and "ts_inference_requests_total" in r["seriesQuery"] for r in rules)


def test_kserve_inference_service_and_storage_layout(tmp_path, docs):
    isvc = docs["kserve"][("InferenceService", "image-classifier")]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    pred = isvc["spec"]["predictor"]
    assert "model" not in pred  # our image, not KServe's TorchServe runtime
    (container,) = pred["containers"]
    assert container["name"] == "kserve-container"
    assert container["image"].rsplit("/", 1)[-1] == f"{IMAGE}:{VERSION}"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert re.match(r"(gs|s3|pvc|https?)://", env["STORAGE_URI"])
    assert container["args"] == ["--config", "/mnt/models/config/config.properties"]
    assert container["ports"][0]["containerPort"] == PORTS["inference"]
    assert int(KSERVE_PROPS["inference_address"].rsplit(":", 1)[1]) == PORTS["inference"]
    assert container["readinessProbe"]["exec"]["command"] == READY_PROBE
    pod_hardening(pred, container)
    check_resources(container["resources"])
    assert pred["scaleMetric"] == "rps" and pred["scaleTarget"] == PER_POD_RPS
    assert 2 <= pred["minReplicas"] <= pred["maxReplicas"]
    assert int(isvc["metadata"]["annotations"]["prometheus.kserve.io/port"]) == int(
        KSERVE_PROPS["metrics_address"].rsplit(":", 1)[1])
    assert KSERVE_PROPS["model_store"] == "/mnt/models/model-store"
    assert KSERVE_PROPS["load_models"] == f"{MODEL}={MODEL}.mar"
    # v2 bodies are read per request by the handler (batching kept), not by the kservev2 envelope
    assert "service_envelope" not in KSERVE_PROPS and KSERVE_PROPS["ts_open_inference_protocol"] == "true"
    assert image_path(KSERVE_PROPS["workflow_store"]).is_dir()
    mar = tmp_path / f"{MODEL}.mar"
    mar.write_bytes(b"archive")
    out = kserve_storage.stage(tmp_path / "storage", mar)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "config/config.properties", "config/metrics.yaml", f"model-store/{MODEL}.mar"]
    # Every path the config names under the mount exists in the laid-out storage.
    for key in ("metrics_config", "model_store"):
        assert (out / KSERVE_PROPS[key].removeprefix("/mnt/models/")).exists(), key
    staged = read_properties(out / "config" / "config.properties")
    assert staged == KSERVE_PROPS


def test_overlays_run_the_image_make_image_builds(docs):
    dep = docs["kubernetes"][("Deployment", "image-classifier")]
    dep_image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    assert dep_image.rsplit("/", 1)[-1] == f"{IMAGE}:{VERSION}"
    assert f"IMAGE_NAME := localhost/{IMAGE}" in (ROOT / "Makefile").read_text()
    assert f"registry.example.com/{IMAGE}:VERSION" in (ROOT / "Dockerfile").read_text()


def test_the_image_and_the_kserve_pod_pin_the_archive_they_serve(docs):
    """The image refuses an unpinned archive and pins its own; KServe's pod serves another archive
    (the storage's), so it must carry that archive's pin, which the image's would not match."""
    env = " ".join(instructions("ENV"))
    assert "ARCHIVE_PINS_REQUIRED=1" in env
    assert f"ARCHIVE_SHA256={MODEL}.mar=${{MAR_SHA256}}" in env
    (container,) = docs["kserve"][("InferenceService", "image-classifier")]["spec"]["predictor"]["containers"]
    pinned = {e["name"]: e["value"] for e in container["env"]}["ARCHIVE_SHA256"]
    assert pinned.startswith(f"{MODEL}.mar=")


def test_kserve_canary_patch_documented_in_the_overlay_validates(docs):
    """The InferenceService ships fully rolled out (no canaryTrafficPercent); the canary share and
    the rollback its comments give (docs/canary.md) are fields KServe's schema accepts."""
    isvc = docs["kserve"][("InferenceService", "image-classifier")]
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    text = (ROOT / "deploy" / "overlays" / "kserve" / "inferenceservice.yaml").read_text()
    documented = [int(v) for v in re.findall(r"^\s*#\s+canaryTrafficPercent: (\d+)\s*$", text, re.M)]
    assert documented == [10, 0]  # the share, then the rollback
    for percent in documented:
        patched = copy.deepcopy(isvc)
        patched["spec"]["predictor"]["canaryTrafficPercent"] = percent
        assert validate.errors(patched) == []
    misplaced = copy.deepcopy(isvc)
    misplaced["spec"]["canaryTrafficPercent"] = 10  # on the spec, not the component: refused
    assert validate.errors(misplaced)


def test_the_kserve_pod_requires_a_signature_with_the_mounted_key(docs, tmp_path):
    """ARCHIVE_VERIFY_KEY names a file of the mounted ConfigMap (a missing signature is then an
    error: scripts/ops/signature.py); the storage carries the signature beside the archive."""
    overlay = docs["kserve"]
    predictor = overlay[("InferenceService", "image-classifier")]["spec"]["predictor"]
    (container,) = predictor["containers"]
    key = Path({e["name"]: e["value"] for e in container["env"]}["ARCHIVE_VERIFY_KEY"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(key.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in predictor["volumes"] if v["name"] == mount["name"]]
    assert key.name in overlay[("ConfigMap", volume["configMap"]["name"])]["data"]
    mar = tmp_path / f"{MODEL}.mar"
    mar.write_bytes(b"archive")
    (tmp_path / f"{MODEL}.mar.sig").write_bytes(b"signature")
    out = kserve_storage.stage(tmp_path / "storage", mar)
    assert sorted(p.name for p in (out / "model-store").iterdir()) == [f"{MODEL}.mar", f"{MODEL}.mar.sig"]


def test_make_serve_installs_the_client_library_before_serving():
    """The README's Operate block runs `classify` right after `make serve` (dry run: nothing runs)."""
    plan = subprocess.run(["make", "-n", "-B", "serve"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60).stdout
    client = plan.find("-e ./client")
    assert client != -1, plan
    assert client < plan.find("-m scripts.ops.serve start")

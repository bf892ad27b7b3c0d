"""Render every overlay under deploy/overlays with kustomize and validate each resource offline.

Kubernetes kinds are checked against the Kubernetes OpenAPI schemas (`kubernetes-validate`,
strict: an unknown field is an error, as the API server's strict field validation would say);
the custom resources (KServe's InferenceService; Istio's PeerAuthentication, AuthorizationPolicy
and Sidecar) against their CRD schemas vendored in deploy/schemas/ (source and commit noted in
each file), made strict the same way. Then the rules that make authentication inside the cluster
hold (access_problems: the Istio sidecar, mutual TLS, named principals, NetworkPolicies that
admit nothing to everyone and only ports the AuthorizationPolicy admits). Nothing contacts a
cluster: `kubectl kustomize` only renders files.

    python -m scripts.deploy.validate                 # every overlay; exit 1 on any error
    python -m scripts.deploy.validate --print kserve  # and print the rendered YAML
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

from scripts import repo

DEPLOY = repo.ROOT / "deploy"
OVERLAYS = DEPLOY / "overlays"
SCHEMAS = DEPLOY / "schemas"
KSERVE_SCHEMA = SCHEMAS / "kserve-inferenceservice-v1beta1.json"
# Custom resources by (apiVersion, kind): their vendored CRD schema.
CRD_SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): KSERVE_SCHEMA,
    ("security.istio.io/v1", "PeerAuthentication"): SCHEMAS / "istio-peerauthentication-v1.json",
    ("security.istio.io/v1", "AuthorizationPolicy"): SCHEMAS / "istio-authorizationpolicy-v1.json",
    ("networking.istio.io/v1", "Sidecar"): SCHEMAS / "istio-sidecar-v1.json",
}
KUBERNETES_VERSION = "1.37.0"


def kubectl() -> str:
    """The venv's kubectl (requirements-dev.txt), else one on PATH."""
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.is_file() else shutil.which("kubectl")
    if not found:
        raise FileNotFoundError("kubectl not found: pip install -r requirements-dev.txt")
    return found


def render(overlay: str | Path) -> list[dict]:
    """The overlay's resources as kustomize renders them (files only, no cluster)."""
    path = OVERLAYS / overlay if not Path(overlay).is_absolute() else Path(overlay)
    out = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True,
                         timeout=60, env={"PATH": "", "KUBECONFIG": "/dev/null"})
    if out.returncode != 0:
        raise ValueError(f"kustomize failed for {path}: {out.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _strict(node):
    """A CRD's structural schema with unknown fields refused wherever it lists its fields."""
    if isinstance(node, list):
        return [_strict(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strict(v) for k, v in node.items()}
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        node.setdefault("additionalProperties", False)
    return node


@functools.cache
def crd_validator(path: Path) -> jsonschema.Draft7Validator:
    schema = _strict(json.loads(path.read_text())["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def errors(doc: dict) -> list[str]:
    """Every schema error of one resource, as 'Kind/name: path: message' lines."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    crd = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
    if crd is not None:
        return [f"{where}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in crd_validator(crd).iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
        return [f"{where}: {getattr(exc, 'message', exc)}"]
    return []


# Ports served in plain HTTP to Prometheus (outside the mesh): TorchServe's metrics and the
# queue-proxy's request metrics. Every other admitted port requires a mesh identity.
PLAIN_PORTS = {8082, 9091}


def _selects(selector: dict | None, labels: dict) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def pods(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(where, labels, annotations) of the pods each workload runs."""
    found = []
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Deployment":
            meta = doc["spec"]["template"]["metadata"]
            found.append((where, meta.get("labels", {}), meta.get("annotations", {})))
        elif doc["kind"] == "InferenceService":
            pred = doc["spec"]["predictor"]
            found.append((where, pred.get("labels", {}), pred.get("annotations", {})))
    return found


def access_problems(docs: list[dict]) -> list[str]:
    """The rules that make the cluster's authentication hold, beyond the schemas: every pod runs
    the Istio sidecar, a STRICT PeerAuthentication and an ALLOW AuthorizationPolicy select it, every
    port but the plain metrics ones is admitted to named principals only, the NetworkPolicies
    admit nothing to everyone, and each port they admit is one the AuthorizationPolicy admits."""
    problems = []
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    for where, labels, notes in pods(docs):
        if "true" not in (labels.get("sidecar.istio.io/inject"),
                          notes.get("sidecar.istio.io/inject")):
            problems.append(f"{where}: pods without the Istio sidecar (sidecar.istio.io/inject)")
        peer = [d["spec"] for d in by_kind.get("PeerAuthentication", [])
                if _selects(d["spec"].get("selector", {}).get("matchLabels"), labels)]
        if not peer or any(p.get("mtls", {}).get("mode") != "STRICT" for p in peer):
            problems.append(f"{where}: no PeerAuthentication with mtls STRICT selects its pods")
        plain = {int(port) for p in peer for port, m in p.get("portLevelMtls", {}).items()
                 if m.get("mode") != "STRICT"}
        if plain - PLAIN_PORTS:
            problems.append(f"{where}: mutual TLS not required on {sorted(plain - PLAIN_PORTS)}")
        authz = [d["spec"] for d in by_kind.get("AuthorizationPolicy", [])
                 if _selects(d["spec"].get("selector", {}).get("matchLabels"), labels)]
        if not authz or any(a.get("action", "ALLOW") != "ALLOW" for a in authz):
            problems.append(f"{where}: no ALLOW AuthorizationPolicy selects its pods")
        allowed: set[int] = set()
        for rule in (r for a in authz for r in a.get("rules", [])):
            ports = {int(p) for t in rule.get("to", []) for p in t["operation"].get("ports", [])}
            if not ports:
                problems.append(f"{where}: an AuthorizationPolicy rule names no port")
            named = rule.get("from") and all(f["source"].get("principals") for f in rule["from"])
            if not named and ports - PLAIN_PORTS:
                problems.append(f"{where}: ports {sorted(ports - PLAIN_PORTS)} admitted without "
                                "a named principal")
            allowed |= ports
        admitted: set[int] = set()
        for policy in by_kind.get("NetworkPolicy", []):
            if not _selects(policy["spec"]["podSelector"].get("matchLabels"), labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                if not rule.get("from") or not rule.get("ports"):
                    problems.append(f"{where}: NetworkPolicy/{policy['metadata']['name']} admits "
                                    "every source or every port")
                admitted |= {p["port"] for p in rule.get("ports", [])}
        if admitted != allowed:
            problems.append(f"{where}: NetworkPolicies admit ports {sorted(admitted)}, the "
                            f"AuthorizationPolicy {sorted(allowed)}")
    return problems


def overlays() -> list[str]:
    return sorted(p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overlay", nargs="*", help=f"default: all ({', '.join(overlays())})")
    parser.add_argument("--print", action="store_true", help="print the rendered resources")
    args = parser.parse_args(argv)
    failed = 0
    for name in args.overlay or overlays():
        docs = render(name)
        problems = [line for doc in docs for line in errors(doc)] + access_problems(docs)
        kinds = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
        print(f"{name}: {len(docs)} resources ({kinds}): "
              + ("valid" if not problems else f"{len(problems)} errors"))
        for line in problems:
            print(f"  {line}")
        if args.print:
            print(yaml.safe_dump_all(docs, sort_keys=False))
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

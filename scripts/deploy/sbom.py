"""A CycloneDX 1.5 SBOM (JSON) of the runtime image, from what is installed in it: every Python
distribution its venv holds (importlib.metadata), every Debian package of its base (dpkg's
status file), the model archive, and the image itself (its ID, and the base's digest).

    python -m scripts.deploy.sbom --image localhost/image-classifier-service:1.0.0 \\
        --engine "podman --runtime runc" -o build/sbom.cdx.json        # what `make image` runs

The inventory is read inside the image: this file, stdlib only, is sent on the container's
stdin and run by the image's own python with `--collect` (no network, nothing mounted, nothing
left in the image). The host then adds the wheels' sha256 from requirements-image.lock, so each
Python component names the exact file `pip install --require-hashes` accepted.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

DPKG_STATUS = Path("/var/lib/dpkg/status")
ARCHIVE_LABEL = "io.image-classifier.archive.sha256"


def canonical(name: str) -> str:
    """PEP 503's normalized project name (scripts.deploy.lock uses this one: this file runs alone
    inside the image, standard library only, so it imports nothing of ours)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def python_packages() -> list[dict]:
    """{name, version, license} of every distribution on this interpreter's path."""
    found = {}
    for dist in importlib.metadata.distributions():
        meta = dist.metadata
        name = meta["Name"]
        if not name:
            continue
        found[canonical(name)] = {
            "name": name, "version": dist.version,
            "license": meta.get("License-Expression") or meta.get("License") or "",
            "classifiers": [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or []
                            if c.startswith("License ::")]}
    return [found[k] for k in sorted(found)]


def debian_packages(status: str) -> list[dict]:
    """{name, version, arch} of every installed package in a dpkg status file's text."""
    found = []
    for stanza in status.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, re.M))
        if fields.get("Package") and "installed" in fields.get("Status", "").split():
            found.append({"name": fields["Package"], "version": fields.get("Version", ""),
                          "arch": fields.get("Architecture", "")})
    return sorted(found, key=lambda p: p["name"])


def collect() -> dict:
    """What this image holds (run inside it, by its own python)."""
    status = DPKG_STATUS.read_text() if DPKG_STATUS.is_file() else ""
    return {"python": python_packages(), "python_version": sys.version.split()[0],
            "prefix": sys.prefix, "debian": debian_packages(status)}


def lock_hashes(lock_text: str) -> dict[str, tuple[str, str]]:
    """{name: (version, sha256)} of a requirements lock (`name==version --hash=sha256:...`)."""
    found = {}
    for line in lock_text.splitlines():
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s+--hash=sha256:([0-9a-f]{64})", line)
        if m:
            found[canonical(m[1])] = (m[2], m[3])
    return found


def _licenses(pkg: dict) -> list[dict]:
    text = pkg["license"].strip()
    if text and len(text) < 100 and "\n" not in text:
        return [{"license": {"name": text}}]
    return [{"license": {"name": c}} for c in pkg["classifiers"]]


def bom(inventory: dict, lock: dict[str, tuple[str, str]], image: dict) -> dict:
    """The CycloneDX document. `image`: name, version, id, base, base_digest, archive_sha256."""
    components = []
    for pkg in inventory["python"]:
        ref = f"pkg:pypi/{canonical(pkg['name'])}@{pkg['version']}"
        component = {"type": "library", "bom-ref": ref, "name": pkg["name"],
                     "version": pkg["version"], "purl": ref}
        licenses = _licenses(pkg)
        if licenses:
            component["licenses"] = licenses
        locked = lock.get(canonical(pkg["name"]))
        if locked and locked[0] == pkg["version"]:
            component["hashes"] = [{"alg": "SHA-256", "content": locked[1]}]
        components.append(component)
    for pkg in inventory["debian"]:
        ref = f"pkg:deb/debian/{pkg['name']}@{pkg['version']}?arch={pkg['arch']}"
        components.append({"type": "library", "bom-ref": ref, "name": pkg["name"],
                           "version": pkg["version"], "purl": ref})
    if image.get("archive_sha256"):
        components.append({"type": "file", "bom-ref": "model-archive",
                           "name": "model_store/efficientnet_lite0.mar",
                           "hashes": [{"alg": "SHA-256", "content": image["archive_sha256"]}]})
    properties = [{"name": k, "value": str(image[k])} for k in ("id", "base", "base_digest")
                  if image.get(k)]
    properties.append({"name": "python", "value": inventory["python_version"]})
    return {
        "bomFormat": "CycloneDX", "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}", "version": 1,
        "metadata": {
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "tools": {"components": [{"type": "application", "name": "scripts.deploy.sbom"}]},
            "component": {"type": "container", "bom-ref": "image", "name": image["name"],
                          "version": image.get("version", ""), "properties": properties},
        },
        "components": components,
        "dependencies": [{"ref": "image", "dependsOn": [c["bom-ref"] for c in components]}],
    }


def _inspect(engine: list[str], image: str, template: str) -> str:
    out = subprocess.run([*engine, "image", "inspect", image, "--format", template],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip() if out.returncode == 0 else ""


def inventory_of(engine: list[str], image: str, run_flags: list[str]) -> dict:
    """collect() run inside the image by its own python, this file on its stdin."""
    cmd = [*engine, "run", "--rm", "-i", "--network", "none", *run_flags,
           "--entrypoint", "python", image, "-", "--collect"]
    out = subprocess.run(cmd, input=Path(__file__).read_text(), capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"[sbom] collecting inside {image} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", action="store_true",
                        help="print this interpreter's inventory as JSON (run inside the image)")
    parser.add_argument("--image", help="the image to describe")
    parser.add_argument("--engine", default="podman", help="container engine command")
    parser.add_argument("--run-flags", default="", help="extra flags for the engine's run")
    parser.add_argument("--lock", type=Path, default=Path("requirements-image.lock"))
    parser.add_argument("--base", default="", help="the base image the build used")
    parser.add_argument("-o", "--out", type=Path, default=Path("build/sbom.cdx.json"))
    args = parser.parse_args(argv)
    if args.collect:
        json.dump(collect(), sys.stdout)
        return 0
    if not args.image:
        parser.error("--image is required")
    engine = shlex.split(args.engine)
    print(f"[sbom] reading the packages installed in {args.image}", flush=True)
    inventory = inventory_of(engine, args.image, shlex.split(args.run_flags))
    labels = json.loads(_inspect(engine, args.image, "{{json .Labels}}") or "{}") or {}
    image = {"name": args.image.rsplit(":", 1)[0], "version": args.image.rsplit(":", 1)[-1],
             "id": _inspect(engine, args.image, "{{.Id}}"), "base": args.base,
             "base_digest": _inspect(engine, args.base, "{{.Digest}}") if args.base else "",
             "archive_sha256": labels.get(ARCHIVE_LABEL, "")}
    lock = lock_hashes(args.lock.read_text()) if args.lock.is_file() else {}
    document = bom(inventory, lock, image)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    hashed = sum(1 for c in document["components"] if c.get("hashes") and c["type"] == "library")
    print(f"[sbom] wrote {args.out}: {len(inventory['python'])} Python packages ({hashed} with "
          f"the locked wheel's sha256), {len(inventory['debian'])} Debian packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The image's supply chain, read: the lock pins every package to one wheel by its sha256 and
covers the requirement files it was made from, the Dockerfile installs from it with
--require-hashes only, the base is pinned by digest, and the SBOM generator describes what an
image holds (the one `make image` wrote, when it is there: `make test` builds it first)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from handler.integrity import sha256_file
from scripts.deploy import lock, sbom
from tests.support.servers import ROOT

LOCK = ROOT / "requirements-image.lock"
LINE = re.compile(r"([a-z0-9][a-z0-9-]*)==([^\s=]+) --hash=sha256:([0-9a-f]{64})")
SBOM = ROOT / "build" / "sbom.cdx.json"


def locked() -> dict[str, tuple[str, str]]:
    """{name: (version, sha256)} of the lock."""
    return {m[1]: (m[2], m[3]) for m in map(LINE.fullmatch, LOCK.read_text().splitlines()) if m}


def test_every_line_of_the_lock_is_pinned_and_hashed():
    names = []
    for number, line in enumerate(LOCK.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = LINE.fullmatch(line)
        assert m, f"requirements-image.lock:{number}: not `name==version --hash=sha256:...`: {line}"
        assert m[1] == lock.canonical(m[1]), line  # one spelling per package
        names.append(m[1])
    assert names == sorted(names) and len(names) == len(set(names))
    assert len(names) >= 20  # the serving set and its dependencies, not a stub


def test_the_lock_covers_the_requirement_files_it_was_made_from():
    header = "\n".join(line for line in LOCK.read_text().splitlines() if line.startswith("#"))
    sources = lock.included(lock.REQUIREMENTS)
    assert [p.name for p in sources] == ["requirements-image.txt", "requirements-serve.txt"]
    for source in sources:
        assert source.name in header, f"the lock does not name {source.name}"
    pins = locked()
    for name, version in lock.pins(lock.REQUIREMENTS).items():
        assert name in pins, f"{name}=={version} is in {lock.REQUIREMENTS.name} but not in the lock"
        assert pins[name][0] == version, f"{name}: {version} pinned, {pins[name][0]} locked"
    # The CPU torch the image runs, hashed like every other wheel.
    assert pins["torch"][0].endswith("+cpu")


def test_pins_follow_includes_and_normalize_names(tmp_path):
    (tmp_path / "a.txt").write_text("-r b.txt\nPyYAML==6.0.3  # comment\nfoo_bar==1.0 ; python_version>'3'\n")
    (tmp_path / "b.txt").write_text("# header\ntorch==2.13.0+cpu\nunpinned>=1\n")
    assert lock.pins(tmp_path / "a.txt") == {"pyyaml": "6.0.3", "foo-bar": "1.0",
                                             "torch": "2.13.0+cpu"}
    assert lock.wheel_name_version("typing_extensions-4.16.0-py3-none-any.whl") == (
        "typing-extensions", "4.16.0")


def test_lock_text_hashes_each_wheel_once(tmp_path):
    wheels = []
    for name, body in [("torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", b"t"),
                       ("PyYAML-6.0.3-cp311-cp311-manylinux2014_x86_64.whl", b"y")]:
        (tmp_path / name).write_bytes(body)
        wheels.append(tmp_path / name)
    text = lock.lock_text(wheels, [lock.REQUIREMENTS], verify=False)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [f"pyyaml==6.0.3 --hash=sha256:{sha256_file(wheels[1])}",
                     f"torch==2.13.0+cpu --hash=sha256:{sha256_file(wheels[0])}"]
    assert all(LINE.fullmatch(line) for line in lines)


def deps_stage() -> str:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return text.split("FROM base AS deps", 1)[1].split("\nFROM ", 1)[0]


def test_the_dockerfile_installs_from_the_lock_with_require_hashes():
    stage = deps_stage()
    (install,) = [line for line in stage.splitlines() if "pip install" in line]
    assert "--require-hashes" in install and "--only-binary :all:" in install
    assert "-r /tmp/req/requirements-image.lock" in install
    assert "requirements-image.txt" not in stage and "requirements-serve.txt" not in stage
    assert "COPY requirements-image.lock /tmp/req/" in stage


def make_image_dry(base: str) -> subprocess.CompletedProcess:
    """`make image` with a registry base, prerequisites and the engine disabled: only the
    recipe's first line (the digest check) can act."""
    return subprocess.run(["make", "--no-print-directory", "image", f"BASE_IMAGE={base}",
                           "-o", "engine", "-o", "image-base", "-o", "model_store/efficientnet_lite0.mar",
                           "ENGINE_CMD=false", "PY=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_make_image_refuses_a_registry_base_not_pinned_by_digest():
    out = make_image_dry("docker.io/library/debian:bookworm-slim")
    assert out.returncode != 0 and "not pinned by digest" in out.stderr
    makefile = (ROOT / "Makefile").read_text()
    assert "--build-arg BASE=$(BASE_REF)" in makefile
    assert "image inspect --format '{{.Digest}}' $(LOCAL_BASE)" in makefile  # the local base too
    assert "-m scripts.deploy.sbom --image $(IMAGE)" in makefile


STATUS = """Package: libc6
Status: install ok installed
Architecture: amd64
Version: 2.36-9+deb12u10
Description: GNU C Library
 shared libraries

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: python3
Status: install ok installed
Architecture: amd64
Version: 3.11.2-1+b1
"""


def test_sbom_from_an_inventory_and_the_lock():
    inventory = {"python": [{"name": "torch", "version": "2.13.0+cpu", "license": "BSD-3-Clause",
                             "classifiers": []},
                            {"name": "PyYAML", "version": "6.0.3", "license": "",
                             "classifiers": ["MIT License"]},
                            {"name": "unlocked", "version": "1.0", "license": "", "classifiers": []}],
                 "python_version": "3.11.2", "prefix": "/opt/venv",
                 "debian": sbom.debian_packages(STATUS)}
    assert [p["name"] for p in inventory["debian"]] == ["libc6", "python3"]  # installed only
    pins = sbom.lock_hashes(LOCK.read_text())
    document = sbom.bom(inventory, pins, {"name": "localhost/image-classifier-service",
                                          "version": "1.0.0", "id": "abc", "archive_sha256": "0" * 64})
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.5"
    assert re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", document["serialNumber"])
    assert document["metadata"]["component"]["type"] == "container"
    by_purl = {c.get("purl"): c for c in document["components"]}
    torch = by_purl["pkg:pypi/torch@2.13.0+cpu"]
    assert torch["hashes"] == [{"alg": "SHA-256", "content": pins["torch"][1]}]
    assert by_purl["pkg:pypi/pyyaml@6.0.3"]["licenses"] == [{"license": {"name": "MIT License"}}]
    assert "hashes" not in by_purl["pkg:pypi/unlocked@1.0"]
    assert "pkg:deb/debian/libc6@2.36-9+deb12u10?arch=amd64" in by_purl
    refs = [c["bom-ref"] for c in document["components"]]
    assert len(refs) == len(set(refs)) == len(document["dependencies"][0]["dependsOn"])
    assert any(c["type"] == "file" and c["hashes"][0]["content"] == "0" * 64
               for c in document["components"])


def test_sbom_collector_runs_from_stdin_with_the_standard_library_only():
    """As `make image` runs it inside the image: the file on python's stdin, `--collect`."""
    out = subprocess.run([sys.executable, "-I", "-", "--collect"], input=(
        ROOT / "scripts" / "deploy" / "sbom.py").read_text(), capture_output=True, text=True,
        timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    inventory = json.loads(out.stdout)
    names = {sbom.canonical(p["name"]) for p in inventory["python"]}
    assert {"pytest", "pyyaml", "torchserve"} <= names
    assert inventory["python_version"] == sys.version.split()[0]


def test_the_sbom_make_image_wrote_lists_the_locked_wheels():
    if not SBOM.is_file():
        pytest.fail(f"{SBOM.relative_to(ROOT)} is missing: `make image` writes it")
    document = json.loads(SBOM.read_text())
    assert document["bomFormat"] == "CycloneDX"
    pypi = {c["purl"]: c for c in document["components"] if c.get("purl", "").startswith("pkg:pypi/")}
    for name, (version, digest) in locked().items():
        component = pypi.get(f"pkg:pypi/{name}@{version}")
        assert component, f"{name}=={version} is locked but not in the image's SBOM"
        assert component["hashes"] == [{"alg": "SHA-256", "content": digest}]
    assert len(pypi) == len(locked())  # nothing in the venv that the lock does not name
    properties = {p["name"]: p["value"] for p in document["metadata"]["component"]["properties"]}
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", properties["base_digest"])
    assert any(c.get("purl", "").startswith("pkg:deb/debian/openjdk-17-jre-headless@")
               for c in document["components"])

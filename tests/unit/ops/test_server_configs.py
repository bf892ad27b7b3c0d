"""Every config.properties in the repository, and every address the serve CLI derives, keeps
TorchServe's dangerous surfaces closed: the management API (registers models whose handler code
then runs, scales workers to zero) and gRPC on loopback, model and workflow registration unable
to fetch anything remote, handler metrics declared. A new or edited config that opens one of
them fails here."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

from scripts import repo
from scripts.ops import serve
from scripts.ops.server_config import read_properties, store_urls, url_problems
from tests.support.servers import ROOT

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# Never searched for configs: git-ignored outputs (run/ holds the configs serve derives).
SKIPPED_DIRS = {"build", "run", "photos", "logs", "model_store", "__pycache__"}


def config_files() -> list[Path]:
    """Every *config.properties in the working tree outside hidden folders and SKIPPED_DIRS: a
    walk, not `git ls-files`, so collecting the tests runs no subprocess (a test below checks
    that it finds every tracked config)."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if d not in SKIPPED_DIRS and not d.startswith(".")]
        found += [Path(folder) / f for f in files if f.endswith("config.properties")]
    return sorted(found)


CONFIGS = config_files()


def host(address: str) -> str:
    return urlparse(address).hostname if "://" in address else address


def insecure(props: dict[str, str]) -> list[str]:
    """What in a TorchServe config opens a surface; empty when it holds to the rules."""
    problems = []
    if host(props.get("management_address", "http://127.0.0.1:8081")) not in LOOPBACK:
        problems.append("management_address is not loopback")
    for key in ("grpc_management_address", "grpc_inference_address"):
        if host(props.get(key, "127.0.0.1")) not in LOOPBACK:
            problems.append(f"{key} is not loopback")
    problems += url_problems(props)
    store, workflows = props.get("model_store"), props.get("workflow_store")
    if not workflows or workflows == store:
        problems.append("workflow_store must be its own (empty) folder, not the model store")
    if props.get("enable_model_api", "false") != "false":
        problems.append("enable_model_api must stay false")
    if not props.get("metrics_config"):
        problems.append("metrics_config is missing: every handler_* metric and alert would go dark")
    return problems


def test_the_repository_has_the_configs_this_test_expects():
    assert {p.relative_to(ROOT).as_posix() for p in CONFIGS} >= {
        "config.properties", "config/kserve/config.properties"}


def test_every_tracked_config_is_checked():
    tracked = subprocess.run(["git", "ls-files", "*config.properties"], cwd=ROOT, capture_output=True,
                             text=True, check=True, timeout=60).stdout.split()
    assert {ROOT / p for p in tracked} <= set(CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_config_keeps_management_local_and_registration_closed(path):
    assert insecure(read_properties(path)) == []


def test_the_rules_catch_each_opening():
    good = read_properties(ROOT / "config" / "kserve" / "config.properties")
    assert insecure(good) == []
    store = good["model_store"]
    for change in ({"management_address": "http://0.0.0.0:8081"},
                   {"grpc_management_address": "0.0.0.0"},
                   {"use_env_allowed_urls": "true"},
                   {"workflow_store": store},
                   {"enable_model_api": "true"},
                   {"metrics_config": ""}):
        assert insecure({**good, **change}), change
    assert insecure({k: v for k, v in good.items() if k != "allowed_urls"})


# allowed_urls values that admit more than the archives directly in the store (STORE: the
# config's model_store), each with what it lets in.
OPEN_URLS = {
    "file://.*": "any file on the machine (this repository's config.properties had it)",
    "file://.*,http(s)?://.*": "TorchServe's default: any file, any web server",
    "(?-i:file://STORE/[^/%?#]+[.]mar),http://127.0.0.1/.*": "a second pattern",
    "file://STORE/.*": "file://STORE/../../tmp/x.war, copied into the workflow store",
    "(?-i:file://STORE/[^/]+[.]mar)": "file://STORE/%2E%2E%2F..%2Fx.mar (Java decodes %2F)",
    "file://STORE/[^/%?#]+[.]mar": "case-insensitive: file:///MNT/... is another folder",
    "(?-i:file://STORE/.+[.]mar)": "sub-folders and ../",
    "(?-i:file://STORE/[^/%?#]+\\.mar)": "a backslash (java.util.Properties drops it: any char)",
    "(?-i:file://STORE/../tmp/[^/%?#]+[.]mar)": "another folder, spelt through the store",
    "(?-i:file:///tmp/[^/%?#]+[.]mar)": "another folder",
    "(?-i:file://STORE/sub/[^/%?#]+[.]mar)": "another folder, inside the store",
    "": "nothing set: TorchServe's default",
}


@pytest.mark.parametrize("urls", sorted(OPEN_URLS), ids=lambda u: OPEN_URLS[u])
def test_the_rules_catch_an_open_allowed_urls(urls):
    good = read_properties(ROOT / "config" / "kserve" / "config.properties")
    spelt = urls.replace("STORE", good["model_store"])
    assert url_problems({**good, "allowed_urls": spelt}), spelt
    assert insecure({**good, "allowed_urls": spelt})


def test_store_urls_admits_exactly_the_archives_in_the_store():
    """The pattern under the rules TorchServe applies (ArchiveUtils.validateURL: whole URL,
    CASE_INSENSITIVE, ASCII), on URLs in, beside and under the store."""
    import re

    store = "/home/model-server/app/model_store"
    pattern = re.compile(store_urls(store), re.IGNORECASE | re.ASCII)
    admitted = [f"file://{store}/efficientnet_lite0.mar", f"file://{store}/a-b.c.mar"]
    refused = [f"file://{store}/../x.mar", f"file://{store}/sub/x.mar", f"file://{store}x/y.mar",
               f"file://{store}/%2E%2E%2Fx.mar", f"file://{store}/x.mar?../../y.mar",
               f"file://{store.upper()}/x.mar", f"file://{store}/x.war", f"file://{store}/x.mar/",
               "file:///tmp/x.mar", f"http://127.0.0.1{store}/x.mar", f"{store}/x.mar", "x.mar"]
    assert [u for u in admitted if not pattern.fullmatch(u)] == []
    assert [u for u in refused if pattern.fullmatch(u)] == []
    assert url_problems({"model_store": store, "allowed_urls": store_urls(store)}) == []
    with pytest.raises(ValueError):
        store_urls("/a store/with a space")


def test_the_container_runs_with_urls_of_its_own_store(tmp_path):
    """What the image's entrypoint (`serve start --host 0.0.0.0`, config.properties, the store
    /home/model-server/app/model_store) writes for TorchServe passes every rule."""
    overrides = serve.listen_overrides("0.0.0.0", serve.DEFAULT_PORTS, token_auth=True)
    props = read_properties(serve.derive_config(
        tmp_path, serve.DEFAULT_PORTS, "m=m.mar", model_store=Path("/home/model-server/app/model_store"),
        overrides=overrides))
    assert props["allowed_urls"] == store_urls("/home/model-server/app/model_store")
    assert url_problems(props) == []


def test_a_server_started_from_the_checkout_names_its_own_store(tmp_path):
    """`make serve` (and every test server) serves from this checkout's model_store: its derived
    allowed_urls must name that store (not the image's, which would admit no URL here)."""
    props = read_properties(serve.derive_config(tmp_path, serve.DEFAULT_PORTS, "m=m.mar",
                                                model_store=repo.MODEL_STORE))
    assert url_problems(props) == []


@pytest.mark.parametrize("listen", ["0.0.0.0", "10.1.2.3"])
@pytest.mark.parametrize("config", ["config/kserve/config.properties",
                                    "deploy/overlays/kubernetes/config.properties"])
def test_serve_host_never_opens_an_unauthenticated_management_api(tmp_path, listen, config):
    """`serve start --host 0.0.0.0 --config X` (the pods' entrypoint) with token auth off: the
    derived config opens inference and metrics, and still passes every rule."""
    base = ROOT / config
    assert read_properties(base)["disable_token_authorization"] == "true"
    overrides = serve.listen_overrides(listen, serve.DEFAULT_PORTS, token_auth=False)
    store = Path(read_properties(base)["model_store"])  # serve's default store: the config's own
    props = read_properties(serve.derive_config(tmp_path, serve.DEFAULT_PORTS, "m=m.mar", base=base,
                                                model_store=store, overrides=overrides))
    assert host(props["inference_address"]) == host(props["metrics_address"]) == listen
    assert host(props["management_address"]) == "127.0.0.1"
    assert insecure(props) == []
    assert serve.listen_overrides("127.0.0.1", serve.DEFAULT_PORTS) is None


def test_with_token_auth_the_container_publishes_management_too():
    """The image's own config keeps token auth on: management follows --host inside the
    container (published on the host's loopback only, docs/container.md), keyed."""
    assert read_properties(ROOT / "config.properties")["disable_token_authorization"] == "false"
    overrides = serve.listen_overrides("0.0.0.0", serve.DEFAULT_PORTS, token_auth=True)
    assert host(overrides["management_address"]) == "0.0.0.0"

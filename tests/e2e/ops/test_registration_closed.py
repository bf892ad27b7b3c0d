"""No code reaches a running server but the archive it was started with, on a real TorchServe
started as `make serve` starts it (config.properties, token authorization on).

Over the management API: registering a model (POST /models) and a workflow (POST /workflows,
which enable_model_api does not gate in 0.12) from a file outside the model store or inside it,
and scaling (PUT /models/NAME). Without the key each is refused; with it, registration is still
refused (enable_model_api=false, allowed_urls naming the store only, an empty workflow store),
and scaling, the operators' tool, works. The workflow sent is a real one whose handler would
leave a mark on disk when TorchServe loaded it. Afterwards the same workers classify."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import requests
from image_classifier_client.contract import AUTH_REFUSED

from scripts.ops.server_config import read_properties
from tests.support.answers import check_label
from tests.support.servers import MODEL

pytestmark = pytest.mark.e2e
WORKERS = 2  # config.properties default_workers_per_model
NOT_ALLOWED = "does not match any allowed URL(s)"


@pytest.fixture(scope="module")
def srv(server):
    """The session's server (tests/conftest.py): these tests leave its models, workflows and
    workers as they found them."""
    return server


def workflow_archive(marker: Path) -> bytes:
    """A .war TorchServe 0.12 would register: one node serving our own archive, one function
    node whose module, once imported by its worker, writes `marker`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as war:
        war.writestr("WAR-INF/MANIFEST.json", json.dumps({
            "createdOn": "01/01/2026 00:00:00", "archiverVersion": "0.2.15",
            "workflow": {"workflowName": "intruder", "specFile": "spec.yaml", "handler": "intruder.py"}}))
        war.writestr("spec.yaml", f"models:\n  min-workers: 1\n  max-workers: 1\n"
                                  f"  m1:\n    url: {MODEL}.mar\ndag:\n  pre: [m1]\n")
        war.writestr("intruder.py", f"open({str(marker)!r}, 'w').write('ran')\n\n"
                                    "def pre(data, context):\n    return data\n")
    return buf.getvalue()


def management(srv, method: str, path: str, keyed: bool, **params) -> requests.Response:
    client = srv.client
    return requests.request(method, client.management_url + path, params=params, timeout=120,
                            headers=client.auth_headers("management") if keyed else {})


def worker_pids(srv) -> list[int]:
    workers = srv.client.workers(MODEL)
    assert workers and all(w["status"] == "READY" for w in workers), workers
    return sorted(int(w["pid"]) for w in workers)


def refused(resp: requests.Response, status: int, kind: str, text: str = "") -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["code"] == status and body["type"] == kind, body
    assert text in body["message"], body


def test_registration_and_scaling_without_the_key_and_registration_with_it(srv, photos, tmp_path,
                                                                          default_mar):
    store = Path(srv.properties["model_store"])  # the verified copies serve start unpacked
    workflow_store = Path(srv.properties["workflow_store"])
    assert read_properties(srv.workdir / "config.properties")["enable_model_api"] == "false"
    in_workflow_store = sorted(p.name for p in workflow_store.iterdir())
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(default_mar, outside / "other.mar")
    marker = tmp_path / "intruder_ran"
    (outside / "intruder.war").write_bytes(workflow_archive(marker))
    with zipfile.ZipFile(outside / "intruder.war") as war:  # the same workflow, unpacked
        war.extractall(outside / "intruder")
    pids = worker_pids(srv)

    models = {"outside": f"file://{outside}/other.mar", "inside": f"file://{store}/{MODEL}.mar",
              "a folder outside": str(outside)}
    # `..` spelt plainly, and percent-encoded (Java decodes %2F in a file URL).
    up = "/".join([".."] * len(store.parts)) + str(outside)
    encoded = up.replace(".", "%2E").replace("/", "%2F")
    workflows = {"outside": f"file://{outside}/intruder.war",
                 "outside through ..": f"file://{store}/{up}/intruder.war",
                 "outside, %-encoded": f"file://{store}/{encoded}%2Fother.mar",
                 "a folder outside": str(outside / "intruder"),
                 "by name": "intruder.war"}
    try:
        for name, url in {**models, **{f"workflow {k}": v for k, v in workflows.items()}}.items():
            path = "/workflows" if name.startswith("workflow ") else "/models"
            refused(management(srv, "POST", path, keyed=False, url=url), 400, "InvalidKeyException",
                    AUTH_REFUSED)
        refused(management(srv, "PUT", f"/models/{MODEL}", keyed=False, min_worker=0), 400,
                "InvalidKeyException", AUTH_REFUSED)
        for url in models.values():
            refused(management(srv, "POST", "/models", keyed=True, url=url), 405,
                    "MethodNotAllowedException")
        expected = {"outside": NOT_ALLOWED, "outside through ..": NOT_ALLOWED,
                    "outside, %-encoded": NOT_ALLOWED, "a folder outside": "not found in workflow store",
                    "by name": "not found in workflow store"}
        for name, url in workflows.items():
            refused(management(srv, "POST", "/workflows", keyed=True, url=url), 404,
                    "WorkflowNotFoundException", expected[name])
        assert sorted(p.name for p in workflow_store.iterdir()) == in_workflow_store  # nothing copied in
    finally:
        for extra in set(workflow_store.iterdir()) - {workflow_store / n for n in in_workflow_store}:
            extra.unlink()
    assert not marker.exists()
    listed = management(srv, "GET", "/workflows", keyed=True)
    assert listed.status_code == 200 and listed.json()["workflows"] == [], listed.text
    assert srv.client.models() == [MODEL]
    assert worker_pids(srv) == pids
    check_label(srv.client.predict(MODEL, photos["cat.jpg"].read_bytes()), "cat")


def test_scaling_with_the_key_works_and_restores(srv, photos):
    """The operators' tool: up one worker and back, synchronously; the original workers serve on
    (TorchServe retires the newest on a scale-down)."""
    pids = worker_pids(srv)
    for count in (WORKERS + 1, WORKERS):
        resp = management(srv, "PUT", f"/models/{MODEL}", keyed=True, min_worker=count,
                          max_worker=count, synchronous="true", timeout=100)
        assert resp.status_code == 200, resp.text
        assert len(worker_pids(srv)) == count
    assert worker_pids(srv) == pids
    check_label(srv.client.predict(MODEL, photos["cat.jpg"].read_bytes()), "cat")

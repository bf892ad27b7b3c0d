"""The deployed model is the validated one, served with the pins of scripts/ops/pins.py
required: an archive with a changed labels file is refused before anything runs, the changed
file named; the untouched one loads, its workers' own check passes on the copy TorchServe loads,
and nothing writes bytecode into the model folders."""

from __future__ import annotations

import pytest

from handler import provenance
from scripts.ops import pins, serve
from tests.support.archives import rewrite_mar, tampered_labels


@pytest.mark.e2e
def test_tampered_archive_is_refused_before_anything_runs_untouched_loads(fresh_mar, photos, tmp_path):
    # Served the way `serve start` serves in the image: every archive pinned, pins required.
    # tampered.mar is pinned as it is (the operator's pin is not what this tests): its verified
    # copy is held to its own manifest at start (scripts/ops/verified_copy.py), so it is refused,
    # the changed file named, before any process is started; the untouched one, served alone,
    # loads, and its workers' own check passes on the copy TorchServe loads.
    store = tmp_path / "store"
    store.mkdir()
    (store / "good.mar").write_bytes(fresh_mar.read_bytes())
    rewrite_mar(fresh_mar, store / "tampered.mar", {"index_to_name.json": tampered_labels(fresh_mar)})
    operator = {pins.PIN_ENV: ",".join(f"{name}={provenance.sha256_file(store / name)}"
                                       for name in ("good.mar", "tampered.mar")),
                pins.REQUIRED_ENV: "1"}
    workdir = tmp_path / "ts"
    with pytest.raises(pins.PinError) as refused:
        serve.start(workdir, models="good=good.mar,tampered=tampered.mar", ports=serve.free_ports(),
                    model_store=store, env=operator)
    reason = str(refused.value)
    assert reason.startswith("tampered.mar: file index_to_name.json sha256") and ";" not in reason, reason
    assert not (workdir / "logs").exists()  # TorchServe never started
    operator[pins.PIN_ENV] = f"good.mar={provenance.sha256_file(store / 'good.mar')}"
    server = serve.start(workdir, models="good=good.mar", ports=serve.free_ports(), model_store=store,
                         env=operator)
    try:
        serve.wait_ready(server, "good", min_ready=2, timeout=180, progress=False)
        good = server.client.predict("good", photos["cat.jpg"].read_bytes())
        assert good.status_code == 200, good.text
        assert all(not p["label"].startswith("tampered") for p in good.json()["predictions"])
    finally:
        serve.stop(workdir, grace=5)
    text = (workdir / "logs" / "model_log.log").read_text()
    assert "Integrity check passed" in text and "writes bytecode" not in text
    assert not list(workdir.rglob("__pycache__"))  # nothing written into the model folders

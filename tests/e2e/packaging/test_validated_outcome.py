"""The validated outcome on a live server: the top-1 scripts.ops.evaluate measures over HTTP is
the one recorded at packaging (and the inspector shows the exported and running environments
side by side); each worker replays the archive's golden answers before READY; a changed numeric
path (HANDLER_FULL_JPEG_DECODE) makes the workers refuse the load, while an archive without
golden answers loads and says it is unchecked.

The labelled set (tests/support/labelled.py) is views of the project's sample photos, labelled
with the default model's own answers, so top-1 is 1.0 by construction.
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path

import pytest

from handler import layout
from scripts.ops import evaluate, inspect_mar, serve
from tests.support.servers import serving


@pytest.mark.e2e
def test_evaluate_against_a_live_server_matches_packaging(tmp_path, evaluated_mar, labelled, capsys):
    """Every labelled photo over HTTP: the served figure is the packaging figure."""
    workdir = tmp_path / "ts"
    with serving(workdir, evaluated_mar.parent, models=f"lite0_eval={evaluated_mar.name}",
                 model="lite0_eval", min_ready=2, timeout=90):
        rc = evaluate.main(["--eval-dir", str(labelled), "--model", "lite0_eval", "--workdir",
                            str(workdir), "--json"])
        report = json.loads(capsys.readouterr().out)
        url = serve.TorchServeClient.from_workdir(workdir).management_url
        same = inspect_mar.main([str(evaluated_mar), "--server", url, "--model", "lite0_eval",
                                 "--key-file", str(workdir / "key_file.json")])
        side_by_side = capsys.readouterr().out
    assert same == 0 and "export vs running" in side_by_side
    assert re.search(r"  environment\.pillow\.libjpeg +export \S+ +running \S+", side_by_side)
    assert rc == 0 and report["errors"] == {}
    assert report["served"] == report["packaged"]["served"]
    assert report["set"]["content_sha256"] == report["packaged"]["set"]["content_sha256"]
    log = (workdir / "logs" / "model_log.log").read_text()
    pattern = r"Golden answers: 4 photos match \(tolerance [^)]*\) in ([\d.]+) s"
    costs = [float(s) for s in re.findall(pattern, log)]
    assert len(costs) == 2 and max(costs) < 1.0, costs  # each worker replayed them, under 1 s


def without_golden(src: Path, dst: Path) -> Path:
    """`src` as an archive built before golden answers: the golden/ entries and their manifest
    lines left out."""
    with zipfile.ZipFile(src) as zin:
        entries = {e.filename: zin.read(e) for e in zin.infolist()
                   if not e.is_dir() and not e.filename.startswith(f"{layout.GOLDEN_DIR}/")}
    manifest = json.loads(entries[layout.MANIFEST])
    manifest["files"] = {k: v for k, v in manifest["files"].items()
                         if not k.startswith(f"{layout.GOLDEN_DIR}/")}
    entries[layout.MANIFEST] = json.dumps(manifest, indent=2).encode()
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for name, data in sorted(entries.items()):
            zout.writestr(name, data)
    return dst


@pytest.mark.e2e
def test_changed_numerics_refuse_the_load_and_an_archive_without_golden_answers_loads(tmp_path, default_mar):
    """Decoding JPEGs at full size (HANDLER_FULL_JPEG_DECODE, a documented handler setting)
    changes the answer to the golden large photo: its workers never go READY. The same model
    without golden answers loads under the same setting, and says it is unchecked."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "checked.mar").write_bytes(default_mar.read_bytes())
    without_golden(default_mar, store / "unchecked.mar")
    workdir = tmp_path / "ts"
    server = serve.start(workdir, models="checked=checked.mar,unchecked=unchecked.mar",
                         ports=serve.free_ports(), model_store=store,
                         env={"HANDLER_FULL_JPEG_DECODE": "true"})
    try:
        serve.wait_ready(server, "unchecked", min_ready=2, timeout=90, progress=False)
        log = workdir / "logs" / "model_log.log"
        deadline = time.monotonic() + 60
        while "Golden answer for" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert server.client.ready_workers("checked") == 0
    finally:
        serve.stop(workdir, grace=5)
    refusals = [line for line in log.read_text().splitlines() if "Golden answer for" in line]
    assert refusals, "no worker refused the changed answers"
    assert "golden/cat_large.jpg differs: expected top-1 285" in refusals[0]
    assert "HANDLER_FULL_JPEG_DECODE=true set" in refusals[0]
    assert "No golden answers in this archive" in log.read_text()

"""The copy TorchServe loads (scripts/ops/verified_copy.py): an archive carrying a
sitecustomize.py, listed in a recomputed manifest or only in the zip's local headers, is refused
with one line before TorchServe starts, and none of its code runs (a marker file it would write
never appears)."""

from __future__ import annotations

import time

import pytest

from scripts.ops import pins, serve
from tests.support.archives import rebuilt_mar

SITECUSTOMIZE = 'import pathlib\npathlib.Path({marker!r}).write_text("ran")\n'


@pytest.mark.parametrize("how", ["listed in a recomputed manifest", "only in the local headers"])
@pytest.mark.e2e
def test_a_sitecustomize_is_refused_before_anything_of_the_archive_runs(default_mar, tmp_path, how):
    """Started as `make serve` starts (no pin): before, the worker ran the archive's
    sitecustomize.py as its interpreter started, then refused the load."""
    marker = tmp_path / "marker"
    code = SITECUSTOMIZE.format(marker=str(marker)).encode()
    store = tmp_path / "store"
    store.mkdir()
    if how == "listed in a recomputed manifest":
        rebuilt_mar(default_mar, store / "evil.mar", {"sitecustomize.py": code})
        expected = "sitecustomize.py is module sitecustomize"
    else:
        rebuilt_mar(default_mar, store / "evil.mar", {}, hidden={"sitecustomize.py": code})
        expected = "local headers and central directory disagree"
    workdir = tmp_path / "ts"
    with pytest.raises(pins.PinError, match=expected):
        serve.start(workdir, models="evil=evil.mar", ports=serve.free_ports(), model_store=store)
    time.sleep(3)
    assert not marker.exists() and not (workdir / "logs").exists()
    assert not (workdir / serve.VERIFIED_STORE / "evil").exists()  # nothing of it left to load
